"""Synthetic spatial transcriptomics: a generated H&E slide plus a Visium-like Space Ranger folder.

``make_visium_sample`` writes, for one sample::

    <out>/<sample_id>.tiff (+ .truth.npz)      the H&E slide (pathstrat.synthetic.make_slide)
    <out>/<sample_id>/outs/
        filtered_feature_bc_matrix.h5         10x HDF5 feature-barcode matrix (in-tissue spots)
        spatial/tissue_positions.csv          barcode,in_tissue,array_row,array_col,
                                              pxl_row_in_fullres,pxl_col_in_fullres
        spatial/tissue_positions.parquet      the same table (Space Ranger 3 / Visium HD style)
        spatial/scalefactors_json.json        spot_diameter_fullres, tissue_hires_scalef, ...
        spatial/tissue_hires_image.png        the full-resolution image scaled by hires_scalef
        spatial/tissue_lowres_image.png
    <out>/<sample_id>.spots_truth.csv         known truth: level-0 centre and class fractions

Spots sit on the Visium hexagonal array (100 µm centre to centre, 55 µm diameter). The
"full-resolution image" Space Ranger saw is the slide's level 0 downsampled by
``fullres_downsample`` (1 = the slide itself), so ``level0 = pxl_in_fullres * fullres_downsample``
exactly. Expression: each planted programme's genes are raised in proportion to the fraction of
its tissue class under the spot disk (``PLANTED_PROGRAMMES``); noise genes do not depend on the
tissue. Counts are negative binomial (gamma-Poisson) around those means times a per-spot
library size.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathstrat.errors import ConfigError
from pathstrat.io import atomic_path, ensure_writable_dir, write_dataframe_atomic, write_json_atomic
from pathstrat.synthetic.layout import TISSUE_CLASSES
from pathstrat.synthetic.slide import SyntheticSlide, load_truth, make_slide

log = logging.getLogger(__name__)

SPOT_PITCH_UM = 100.0  # Visium centre-to-centre distance
SPOT_DIAMETER_UM = 55.0
FIDUCIAL_DIAMETER_UM = 89.0
HIRES_MAX_PX = 2000
PLANTED_SHARE = 0.3  # of every spot's library taken by the planted genes together
LOWRES_MAX_PX = 600

#: programme -> (tissue class whose presence raises it, genes). Names are gene symbols used only
#: as labels: the expression is generated, not measured.
PLANTED_PROGRAMMES: dict[str, tuple[str, tuple[str, ...]]] = {
    "stromal": ("stroma", ("COL1A1", "COL1A2", "COL3A1", "DCN", "LUM", "SPARC")),
    "tumour": ("tumor", ("EPCAM", "KRT8", "KRT18", "MKI67", "TOP2A", "SOX9")),
    "immune": ("lymphocytes", ("PTPRC", "CD3E", "CD8A", "CD19", "MS4A1", "CCL5")),
    "hypoxia": ("necrosis", ("VEGFA", "CA9", "SLC2A1", "LDHA", "BNIP3", "ADM")),
}

POSITION_COLUMNS = ("barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres",
                    "pxl_col_in_fullres")


def planted_genes() -> list[str]:
    """All planted genes, programme by programme."""
    return [g for _, (_, genes) in PLANTED_PROGRAMMES.items() for g in genes]


def programme_gene_sets() -> dict[str, list[str]]:
    """``{programme: [genes]}`` of the planted programmes (for programme scores)."""
    return {k: list(genes) for k, (_, genes) in PLANTED_PROGRAMMES.items()}


@dataclass
class SyntheticVisium:
    """What :func:`make_visium_sample` wrote and the truth needed to check readers against it."""

    sample_id: str
    patient_id: str
    slide: SyntheticSlide
    outs: Path  # the Space Ranger ``outs`` folder
    truth_path: Path  # <sample_id>.spots_truth.csv
    fullres_downsample: int
    n_spots: int  # in-tissue spots (rows of the filtered matrix)
    genes: list[str] = field(default_factory=list)
    noise_genes: list[str] = field(default_factory=list)

    def truth(self) -> pd.DataFrame:
        """Per-spot truth: barcode, in_tissue, x_level0, y_level0 and class fractions."""
        return pd.read_csv(self.truth_path)


def visium_grid(width_um: float, height_um: float, margin_um: float) -> pd.DataFrame:
    """Visium hexagonal array positions (µm) inside ``[margin, size - margin]``.

    ``array_col`` steps by half a pitch, ``array_row`` by ``pitch * sqrt(3) / 2``; as on the
    slide, spots exist where ``array_row + array_col`` is even.
    """
    dx, dy = SPOT_PITCH_UM / 2.0, SPOT_PITCH_UM * math.sqrt(3.0) / 2.0
    rows = np.arange(int((height_um - 2 * margin_um) // dy) + 1)
    cols = np.arange(int((width_um - 2 * margin_um) // dx) + 1)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    keep = (rr + cc) % 2 == 0
    rr, cc = rr[keep], cc[keep]
    return pd.DataFrame({"array_row": rr.astype(np.int64), "array_col": cc.astype(np.int64),
                         "x_um": margin_um + cc * dx, "y_um": margin_um + rr * dy})


def spot_class_fractions(truth: dict[str, Any], x_um: np.ndarray, y_um: np.ndarray,
                         diameter_um: float = SPOT_DIAMETER_UM, n: int = 15) -> np.ndarray:
    """Fractions (N, 5) of each class (background first) inside each spot disk, from the truth map.

    The disk is sampled on an ``n x n`` grid of points (those inside the circle).
    """
    cmap = np.asarray(truth["class_map"])
    tmpp = float(truth["truth_mpp"])
    off = (np.arange(n) + 0.5) / n * diameter_um - diameter_um / 2
    ox, oy = np.meshgrid(off, off)
    inside = ox**2 + oy**2 <= (diameter_um / 2) ** 2
    ox, oy = ox[inside], oy[inside]
    gx = np.clip(((x_um[:, None] + ox[None]) / tmpp).astype(np.int64), 0, cmap.shape[1] - 1)
    gy = np.clip(((y_um[:, None] + oy[None]) / tmpp).astype(np.int64), 0, cmap.shape[0] - 1)
    lab = cmap[gy, gx]
    return np.stack([(lab == k).mean(axis=1) for k in range(1 + len(TISSUE_CLASSES))], axis=1)


def make_visium_sample(out_dir: str | os.PathLike, *, sample_id: str = "sample", seed: int = 0,
                       patient_id: str | None = None, width: int = 4000, height: int = 4000,
                       mpp: float = 0.5, layout: dict[str, float] | None = None,
                       fullres_downsample: int = 1, n_noise_genes: int = 150,
                       depth: float = 2500.0, fold: float = 7.0, dispersion: float = 5.0,
                       gene_seed: int = 0, texture_seed: int | None = 0,
                       parquet: bool = True, bin_size_um: float | None = None) -> SyntheticVisium:
    """Write one generated slide and its Space Ranger-style outputs under ``out_dir``.

    Parameters
    ----------
    fullres_downsample
        Integer factor between the slide's level 0 and the image whose pixel frame the
        positions use (what ``spaceranger --image`` was given).
    n_noise_genes
        Genes whose mean does not depend on the tissue (``NOISE0001`` ...).
    depth, fold, dispersion
        Mean counts per spot; a planted gene's expected share is ``base * (1 + fold *
        fraction)`` of its class under the spot (noise genes share the rest); gamma-Poisson
        shape (larger = closer to Poisson).
    gene_seed, texture_seed
        Seeds of the gene baselines and the class textures, shared by the samples of a cohort.
    bin_size_um
        Write a Visium HD-style output instead: square bins of this side (2, 8, 16 µm) under
        ``outs/binned_outputs/square_XXXum/`` with ``tissue_positions.parquet`` only (float
        pixel centres) and ``bin_size_um``/``microns_per_pixel`` in the scale factors; depth is
        scaled by the bin's area relative to a 55 µm spot.
    """
    if fullres_downsample < 1 or int(fullres_downsample) != fullres_downsample:
        raise ConfigError(f"fullres_downsample={fullres_downsample} must be a positive integer")
    if n_noise_genes < 1:
        raise ConfigError(f"n_noise_genes={n_noise_genes}: need at least one noise gene")
    d = int(fullres_downsample)
    out = ensure_writable_dir(out_dir)
    rng = np.random.default_rng([int(seed), 0x57])
    if layout is None:
        layout = {"tissue": 0.6, "stroma": 0.35, "tumor": 0.3, "lymphocytes": 0.2,
                  "necrosis": 0.15}
    slide = make_slide(out / f"{sample_id}.tiff", width=width, height=height, mpp=mpp, seed=seed,
                       layout=layout, texture_seed=texture_seed)
    truth = load_truth(slide.truth_path)

    fmpp = mpp * d
    if bin_size_um:
        grid, pxl_col, pxl_row, barcodes = _hd_grid(width * mpp, height * mpp, float(bin_size_um),
                                                   fmpp)
        x0, y0 = pxl_col * d, pxl_row * d
        frac = spot_class_fractions(truth, x0 * mpp, y0 * mpp, diameter_um=float(bin_size_um),
                                    n=5)
        depth = depth * float(bin_size_um) ** 2 / (math.pi * (SPOT_DIAMETER_UM / 2) ** 2)
    else:
        # spot centres on whole full-resolution pixels, so level-0 truth = fullres * d exactly
        grid = visium_grid(width * mpp, height * mpp, margin_um=60.0)
        pxl_col = np.round(grid["x_um"].to_numpy() / fmpp).astype(np.int64)
        pxl_row = np.round(grid["y_um"].to_numpy() / fmpp).astype(np.int64)
        x0, y0 = (pxl_col * d).astype(np.float64), (pxl_row * d).astype(np.float64)
        frac = spot_class_fractions(truth, x0 * mpp, y0 * mpp)
        barcodes = np.array([f"{_barcode(rng)}-1" for _ in range(len(grid))])
        while len(set(barcodes)) < len(barcodes):  # 16-mers collide almost never; keep it exact
            barcodes = np.array([f"{_barcode(rng)}-1" for _ in range(len(grid))])
    in_tissue = (frac[:, 0] < 0.5).astype(np.int64)

    genes, noise = planted_genes(), [f"NOISE{i + 1:04d}" for i in range(n_noise_genes)]
    all_genes = genes + noise
    counts = _planted_counts(frac, len(noise), rng, depth=depth, fold=fold,
                             dispersion=dispersion, gene_seed=gene_seed)
    outs = out / sample_id / "outs"
    if bin_size_um:
        outs = outs / "binned_outputs" / f"square_{int(round(bin_size_um)):03d}um"
    spatial = outs / "spatial"
    spatial.mkdir(parents=True, exist_ok=True)
    keep = in_tissue.astype(bool)
    write_10x_h5(outs / "filtered_feature_bc_matrix.h5", counts[keep], barcodes[keep], all_genes,
                 library_id=sample_id)
    pos = pd.DataFrame({"barcode": barcodes, "in_tissue": in_tissue,
                        "array_row": grid["array_row"], "array_col": grid["array_col"],
                        "pxl_row_in_fullres": pxl_row, "pxl_col_in_fullres": pxl_col})
    if not bin_size_um:  # Visium HD writes parquet only
        write_dataframe_atomic(spatial / "tissue_positions.csv", pos)
    if parquet or bin_size_um:
        with atomic_path(spatial / "tissue_positions.parquet") as tmp:
            pos.to_parquet(tmp, index=False)
    fw, fh = -(-width // d), -(-height // d)  # full-resolution image size
    hires_s = min(1.0, HIRES_MAX_PX / max(fw, fh))
    lowres_s = min(1.0, LOWRES_MAX_PX / max(fw, fh))
    sf = {"spot_diameter_fullres": (bin_size_um or SPOT_DIAMETER_UM) / fmpp,
          "fiducial_diameter_fullres": FIDUCIAL_DIAMETER_UM / fmpp,
          "tissue_hires_scalef": hires_s, "tissue_lowres_scalef": lowres_s}
    if bin_size_um:
        sf.update(bin_size_um=float(bin_size_um), microns_per_pixel=fmpp,
                  regist_target_img_scalef=hires_s)
    write_json_atomic(spatial / "scalefactors_json.json", sf)
    _write_images(slide, spatial, fw, fh, d, hires_s, lowres_s)

    tr = pd.DataFrame({"barcode": barcodes, "in_tissue": in_tissue, "x_level0": x0,
                       "y_level0": y0})
    for i, name in enumerate(("background",) + TISSUE_CLASSES):
        tr[f"frac_{name}"] = frac[:, i]
    tpath = out / f"{sample_id}.spots_truth.csv"
    write_dataframe_atomic(tpath, tr)
    log.info("synthetic Visium sample %s: %d spots (%d in tissue), %d genes -> %s", sample_id,
             len(pos), int(keep.sum()), len(all_genes), outs)
    return SyntheticVisium(sample_id=sample_id, patient_id=patient_id or f"patient_{sample_id}",
                           slide=slide, outs=outs, truth_path=tpath, fullres_downsample=d,
                           n_spots=int(keep.sum()), genes=genes, noise_genes=noise)


def make_visium_cohort(out_dir: str | os.PathLike, *, n_samples: int = 4, seed: int = 0,
                       **kwargs: Any) -> tuple[list[SyntheticVisium], Path]:
    """``n_samples`` generated samples (one patient each) and ``samples.csv`` listing them.

    ``samples.csv`` columns: ``sample_id, patient_id, slide, spaceranger`` (what
    ``pathstrat spatial build`` reads). Class fractions vary between samples.
    """
    if n_samples < 1:
        raise ConfigError(f"n_samples={n_samples}: need at least one sample")
    out = ensure_writable_dir(out_dir)
    rng = np.random.default_rng([int(seed), 0xC0])
    samples = []
    for i in range(n_samples):
        fr = rng.dirichlet([5.0, 4.0, 3.0, 2.5])
        layout = {"tissue": 0.6, **dict(zip(TISSUE_CLASSES, (float(v) for v in fr), strict=True))}
        samples.append(make_visium_sample(out, sample_id=f"ST{i + 1:02d}", seed=int(seed) * 1000 + i,
                                          patient_id=f"P{i + 1:02d}", layout=layout, **kwargs))
    table = pd.DataFrame({"sample_id": [s.sample_id for s in samples],
                          "patient_id": [s.patient_id for s in samples],
                          "slide": [str(s.slide.path) for s in samples],
                          "spaceranger": [str(s.outs) for s in samples]})
    path = write_dataframe_atomic(out / "samples.csv", table)
    return samples, path


def write_10x_h5(path: str | os.PathLike, counts: np.ndarray, barcodes: np.ndarray,
                 genes: list[str], *, library_id: str, genome: str = "GRCh38") -> Path:
    """Write a 10x Genomics feature-barcode matrix HDF5 (the Cell Ranger >= 3 layout).

    ``counts`` is (spots, genes); the file stores it as CSC ``(genes, barcodes)``: ``/matrix``
    with ``barcodes, data, indices, indptr, shape`` and ``/matrix/features`` with ``id, name,
    feature_type, genome, _all_tag_keys``, plus the root attributes Space Ranger writes.
    """
    import h5py
    from scipy import sparse

    m = sparse.csr_matrix(np.asarray(counts, dtype=np.int32))  # rows = spots = CSC columns
    path = Path(path)
    with atomic_path(path, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["chemistry_description"] = np.bytes_("Visium Spatial Gene Expression")
            f.attrs["filetype"] = np.bytes_("matrix")
            f.attrs["library_ids"] = np.array([library_id.encode()], dtype="S")
            f.attrs["original_gem_groups"] = np.array([1], dtype=np.int64)
            f.attrs["software_version"] = np.bytes_("pathstrat-synthetic spaceranger-layout")
            f.attrs["version"] = np.int64(2)
            g = f.create_group("matrix")
            g.create_dataset("barcodes", data=np.array([b.encode() for b in barcodes], dtype="S"))
            g.create_dataset("data", data=m.data.astype(np.int32), compression="gzip")
            g.create_dataset("indices", data=m.indices.astype(np.int64), compression="gzip")
            g.create_dataset("indptr", data=m.indptr.astype(np.int64))
            g.create_dataset("shape", data=np.array([m.shape[1], m.shape[0]], dtype=np.int32))
            ft = g.create_group("features")
            ids = [f"SYNTH{i:05d}" for i in range(len(genes))]
            ft.create_dataset("id", data=np.array([s.encode() for s in ids], dtype="S"))
            ft.create_dataset("name", data=np.array([s.encode() for s in genes], dtype="S"))
            ft.create_dataset("feature_type", data=np.array([b"Gene Expression"] * len(genes)))
            ft.create_dataset("genome", data=np.array([genome.encode()] * len(genes)))
            ft.create_dataset("_all_tag_keys", data=np.array([b"genome"]))
    return path


def _planted_counts(frac: np.ndarray, n_noise: int, rng: np.random.Generator, *, depth: float,
                    fold: float, dispersion: float, gene_seed: int) -> np.ndarray:
    """Counts (spots, planted + noise genes) whose noise genes carry no tissue signal.

    Planted gene ``g`` of class ``c`` has weight ``b_g * (1 + fold * f_c)``; the planted genes
    together always take ``PLANTED_SHARE`` of a spot's library (weights renormalised per spot)
    and noise genes share the rest in fixed proportions, so after library-size normalisation
    a noise gene's expectation is the same in every spot whatever its tissue. Gene baselines
    come from ``gene_seed`` so every sample shares them (no batch offsets).
    """
    grng = np.random.default_rng([int(gene_seed), 0x6E])
    n_pl = sum(len(g) for _, g in PLANTED_PROGRAMMES.values())
    b = grng.lognormal(0.0, 0.4, n_pl)
    q = np.tile(b, (len(frac), 1))
    col = 0
    for cls, g in PLANTED_PROGRAMMES.values():
        k = 1 + TISSUE_CLASSES.index(cls)
        q[:, col:col + len(g)] *= 1.0 + fold * frac[:, k:k + 1]
        col += len(g)
    q *= PLANTED_SHARE / q.sum(axis=1, keepdims=True)
    rest = 1.0 - PLANTED_SHARE
    nb = grng.lognormal(0.0, 0.5, n_noise)
    p = np.concatenate([q, np.tile(rest * nb / nb.sum(), (len(frac), 1))], axis=1)
    lib = rng.lognormal(0.0, 0.25, (len(frac), 1))
    mu = depth * lib * p
    return rng.poisson(rng.gamma(dispersion, mu / dispersion)).astype(np.int32)


def _hd_grid(width_um: float, height_um: float, bin_um: float,
             fmpp: float) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """Square Visium HD bins covering the slide: grid, float pixel centres and barcodes."""
    nr, nc = int(height_um // bin_um), int(width_um // bin_um)
    rr, cc = np.meshgrid(np.arange(nr), np.arange(nc), indexing="ij")
    rr, cc = rr.ravel(), cc.ravel()
    grid = pd.DataFrame({"array_row": rr.astype(np.int64), "array_col": cc.astype(np.int64)})
    pxl_col = (cc + 0.5) * bin_um / fmpp
    pxl_row = (rr + 0.5) * bin_um / fmpp
    tag = int(round(bin_um))
    barcodes = np.array([f"s_{tag:03d}um_{r:05d}_{c:05d}-1" for r, c in zip(rr, cc, strict=True)])
    return grid, pxl_col, pxl_row, barcodes


def _barcode(rng: np.random.Generator) -> str:
    return "".join(np.array(list("ACGT"))[rng.integers(0, 4, 16)])


def _write_images(slide: SyntheticSlide, spatial: Path, fw: int, fh: int, d: int,
                  hires_s: float, lowres_s: float) -> None:
    """hires/lowres PNGs: the full-resolution frame (level 0 / d) scaled as Space Ranger does."""
    import cv2

    from pathstrat.slide import open_slide

    with open_slide(slide.path) as s:
        thumb, _ = s.thumbnail_at_mpp(slide.mpp * d / hires_s)
    for name, sc in (("tissue_hires_image.png", hires_s), ("tissue_lowres_image.png", lowres_s)):
        size = (max(1, int(round(fw * sc))), max(1, int(round(fh * sc))))
        img = cv2.resize(thumb, size, interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        if not ok:  # pragma: no cover - cv2 always encodes uint8 RGB
            raise OSError(f"could not encode {name}")
        with atomic_path(spatial / name) as tmp:
            tmp.write_bytes(buf.tobytes())


__all__ = ["PLANTED_PROGRAMMES", "POSITION_COLUMNS", "SyntheticVisium", "make_visium_cohort",
           "make_visium_sample", "planted_genes", "programme_gene_sets", "spot_class_fractions",
           "visium_grid", "write_10x_h5"]
