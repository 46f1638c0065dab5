"""`pathstrat finetune --package P`: adapt a sponsor's model to a partner's cohort, and show
whether that helped.

Three models on the same partner patients, each with patient-bootstrap CIs:

- **as-is**: the package's fold ensemble (the partner's patients were never seen in training);
- **fine-tuned**: patient-grouped CV on the partner's data, every fold model starting from the
  package's weights (``--trainable head | attention | all``);
- **from scratch**: the same CV, same folds and seeds, from random initialisation.

Plus the paired bootstrap difference (fine-tuned minus as-is) of the primary metric. The
fine-tuned run becomes a new package version whose ``parent`` is the package's version.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np
import pandas as pd

from pathstrat.io import ensure_writable_dir, write_dataframe_atomic, write_json_atomic
from pathstrat.mil.kinds import KINDS

log = logging.getLogger(__name__)



def _target_args(targets: list[dict[str, Any]]) -> tuple[list[str], str | None, str | None]:
    names, time_col, event_col = [], None, None
    for t in targets:
        if t.get("time_col"):
            names.append(f"survival:{t['kind']}")
            time_col, event_col = t["time_col"], t["event_col"]
        elif t["kind"] == "multilabel":
            names.append(",".join(t["columns"]))
        else:
            names.append(f"{t['columns'][0]}:{t['kind']}")
    return names, time_col, event_col


def _patient_scores(pred: pd.DataFrame, target: str, repeat: int | None = 0) -> pd.DataFrame:
    d = pred[pred["target"] == target]
    if "repeat" in d.columns and repeat is not None:
        d = d[d["repeat"] == d["repeat"].min()]
    return d.groupby("patient_id").agg(score=("score", "mean"), y=("y_true", "first")).dropna()


def _paired_difference(a: pd.DataFrame, b: pd.DataFrame, *, n_boot: int, seed: int) -> dict[str, float]:
    """AUROC(b) - AUROC(a) on the patients both scored, patient bootstrap 95% CI."""
    from pathstrat.metrics import auroc, bootstrap_ci

    j = a.join(b, lsuffix="_a", rsuffix="_b", how="inner")
    y = j["y_a"].to_numpy(float)
    sa, sb = j["score_a"].to_numpy(float), j["score_b"].to_numpy(float)

    def diff(i: np.ndarray) -> dict[str, float]:
        if len(np.unique(y[i])) < 2:
            return {"d": np.nan}
        return {"d": auroc(y[i], sb[i]) - auroc(y[i], sa[i])}

    r = bootstrap_ci(diff, len(j), n_boot=n_boot, seed=seed)["d"]
    return {"difference": r["mean"], "ci_low": r["ci_low"], "ci_high": r["ci_high"], "n_patients": len(j)}


def finetune_package(package: str | os.PathLike, features_dir: str | os.PathLike,
                     manifest: str | os.PathLike, out_dir: str | os.PathLike, *,
                     trainable: str = "attention", folds: int = 5, epochs: int = 20, lr: float = 1e-4,
                     seed: int = 0, n_boot: int = 1000, new_version: str | None = None,
                     public_key: str | os.PathLike | None = None, device: str = "auto",
                     **train_kwargs: Any) -> dict[str, Any]:
    """Compare as-is / fine-tuned / from scratch (see the module docstring); write
    ``comparison.json``/``comparison.csv`` and the new package; return the comparison."""
    from pathstrat.layout import resolve_features_dir
    from pathstrat.sharing.build import (
        build_package,
        next_minor,
        open_package,
        parent_record,
        starting_fold,
    )
    from pathstrat.sharing.predict import check_provenance
    from pathstrat.training.cv import train_cv
    from pathstrat.training.inference import predict

    out = ensure_writable_dir(out_dir)
    from pathstrat.cohort import load_manifest

    df = load_manifest(manifest, check_files=False)
    fdir = resolve_features_dir(features_dir)
    with open_package(package, public_key=public_key) as (root, doc):
        check_provenance(doc, fdir, df["slide_id"].astype(str).tolist())
        predict(root, fdir, df, out / "as_is", allow_overlap=True, device=device, n_boot=n_boot)
        init = out / "init.safetensors"
        first = starting_fold(json.loads((root / "checkpoints" / "model.json").read_text()))["file"]
        init.write_bytes((root / "checkpoints" / first).read_bytes())
    targets, time_col, event_col = _target_args(doc["model"]["targets"])
    common = dict(features=str(fdir), manifest=str(manifest), targets=targets, model=doc["model"]["arch"],
                  hparams={k: v for k, v in doc["model"]["hparams"].items() if k != "attention"},
                  folds=folds, seed=seed, epochs=epochs, time_col=time_col, event_col=event_col,
                  level=doc["model"]["level"], n_boot=n_boot, device=device,
                  encoder_id=doc["pipeline"]["encoder"].get("encoder_id"), **train_kwargs)
    runs = {"fine-tuned": train_cv(out=str(out / "finetuned"), lr=lr, init_weights=str(init),
                                   trainable=trainable, overwrite=True, **common),
            "from scratch": train_cv(out=str(out / "scratch"), overwrite=True, **common)}
    metrics = {"as-is": json.loads((out / "as_is" / "metrics.json").read_text())}
    metrics.update({k: json.loads((v / "metrics.json").read_text()) for k, v in runs.items()})
    rows = [{"model": m, "target": t, "metric": k, "mean": v["mean"], "ci_low": v["ci_low"],
             "ci_high": v["ci_high"]}
            for m, ms in metrics.items() for t, tm in ms.items() for k, v in tm.items()
            if isinstance(v, dict) and "mean" in v]
    first_t = doc["model"]["targets"][0]
    kind = KINDS.get(first_t["kind"])
    primary = kind.primary_metric
    comp: dict[str, Any] = {"schema": "pathstrat.finetune/1", "package": doc["name"],
                            "package_version": doc["version"], "trainable": trainable,
                            "primary_metric": primary, "target": first_t["name"],
                            "n_patients": int(df["patient_id"].nunique()),
                            "models": {m: ms.get(first_t["name"], {}).get(primary) for m, ms in metrics.items()}}
    if kind.categorical and kind.n_classes == 2:  # one binary score: a paired AUROC difference
        pa = _patient_scores(pd.read_csv(out / "as_is" / "predictions.csv", dtype={"patient_id": str}),
                             first_t["name"], None)
        pf = _patient_scores(pd.read_csv(runs["fine-tuned"] / "predictions.csv", dtype={"patient_id": str}),
                             first_t["name"])
        comp["fine_tuned_minus_as_is"] = _paired_difference(pa, pf, n_boot=n_boot, seed=seed)
    version = new_version or next_minor(doc["version"])
    comp["new_package"] = str(build_package(runs["fine-tuned"], out / f"{doc['name']}-{version}.pathstrat",
                                            name=doc["name"], version=version, parent=doc["version"],
                                            parent_package=parent_record(doc), overwrite=True).name)
    for where in (out, runs["fine-tuned"]):  # the fine-tuned run's report shows the comparison
        write_dataframe_atomic(where / "comparison.csv", pd.DataFrame(rows))
        write_json_atomic(where / "comparison.json", comp)
    log.info("finetune: %s as-is %s, fine-tuned %s, from scratch %s", primary,
             *(f"{(comp['models'][m] or {}).get('mean', float('nan')):.3f}"
               for m in ("as-is", "fine-tuned", "from scratch")))
    return comp
