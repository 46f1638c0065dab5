"""Bags in memory: features read once per run, subsampled by index, padded into batches.

``load_bags`` reads every feature file once through :func:`pathstrat.features.read_bag` into a
:class:`BagStore` (RAM, or one memory-mapped cache file). Training draws ``max_tiles`` random
tile indices per bag per epoch; evaluation uses whole bags. No file is re-read per epoch.
Training batches are padded to their longest bag; with bag sizes that vary a lot,
:class:`LengthBucketSampler` groups bags of similar size so padding costs little compute.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, WeightedRandomSampler

from pathstrat.errors import ConfigError, FeatureDimError, SchemaError
from pathstrat.io import FailureLog
from pathstrat.layout import resolve_features_dir

log = logging.getLogger(__name__)


@dataclass
class Bag:
    """One training unit: a slide, or all slides of a patient (``level="patient"``)."""

    key: str
    patient_id: str
    slide_ids: list[str]
    features: torch.Tensor  # (N, D), file dtype (float16/float32), CPU
    coords: np.ndarray  # (N, 2) int64
    offsets: list[int]  # start of each slide's tiles in ``features`` (+ N at the end)


@dataclass
class BagStore:
    """All bags of a cohort plus the per-bag table (patient id and label columns)."""

    bags: list[Bag]
    table: pd.DataFrame  # one row per bag, index aligned with ``bags``
    dim: int
    encoder_id: str | None
    level: str = "slide"
    attrs: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.bags)

    @property
    def on_device(self) -> bool:
        """True when the features live on an accelerator (see :meth:`to`)."""
        return bool(self.bags) and self.bags[0].features.device.type != "cpu"

    @property
    def nbytes(self) -> int:
        return sum(b.features.numel() * b.features.element_size() for b in self.bags)

    def to(self, device: str | torch.device) -> BagStore:
        """Move every bag's features to ``device`` once (e.g. a GPU with room for the cohort), so
        subsampling and padding run there and no batch crosses the host-device bus."""
        for b in self.bags:
            b.features = b.features.to(device)
        return self


def _warn_random(attrs: dict[str, Any], path: Path) -> None:
    """Loud warning (the encoders' helper) for features computed with random encoder weights."""
    from pathstrat.encoders import warn_if_random

    warn_if_random(attrs, what=f"features in {path.parent}")


def _read(path: Path, expected_dim: int | None, expected_encoder: str | None):
    from pathstrat.features import read_bag

    return read_bag(path, expected_dim=expected_dim, expected_encoder=expected_encoder,
                    load_views=False)


def load_bags(manifest: pd.DataFrame, features_dir: str | os.PathLike, *, level: str = "slide",
              store: str = "memory", cache_dir: str | os.PathLike | None = None,
              expected_dim: int | None = None, expected_encoder: str | None = None,
              failures: FailureLog | None = None) -> BagStore:
    """Read the features of every manifest slide once.

    Slides without a feature file are recorded in ``failures`` (and skipped); a feature
    dimension or encoder that differs between slides (or from ``expected_*``) raises
    :class:`FeatureDimError`. ``store="mmap"`` writes one float16 cache file in ``cache_dir`` and
    memory-maps it (for cohorts larger than RAM).
    """
    if level not in ("slide", "patient"):
        raise ConfigError(f"level '{level}' unknown; use 'slide' or 'patient'.")
    if store not in ("memory", "mmap"):
        raise ConfigError(f"store '{store}' unknown; use 'memory' or 'mmap'.")
    fdir = resolve_features_dir(features_dir, expected_encoder)
    if level == "patient":  # slides of a patient stored contiguously (one slice per bag)
        manifest = manifest.sort_values("patient_id", kind="stable")
    sink = _Sink(store, cache_dir)
    coords: dict[str, np.ndarray] = {}
    prints: dict[str, str] = {}
    dim, enc, warned = expected_dim, expected_encoder, False
    normalised = True  # every file declares features_normalized (then no z-scoring by default)
    for sid in manifest["slide_id"].astype(str):
        path = fdir / f"{sid}.h5"
        if not path.exists():
            err = FileNotFoundError(f"no features file {path}; run `pathstrat embed` for this slide")
            if failures is None:
                raise SchemaError(str(err))
            failures.add(sid, path, err)
            continue
        try:
            bag = _read(path, dim, enc)
        except FeatureDimError as exc:
            if expected_dim is None and dim is not None:  # dim came from the first file read
                raise _dim_census(fdir, manifest["slide_id"].astype(str).tolist(), exc) from exc
            raise
        except (OSError, SchemaError, KeyError, ValueError) as exc:
            if failures is None:
                raise
            failures.add(sid, path, exc)
            continue
        feats = np.asarray(bag.features)
        if feats.ndim != 2 or feats.shape[0] == 0:
            if failures is None:
                raise SchemaError(f"Features file {path} holds no tiles (shape {feats.shape}).")
            failures.add(sid, path, SchemaError(f"no tiles (shape {feats.shape})"))
            continue
        dim = dim or int(feats.shape[1])
        attrs = dict(bag.attrs)
        enc = enc or (str(attrs["encoder_id"]) if attrs.get("encoder_id") else None)
        normalised = normalised and _truthy(attrs.get("features_normalized"))
        if not warned and attrs.get("weights_random"):
            _warn_random(attrs, path)
            warned = True
        sink.add(sid, feats, path)
        coords[sid] = np.asarray(bag.coords, np.int64)
        prints[sid] = content_fingerprint(feats, coords[sid])
    if not coords:
        raise SchemaError(f"No usable feature files for the manifest's slides in '{fdir}'. "
                          "Check `features` (the folder holding <slide_id>.h5).")
    df = manifest[manifest["slide_id"].astype(str).isin(coords)].reset_index(drop=True)
    groups = ([[s] for s in df["slide_id"].astype(str)] if level == "slide" else
              [g["slide_id"].astype(str).tolist() for _, g in df.groupby("patient_id", sort=True)])
    first_row = {sid: i for i, sid in enumerate(df["slide_id"].astype(str))}
    sink.finish(int(dim))
    bags, rows, starts = [], [], []
    for g in groups:
        first = df.iloc[first_row[g[0]]]
        key = g[0] if level == "slide" else str(first["patient_id"])
        feats, sizes = sink.bag(g)
        starts.append(sink.spans[g[0]][0] if sink.path else 0)
        bags.append(Bag(key, str(first["patient_id"]), g, feats,
                        np.concatenate([coords[s] for s in g]), [0, *np.cumsum(sizes).tolist()]))
        rows.append(first)
    table = pd.DataFrame(rows).reset_index(drop=True)
    log.info("loaded %d bags (%s level, %d slides, dim %d, %s)", len(bags), level, len(df), dim, store)
    return BagStore(bags, table, int(dim), enc, level, {"cache": str(sink.path) if sink.path else None,
                                                         # first cache row of each bag (mmap store)
                                                         "cache_rows": starts if sink.path else None,
                                                         "fingerprints": prints,
                                                         "features_normalized": normalised})


F16_MAX = float(np.finfo(np.float16).max)  # 65504


def content_fingerprint(features: np.ndarray, coords: np.ndarray) -> str:
    """A slide's feature content as a short hash (shape, every coordinate, 64 spread rows of
    features as float32): the same tiles under another slide or patient id give the same print,
    so the leakage guard sees renamed copies of training slides."""
    import hashlib

    n = len(features)
    rows = np.unique(np.linspace(0, n - 1, num=min(n, 64)).astype(int)) if n else np.zeros(0, int)
    h = hashlib.blake2b(digest_size=16)
    h.update(np.asarray(features.shape, np.int64).tobytes())
    h.update(np.ascontiguousarray(coords, np.int64).tobytes())
    h.update(np.ascontiguousarray(np.asarray(features)[rows], np.float32).tobytes())
    return h.hexdigest()


def _dim_census(fdir: Path, slide_ids: list[str], exc: Exception) -> FeatureDimError:
    """Which files disagree: the feature dimension of every file (shapes only), majority first,
    so the message names the odd files rather than blaming the good ones."""
    import h5py

    dims: dict[int, list[str]] = {}
    for sid in slide_ids:
        try:
            with h5py.File(fdir / f"{sid}.h5", "r") as f:
                shape = f["features"].shape
        except (OSError, KeyError):
            continue
        dims.setdefault(int(shape[-1]), []).append(sid)
    if len(dims) < 2:
        return FeatureDimError(str(exc))
    order = sorted(dims.items(), key=lambda kv: -len(kv[1]))
    major, rest = order[0], order[1:]
    odd = "; ".join(f"{len(v)} with dim {d}: {', '.join(repr(s) for s in v[:10])}" for d, v in rest)
    return FeatureDimError(f"Feature files in '{fdir}' disagree in dimension: {len(major[1])} have "
                           f"dim {major[0]}, {odd}. All slides must come from one encoder: re-embed "
                           "the odd slides with the same encoder, or remove them from the manifest.")


def _truthy(v: Any) -> bool:
    if isinstance(v, (bytes, str)):
        return str(v.decode() if isinstance(v, bytes) else v).strip().lower() in ("1", "true", "yes")
    return bool(v) if v is not None else False


def map_feature_cache(path: str | os.PathLike, rows: int, dim: int) -> np.memmap:
    """The ``store="mmap"`` cache file read-only: ``rows`` x ``dim`` float16, row-major, the bags'
    tiles one after another (the one definition of the format; fold workers map it too)."""
    return np.memmap(path, dtype=np.float16, mode="r", shape=(rows, dim))


def cache_rows(mm: np.memmap, start: int, n: int) -> torch.Tensor:
    """Rows ``start .. start + n`` of a mapped cache as a tensor (no copy)."""
    import warnings

    with warnings.catch_warnings():  # read-only memmap: tensors are never written in place
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(mm[start:start + n])


class _Sink:
    """Holds slide features in RAM (file dtype) or appends them to one float16 cache file that is
    memory-mapped read-only afterwards (cohorts larger than RAM never sit in memory at once)."""

    def __init__(self, store: str, cache_dir) -> None:
        self.store = store
        self.arrays: dict[str, np.ndarray] = {}
        self.spans: dict[str, tuple[int, int]] = {}
        self.path: Path | None = None
        self._fh = None
        self._rows = 0
        self._mm = None
        if store == "mmap":
            if cache_dir is None:
                raise ConfigError("store='mmap' needs a cache_dir for the memory-mapped features file.")
            self.path = Path(cache_dir) / "features_cache.f16"
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "wb")  # noqa: SIM115 - closed in finish()

    def add(self, sid: str, feats: np.ndarray, path: Path | None = None) -> None:
        if self._fh is None:
            self.arrays[sid] = np.ascontiguousarray(feats)
            return
        peak = float(np.abs(feats).max()) if feats.size else 0.0
        if peak > F16_MAX:
            self._fh.close()
            raise ConfigError(f"Features of slide '{sid}' ({path}) reach {peak:.4g}, beyond float16's "
                              f"range (±{F16_MAX:.0f}) used by `store`=mmap: they would become inf. "
                              "Use `store`=memory (keeps the file's dtype), or rescale the features.")
        np.ascontiguousarray(feats, dtype=np.float16).tofile(self._fh)
        self.spans[sid] = (self._rows, len(feats))
        self._rows += len(feats)

    def finish(self, dim: int) -> None:
        if self._fh is not None:
            self._fh.close()
            self._mm = map_feature_cache(self.path, self._rows, dim)

    def bag(self, slide_ids: list[str]) -> tuple[torch.Tensor, list[int]]:
        if self._mm is None:
            parts = [self.arrays[s] for s in slide_ids]
            arr = parts[0] if len(parts) == 1 else np.concatenate(parts)
            return torch.from_numpy(arr), [len(p) for p in parts]
        start, sizes = self.spans[slide_ids[0]][0], [self.spans[s][1] for s in slide_ids]
        return cache_rows(self._mm, start, sum(sizes)), sizes


class BagDataset(Dataset):
    """Bags ``indices`` of a store with encoded targets; random ``max_tiles`` subset if training.

    ``targets`` maps head name to an array over *all* bags of the store (row-aligned with
    ``store.table``). Items are ``(features (n, D), {head: label}, bag index)``.
    """

    def __init__(self, store: BagStore, indices: Any, targets: dict[str, np.ndarray] | None = None,
                 *, max_tiles: int | None = None, train: bool = False, seed: int = 0) -> None:
        self.store = store
        self.indices = np.asarray(indices, int)
        self.targets = {k: torch.as_tensor(np.asarray(v, np.float32)) for k, v in (targets or {}).items()}
        self.max_tiles = max_tiles if train else None
        self.generator = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        b = int(self.indices[i])
        x = self.store.bags[b].features
        if self.max_tiles and x.shape[0] > self.max_tiles:
            idx = torch.randperm(x.shape[0], generator=self.generator)[: self.max_tiles].sort().values
            x = x[idx.to(x.device)]
        return x, {k: v[b] for k, v in self.targets.items()}, b


def collate_bags(batch) -> dict[str, Any]:
    """Pad bags to the longest: ``x`` (B, N, D) float32, ``mask`` (B, N), ``targets``, ``index``."""
    n = max(item[0].shape[0] for item in batch)
    d = batch[0][0].shape[1]
    dev = batch[0][0].device  # CPU, or the GPU when the store was moved there
    x = torch.zeros(len(batch), n, d, dtype=torch.float32, device=dev)
    mask = torch.zeros(len(batch), n, dtype=torch.bool, device=dev)
    for i, (feats, _, _) in enumerate(batch):
        x[i, : feats.shape[0]] = feats  # copies (and casts float16 -> float32) once
        mask[i, : feats.shape[0]] = True
    targets = {k: torch.stack([item[1][k] for item in batch]) for k in batch[0][1]}
    return {"x": x, "mask": mask, "targets": targets,
            "index": torch.tensor([item[2] for item in batch])}


def item_lengths(dataset: BagDataset) -> np.ndarray:
    """Tiles each item of ``dataset`` yields (capped at ``max_tiles`` in training)."""
    n = np.array([dataset.store.bags[int(b)].features.shape[0] for b in dataset.indices], int)
    return np.minimum(n, dataset.max_tiles) if dataset.max_tiles else n


def padding_ratio(lengths: np.ndarray, batches: list[list[int]]) -> float:
    """Padded compute over unpadded compute: sum over batches of size x longest, over the sum of
    lengths (1.0 = no padding)."""
    lengths = np.asarray(lengths)
    padded = sum(len(b) * int(lengths[b].max()) for b in batches if len(b))
    return padded / max(int(sum(lengths[i] for b in batches for i in b)), 1)


#: ``bucket="auto"`` buckets when random batches would pad to more than this many times the
#: unpadded compute (the issue's goal: variable bag sizes cost <= 1.2x the unpadded bags).
BUCKET_AUTO_RATIO = 1.2


class LengthBucketSampler(Sampler[list[int]]):
    """Batches of bags of similar length, every item exactly once per epoch, seeded.

    Each epoch: a random permutation (or, with ``weights``, a weighted draw with replacement of
    ``len(lengths)`` items, as balanced sampling), cut into pools of ``pool_batches`` batches;
    each pool is sorted by length (stable, so equal lengths stay in random order) and cut into
    batches, and the order of all batches is shuffled. Which bags share a batch changes between
    epochs; the padded compute stays close to the unpadded one.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, *, seed: int = 0,
                 weights: np.ndarray | None = None, pool_batches: int = 16) -> None:
        self.lengths = np.asarray(lengths, int)
        self.batch_size = int(batch_size)
        self.pool = max(1, int(pool_batches)) * self.batch_size
        self.weights = None if weights is None else torch.as_tensor(np.asarray(weights, float))
        self.generator = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def epoch_batches(self) -> list[list[int]]:
        """The next epoch's batches (advances the generator)."""
        n = len(self.lengths)
        if self.weights is not None:
            order = torch.multinomial(self.weights, n, replacement=True, generator=self.generator).numpy()
        else:
            order = torch.randperm(n, generator=self.generator).numpy()
        batches = []
        for s in range(0, n, self.pool):
            chunk = order[s:s + self.pool]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[i:i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size)]
        perm = torch.randperm(len(batches), generator=self.generator).tolist()
        return [batches[i] for i in perm]

    def __iter__(self):
        yield from self.epoch_batches()


def should_bucket(lengths: np.ndarray, batch_size: int, seed: int = 0) -> bool:
    """True when random batches of ``lengths`` would pad to > :data:`BUCKET_AUTO_RATIO` times
    the unpadded compute (estimated on one seeded permutation)."""
    if batch_size < 2 or len(lengths) < 2:
        return False
    order = np.random.default_rng(seed).permutation(len(lengths))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return padding_ratio(lengths, batches) > BUCKET_AUTO_RATIO


#: Largest padded evaluation batch (bags x tiles x features) :func:`make_eval_loader` forms.
EVAL_BATCH_ELEMENTS = 1 << 22


def make_eval_loader(dataset: BagDataset, max_bags: int = 32,
                     max_padding: float = BUCKET_AUTO_RATIO) -> DataLoader:
    """Whole-bag inference in few forward passes: bags sorted by length, grouped while a batch
    stays within ``max_padding`` x its unpadded size, ``max_bags`` bags and
    :data:`EVAL_BATCH_ELEMENTS` values (large bags stay one per batch). Every model's outputs
    ignore padding (tests/test_mil.py), so this equals one bag at a time; results carry each
    bag's ``index``, so consumers never rely on the order."""
    lengths = item_lengths(dataset)
    order = np.argsort(lengths, kind="stable")
    batches: list[list[int]] = []
    cur: list[int] = []
    dim = max(int(dataset.store.dim), 1)
    for i in order.tolist():
        n = int(lengths[i])  # ascending: the newcomer is the longest of the batch
        if cur and (len(cur) >= max_bags or (len(cur) + 1) * n * dim > EVAL_BATCH_ELEMENTS
                    or (len(cur) + 1) * n > max_padding * (sum(int(lengths[j]) for j in cur) + n)):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return DataLoader(dataset, batch_sampler=batches, collate_fn=collate_bags, num_workers=0)


def make_loader(dataset: BagDataset, batch_size: int = 1, *, shuffle: bool = False,
                balance_on: np.ndarray | None = None, seed: int = 0,
                pin_memory: bool = False, bucket: bool | str = False) -> DataLoader:
    """In-process DataLoader (bags are already in memory; workers would only copy them).

    ``balance_on`` (class index per dataset item, -1/NaN = unknown) draws bags with weights
    inversely proportional to class frequency (balanced sampling). ``bucket`` (training
    loaders): ``True`` batches bags of similar length (:class:`LengthBucketSampler`), ``"auto"``
    does so when random batches would pad to more than 1.2x the unpadded compute
    (:func:`should_bucket`), ``False`` keeps plain random batches.
    """
    g = torch.Generator().manual_seed(int(seed))
    sampler = None
    w = None
    if balance_on is not None:
        y = np.nan_to_num(np.asarray(balance_on, float), nan=-1).astype(int)
        counts = {c: (y == c).sum() for c in np.unique(y)}
        w = np.array([1.0 / counts[c] for c in y])
    if bucket not in (True, False, "auto"):
        raise ConfigError(f"bucket={bucket!r} unknown; use True, False or 'auto'.")
    if bucket and (shuffle or w is not None) and batch_size > 1:
        lengths = item_lengths(dataset)
        if bucket is True or should_bucket(lengths, batch_size, seed):
            return DataLoader(dataset, batch_sampler=LengthBucketSampler(lengths, batch_size, seed=seed,
                                                                         weights=w),
                              collate_fn=collate_bags, num_workers=0, pin_memory=pin_memory)
    if w is not None:
        sampler = WeightedRandomSampler(torch.as_tensor(w, dtype=torch.double), len(w),
                                        replacement=True, generator=g)
        shuffle = False
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler,
                      generator=g, collate_fn=collate_bags, num_workers=0, pin_memory=pin_memory)
