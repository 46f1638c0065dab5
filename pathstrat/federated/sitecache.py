"""A site's feature store cached on disk, shared by every ClientApp process of the site.

A Flower SuperNode (default ``--isolation subprocess``) runs each message in a fresh
``flwr-clientapp`` process, so without a cache every round re-reads every feature file (with
``pathstrat.federated.siteexec`` only the first message of the process reads it).
:func:`load_cached_store` keeps one memory-mapped copy of the site's bags per (manifest, feature
files) instead:

``<cache_dir>/<key>/features.npy``  all tiles of all bags, concatenated (the files' dtype)
``<cache_dir>/<key>/coords.npy``    their coordinates (int64)
``<cache_dir>/<key>/meta.json``     bags (key, patient, slides, offsets, row span), encoder, dim

The key is a SHA-256 over the manifest's bytes, the features folder, the bag level and each
feature file's name, size and modification time (nanoseconds): editing the manifest or
re-embedding a slide makes a new entry; the old one is never read again (delete the folder to
reclaim space). Entries are written to a temporary folder and renamed into place, so a reader
never sees half an entry, and two processes building the same entry at once both end up with
one complete copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FORMAT = "pathstrat.site_cache/1"


def default_cache_dir() -> Path:
    """``$PATHSTRAT_SITE_CACHE``, else ``$XDG_CACHE_HOME/pathstrat/sites`` (``~/.cache``)."""
    env = os.environ.get("PATHSTRAT_SITE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pathstrat" / "sites"


def cache_key(manifest_path: Path, manifest, features_dir: Path, level: str) -> str:
    """Fingerprint of the inputs of one site's store (see the module docstring)."""
    from pathstrat.layout import resolve_features_dir

    sids = manifest["slide_id"].astype(str).tolist()
    fdir = resolve_features_dir(features_dir)
    h = hashlib.sha256()
    h.update(FORMAT.encode())
    h.update(Path(manifest_path).read_bytes())
    h.update(f"\0{Path(fdir).resolve()}\0{level}\0".encode())
    for sid in sids:
        p = fdir / f"{sid}.h5"
        try:
            st = p.stat()
            h.update(f"{sid}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{sid}:missing\n".encode())
    return h.hexdigest()[:32]


def _write_entry(dest: Path, store) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        bags, start = [], 0
        dtype = store.bags[0].features.numpy().dtype if store.bags else np.float32
        total = sum(int(b.features.shape[0]) for b in store.bags)
        feats = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=dtype,
                                          shape=(total, store.dim))
        coords = np.empty((total, 2), np.int64)
        for b in store.bags:
            n = int(b.features.shape[0])
            feats[start:start + n] = b.features.numpy()
            coords[start:start + n] = b.coords
            bags.append({"key": b.key, "patient_id": b.patient_id, "slide_ids": list(b.slide_ids),
                         "offsets": [int(o) for o in b.offsets], "start": start, "n": n})
            start += n
        feats.flush()
        del feats
        np.save(tmp / "coords.npy", coords)
        meta = {"format": FORMAT, "dim": int(store.dim), "encoder_id": store.encoder_id,
                "level": store.level, "first_slides": [b["slide_ids"][0] for b in bags],
                "bags": bags, "attrs": {k: v for k, v in store.attrs.items() if k != "cache"}}
        (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        try:
            os.replace(tmp, dest)
        except OSError:  # another process finished the same entry first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _read_entry(entry: Path, manifest):
    import pandas as pd
    import torch

    from pathstrat.training.data import Bag, BagStore

    meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        return None
    feats = np.load(entry / "features.npy", mmap_mode="r")
    coords = np.load(entry / "coords.npy", mmap_mode="r")
    pos = {s: i for i, s in enumerate(manifest["slide_id"].astype(str))}
    bags = []
    with warnings.catch_warnings():  # read-only memmap: tensors are never written in place
        warnings.simplefilter("ignore", UserWarning)
        for b in meta["bags"]:
            sl = slice(b["start"], b["start"] + b["n"])
            bags.append(Bag(b["key"], b["patient_id"], list(b["slide_ids"]),
                            torch.from_numpy(feats[sl]), np.asarray(coords[sl]), list(b["offsets"])))
    table = pd.DataFrame(manifest.iloc[[pos[s] for s in meta["first_slides"]]]).reset_index(drop=True)
    return BagStore(bags, table, int(meta["dim"]), meta["encoder_id"], meta["level"],
                    {**meta.get("attrs", {}), "cache": str(entry)})


def load_cached_store(manifest_path: Path, manifest, features_dir: Path, level: str,
                      cache_dir: Path, load: Any):
    """The site's BagStore from ``cache_dir`` when its key is there, else ``load()`` (which reads
    the feature files) and then stored for the next process. Returns ``(store, hit)``."""
    key = cache_key(manifest_path, manifest, features_dir, level)
    entry = Path(cache_dir) / key
    if (entry / "meta.json").exists():
        try:
            store = _read_entry(entry, manifest)
            if store is not None:
                log.info("site features from cache %s (%d bags)", entry, len(store))
                return store, True
        except (OSError, ValueError, KeyError) as exc:  # a damaged entry: rebuild it
            log.warning("site cache %s unreadable (%s); rebuilding it", entry, exc)
            shutil.rmtree(entry, ignore_errors=True)
    store = load()
    try:
        _write_entry(entry, store)
        log.info("site features cached in %s", entry)
    except OSError as exc:  # a read-only or full disk must not stop the site
        log.warning("could not write the site cache %s: %s", entry, exc)
    return store, False


__all__ = ["cache_key", "default_cache_dir", "load_cached_store"]
