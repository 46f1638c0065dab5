"""Where files live: the one definition of the tiles, features and run-directory layout.

Every stage writes under an output folder and every reader finds those files through the
classes here, so the folder rule is written once:

- :class:`TilesLayout` (``pathstrat tile --out ROOT``): ``ROOT/tiles/<slide_id>.h5``,
  ``ROOT/qc/<slide_id>.{png,geojson}``, ``ROOT/qc.csv``, ``ROOT/failures.csv``.
- :class:`FeaturesLayout` (``pathstrat embed --out ROOT``):
  ``ROOT/features/<encoder_id>/<slide_id>.h5`` and ``ROOT/failures.csv`` (one file per shard
  while shards run concurrently).
- :class:`RunLayout` (``pathstrat run``): the run directory with its resolved config, log,
  ``failures.csv`` and stage state in ``.pathstrat/``, plus the tiles and features layouts
  (inside the run directory unless the config shares them across runs).

Readers that are handed a folder by a user (``--tiles``, ``--features``) resolve it with
:func:`resolve_tiles_dir` / :func:`resolve_features_dir`, which accept the output root or the
data folder itself. This module imports nothing heavy (the config schema and the CLI use it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pathstrat.errors import ConfigError

TILES = "tiles"
QC = "qc"
FEATURES = "features"
FAILURES = "failures.csv"
QC_TABLE = "qc.csv"
STATE_DIR = ".pathstrat"
RESOLVED_CONFIG = "pipeline.yaml"
RUN_LOG = "pipeline.log"


@dataclass(frozen=True)
class TilesLayout:
    """The tiling stage's output folder."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def tiles_dir(self) -> Path:
        return self.root / TILES

    @property
    def qc_dir(self) -> Path:
        return self.root / QC

    @property
    def qc_table(self) -> Path:
        return self.root / QC_TABLE

    @property
    def failures(self) -> Path:
        return self.root / FAILURES

    def tiles_file(self, slide_id: str) -> Path:
        return self.tiles_dir / f"{slide_id}.h5"

    @staticmethod
    def of_tiles_file(path: str | os.PathLike) -> TilesLayout:
        """The layout a ``tiles/<slide_id>.h5`` file belongs to."""
        return TilesLayout(Path(path).parent.parent)


@dataclass(frozen=True)
class FeaturesLayout:
    """The embedding stage's output folder for one encoder."""

    root: Path
    encoder_id: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def features_dir(self) -> Path:
        return self.root / FEATURES / self.encoder_id

    def features_file(self, slide_id: str) -> Path:
        return self.features_dir / f"{slide_id}.h5"

    def failures(self, shard: tuple[int, int] | None = None) -> Path:
        """``failures.csv``, or a per-shard file so concurrent array tasks never clobber it."""
        name = FAILURES if shard is None else f"failures.shard-{shard[0]}-of-{shard[1]}.csv"
        return self.root / name


@dataclass(frozen=True)
class RunLayout:
    """A `pathstrat run` directory; tiles and features may live in shared folders."""

    run_dir: Path
    tiles: TilesLayout
    features: FeaturesLayout

    @classmethod
    def of(cls, run_dir: str | os.PathLike, encoder_id: str, *,
           tiles_root: str | os.PathLike | None = None,
           features_root: str | os.PathLike | None = None) -> RunLayout:
        run = Path(run_dir)
        return cls(run, TilesLayout(Path(tiles_root or run)),
                   FeaturesLayout(Path(features_root or run), encoder_id))

    @classmethod
    def from_config(cls, cfg) -> RunLayout:
        """The layout of a :class:`~pathstrat.config.PipelineConfig`."""
        return cls.of(cfg.out_dir, cfg.embed.encoder_id, tiles_root=cfg.tiles_dir,
                      features_root=cfg.features_dir)

    @property
    def state_dir(self) -> Path:
        return self.run_dir / STATE_DIR

    @property
    def failures(self) -> Path:
        return self.run_dir / FAILURES

    @property
    def resolved_config(self) -> Path:
        return self.run_dir / RESOLVED_CONFIG

    @property
    def run_log(self) -> Path:
        return self.run_dir / RUN_LOG

    @property
    def stages_table(self) -> Path:
        return self.state_dir / "stages.csv"

    def stamp(self, stage: str) -> Path:
        """The state a stage leaves after a successful run (its parameters hash)."""
        return self.state_dir / "stages" / f"{stage}.json"

    @property
    def tiled_manifest(self) -> Path:
        """The manifest restricted to tiled slides (what the embedding tasks read)."""
        return self.state_dir / "manifest_tiled.csv"

    @property
    def features_manifest(self) -> Path:
        """The manifest restricted to slides that have features (what training reads)."""
        return self.state_dir / "manifest_features.csv"

    @property
    def slurm_dir(self) -> Path:
        """Default submitit folder of the Slurm executor."""
        return self.run_dir / "slurm"

    def data_dirs(self) -> list[Path]:
        """Folders a killed run may have left temporary files in."""
        return [self.run_dir, self.tiles.tiles_dir, self.features.features_dir]


def resolve_tiles_dir(tiles_dir: str | os.PathLike) -> Path:
    """Accept the tiling output folder (holding ``tiles/``) or the ``tiles/`` folder itself."""
    d = Path(tiles_dir)
    if not d.is_dir():
        raise ConfigError(f"Tiles folder '{d}' does not exist. Pass the --out folder of "
                          "`pathstrat tile` (holding tiles/<slide_id>.h5), or run `pathstrat tile` first.")
    return TilesLayout(d).tiles_dir if TilesLayout(d).tiles_dir.is_dir() else d


def resolve_features_dir(features_dir: str | os.PathLike, encoder_id: str | None = None) -> Path:
    """The folder of ``<slide_id>.h5`` feature files from what a user passed.

    Accepted: that folder itself (it holds ``.h5`` files), ``features/`` or the embedding
    output root (holding ``features/``) -- then the ``<encoder_id>`` subfolder, which must be
    the only one with feature files unless ``encoder_id`` names it.
    """
    d = Path(features_dir)
    if not d.is_dir():
        raise ConfigError(f"Features folder '{d}' does not exist; pass `features` "
                          "<out>/features/<encoder_id> from `pathstrat embed`.")
    if any(d.glob("*.h5")):
        return d
    base = d / FEATURES if (d / FEATURES).is_dir() else d
    if encoder_id and (base / encoder_id).is_dir():
        return base / encoder_id
    subs = sorted(p for p in base.iterdir() if p.is_dir() and any(p.glob("*.h5")))
    if len(subs) == 1:
        return subs[0]
    if len(subs) > 1:
        raise ConfigError(f"Features folder '{d}' holds features of several encoders "
                          f"({', '.join(p.name for p in subs)}); pass `features` "
                          f"{base}/<encoder_id>.")
    return d


def features_layout_of(features_dir: str | os.PathLike) -> FeaturesLayout:
    """The layout a ``<root>/features/<encoder_id>`` folder belongs to."""
    p = Path(features_dir)
    return FeaturesLayout(p.parent.parent, p.name)
