"""``pathstrat spatial fit``: cross-validated benchmark of expression models, then the final fit.

Writes into ``out``: ``gene_metrics_<model>.csv`` (per-gene Pearson/Spearman with patient
bootstrap CIs, out of fold), ``programme_metrics_<model>.csv`` (the same for programme scores),
``benchmark.csv`` (one row per model), ``model.npz`` (the first model fitted on all spots) and
``fit.json`` (what was run).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathstrat.errors import ConfigError
from pathstrat.io import ensure_writable_dir, write_dataframe_atomic, write_json_atomic

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """Benchmark table, per-gene metrics per model, and the saved model path."""

    benchmark: pd.DataFrame
    gene_metrics: dict[str, pd.DataFrame]
    model_path: Path


def sample_paths(spec: Sequence[str | os.PathLike]) -> list[Path]:
    """Expand folders (every ``*.h5ad`` in them) and files into a sorted list of ``.h5ad``."""
    out: list[Path] = []
    for s in spec:
        p = Path(s)
        if p.is_dir():
            out.extend(sorted(p.glob("*.h5ad")))
        elif p.is_file():
            out.append(p)
        else:
            raise ConfigError(f"`samples` '{p}' is neither an .h5ad file nor a folder of them")
    if not out:
        raise ConfigError(f"no .h5ad samples found in {[str(s) for s in spec]}; build them with "
                          "`pathstrat spatial build`")
    return out


def fit_and_evaluate(samples: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                     models: Sequence[str] = ("ridge",), genes: Sequence[str] | None = None,
                     n_top: int = 50, n_bins: int = 20,
                     programmes: Mapping[str, Sequence[str]] | None = None, n_folds: int = 5,
                     n_boot: int = 200, seed: int = 0) -> FitResult:
    """Cross-validate each model by patient, write the tables, fit ``models[0]`` on all spots."""
    from pathstrat.spatial.predict import (
        SPATIAL_MODELS,
        cross_validate,
        fit_expression_model,
        gene_metrics,
        prepare,
        programme_scores,
    )
    from pathstrat.spatial.spots import read_samples

    out = ensure_writable_dir(out_dir)
    for m in models:
        SPATIAL_MODELS.get(m)  # unknown names fail before any work
    paths = sample_paths(samples)
    ad = read_samples(paths)
    data = prepare(ad, genes=genes, n_top=n_top, n_bins=n_bins)
    progs = {k: [g for g in v if g in data.genes] for k, v in (programmes or {}).items()}
    progs = {k: v for k, v in progs.items() if v}
    mean, sd = data.Y.mean(axis=0), data.Y.std(axis=0)
    sd[sd < 1e-8] = 1.0
    rows, per_gene = [], {}
    for m in models:
        if n_folds < 2:
            break
        oof, _ = cross_validate(data, m, n_folds=n_folds, seed=seed)
        gm = gene_metrics(data.Y, oof, data.genes, data.patients, n_boot=n_boot, seed=seed)
        write_dataframe_atomic(out / f"gene_metrics_{m}.csv", gm)
        per_gene[m] = gm
        row: dict[str, Any] = {"model": m, "n_genes": len(data.genes), "n_spots": len(data.Y),
                               "n_patients": len(set(data.patients)),
                               "pearson_mean": float(gm["pearson"].mean()),
                               "pearson_median": float(gm["pearson"].median()),
                               "spearman_mean": float(gm["spearman"].mean())}
        if progs:
            meas = programme_scores(data.Y, data.genes, progs, mean, sd)
            pred = programme_scores(oof, data.genes, progs, mean, sd)
            pm = gene_metrics(meas.to_numpy(), pred.to_numpy(), list(meas.columns),
                              data.patients, n_boot=n_boot, seed=seed)
            write_dataframe_atomic(out / f"programme_metrics_{m}.csv",
                                   pm.rename(columns={"gene": "programme"}))
            row.update({f"programme_{r.gene}_pearson": float(r.pearson) for r in pm.itertuples()})
        rows.append(row)
        log.info("spatial %s: mean Pearson %.3f over %d genes (out of fold, %d patients)", m,
                 row["pearson_mean"], len(data.genes), row["n_patients"])
    bench = pd.DataFrame(rows)
    if len(bench):
        write_dataframe_atomic(out / "benchmark.csv", bench)
    fitted = fit_expression_model(data, models[0], programmes=progs, seed=seed)
    mpath = fitted.save(out / "model.npz")
    write_json_atomic(out / "fit.json", {
        "samples": [str(p) for p in paths], "models": list(models), "final_model": models[0],
        "genes": data.genes, "gene_selection": "given" if genes else f"top {n_top} HVG (seurat, "
        f"n_bins={n_bins})", "programmes": progs, "folds": n_folds, "n_boot": n_boot,
        "seed": seed, "levels": fitted.levels, "embedding_key": data.embedding_key})
    return FitResult(bench, per_gene, mpath)


def planted_check(gm: pd.DataFrame, planted: Sequence[str]) -> dict[str, float]:
    """Mean Pearson of planted and of other genes in a per-gene table (for the docs table)."""
    is_p = gm["gene"].isin(list(planted))
    return {"planted_pearson_mean": float(gm.loc[is_p, "pearson"].mean()),
            "planted_pearson_min": float(gm.loc[is_p, "pearson"].min()),
            "other_pearson_mean": float(gm.loc[~is_p, "pearson"].mean()),
            "other_abs_pearson_max": float(np.abs(gm.loc[~is_p, "pearson"]).max())}
