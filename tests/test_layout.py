"""RunLayout: the one place that knows where tiles, QC, features, stage state and logs live."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from pathstrat.errors import ConfigError
from pathstrat.layout import (
    FeaturesLayout,
    RunLayout,
    TilesLayout,
    features_layout_of,
    resolve_features_dir,
    resolve_tiles_dir,
)

PKG = Path(__file__).resolve().parents[1] / "pathstrat"


def test_run_layout_paths(tmp_path: Path):
    """The documented run directory (docs/architecture.md), spelled out by hand."""
    run = RunLayout.of(tmp_path / "run", "uni")
    assert run.resolved_config == tmp_path / "run" / "pipeline.yaml"
    assert run.run_log == tmp_path / "run" / "pipeline.log"
    assert run.failures == tmp_path / "run" / "failures.csv"
    assert run.stamp("embed") == tmp_path / "run" / ".pathstrat" / "stages" / "embed.json"
    assert run.stages_table == tmp_path / "run" / ".pathstrat" / "stages.csv"
    assert run.features_manifest == tmp_path / "run" / ".pathstrat" / "manifest_features.csv"
    assert run.tiles.tiles_file("s1") == tmp_path / "run" / "tiles" / "s1.h5"
    assert run.tiles.qc_dir == tmp_path / "run" / "qc" and run.tiles.qc_table == tmp_path / "run" / "qc.csv"
    assert run.features.features_file("s1") == tmp_path / "run" / "features" / "uni" / "s1.h5"
    assert run.features.failures((2, 4)) == tmp_path / "run" / "failures.shard-2-of-4.csv"
    shared = RunLayout.of(tmp_path / "run", "uni", tiles_root=tmp_path / "t", features_root=tmp_path / "f")
    assert shared.tiles.tiles_dir == tmp_path / "t" / "tiles"
    assert shared.features.features_dir == tmp_path / "f" / "features" / "uni"
    assert shared.state_dir == tmp_path / "run" / ".pathstrat"
    assert TilesLayout.of_tiles_file(shared.tiles.tiles_file("x")) == shared.tiles
    assert features_layout_of(shared.features.features_dir) == shared.features


def test_resolve_dirs_accept_the_root_or_the_data_folder(tmp_path: Path):
    one = FeaturesLayout(tmp_path / "one", "uni")
    one.features_dir.mkdir(parents=True)
    (one.features_dir / "s1.h5").touch()
    for given in (one.root, one.root / "features", one.features_dir):
        assert resolve_features_dir(given) == one.features_dir
    two = FeaturesLayout(tmp_path / "two", "uni")
    for enc in ("uni", "virchow2"):
        (two.root / "features" / enc).mkdir(parents=True)
        (two.root / "features" / enc / "s1.h5").touch()
    with pytest.raises(ConfigError, match="several encoders.*uni, virchow2"):
        resolve_features_dir(two.root)
    assert resolve_features_dir(two.root, "virchow2") == two.root / "features" / "virchow2"
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_features_dir(tmp_path / "absent")
    tiles = TilesLayout(tmp_path / "t")
    tiles.tiles_dir.mkdir(parents=True)
    assert resolve_tiles_dir(tiles.root) == resolve_tiles_dir(tiles.tiles_dir) == tiles.tiles_dir


def test_run_directory_is_where_run_layout_says(small_run):
    """A real `pathstrat run` wrote every file at the RunLayout path (no second rule)."""
    from pathstrat.config import load_config
    from pathstrat.runner import STAGE_DEFS

    cfg_path, summary = small_run
    lay = RunLayout.from_config(load_config(cfg_path))
    assert lay.run_dir == summary.run_dir
    for p in (lay.resolved_config, lay.run_log, lay.failures, lay.stages_table, lay.features_manifest,
              lay.tiles.qc_table):
        assert p.is_file(), p
    assert all(lay.stamp(s).is_file() for s in STAGE_DEFS)
    trained = pd.read_csv(lay.features_manifest, dtype={"slide_id": str})["slide_id"]
    assert len(trained) >= 12
    for sid in trained:
        assert lay.tiles.tiles_file(sid).is_file() and lay.features.features_file(sid).is_file()
        assert (lay.tiles.qc_dir / f"{sid}.png").is_file()


# Path pieces of the layout; building them anywhere else would be a second copy of the rule.
_LAYOUT_PIECE = re.compile(r'/\s*"(tiles|qc|features|\.pathstrat|qc\.csv|pipeline\.yaml|pipeline\.log|stages)"')
_ALLOWED = {
    "layout.py": "the definition",
    "sharing/serve.py": "a scratch request folder of uploaded feature files, not a stage layout",
}


def test_no_module_but_layout_builds_layout_paths():
    offenders = []
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(PKG).as_posix()
        if rel in _ALLOWED:
            continue
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if _LAYOUT_PIECE.search(line):
                offenders.append(f"{rel}:{i}: {line.strip()}")
    assert offenders == [], "use pathstrat.layout instead:\n" + "\n".join(offenders)
