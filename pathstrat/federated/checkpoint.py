"""The federated global model as a normal pathstrat run checkpoint, and local fine-tuning of it.

``checkpoints/fold0.safetensors`` + ``checkpoints/model.json`` follow the run-directory contract
of ``pathstrat train`` (docs/architecture.md), so ``pathstrat predict`` and ``pathstrat report`` use
the federated model like any other. ``training_patient_ids`` is empty because patient ids never
leave the sites; the ``federated`` block records how the model was made.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from pathstrat.federated.config import FederationConfig, SiteConfig
from pathstrat.federated.site import GlobalState, LocalSite, resolved_specs
from pathstrat.io import ensure_writable_dir, sha256_file, write_json_atomic

log = logging.getLogger(__name__)


def save_federated_checkpoint(out_dir: str | os.PathLike, model: nn.Module, fed: FederationConfig,
                              state: GlobalState, summary: dict[str, Any] | None = None,
                              *, training_patient_ids: list[str] | None = None,
                              extra: dict[str, Any] | None = None) -> Path:
    """Write ``<out>/checkpoints/{fold0.safetensors, model.json}``; returns the run directory."""
    from pathstrat.training.cv import save_checkpoint_file  # byte-stable: one metadata key

    out = ensure_writable_dir(out_dir)
    ckpt = out / "checkpoints"
    ckpt.mkdir(exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    path = ckpt / "fold0.safetensors"
    save_checkpoint_file(path, tensors, {"model": fed.model, "fold": "0", "repeat": "0",
                                         "federated": "1"})
    specs = resolved_specs(fed, state)
    fed_block = {"strategy": fed.strategy, "rounds": fed.rounds, "local_epochs": fed.local_epochs,
                 "dp": summary.get("dp") if summary else None,
                 "sites": [s["name"] for s in (summary or {}).get("sites", [])],
                 "kept_round": ((summary or {}).get("selection") or {}).get("kept_round"),
                 **(extra or {})}
    write_json_atomic(ckpt / "model.json", {
        "model": fed.model, "hparams": dict(fed.hparams), "in_dim": fed.feature_dim,
        "encoder_id": fed.encoder_id, "level": fed.level,
        "targets": [s.to_dict() for s in specs],
        "folds": [{"name": "fold0", "file": path.name, "sha256": sha256_file(path), "repeat": 0,
                   "fold": 0, "training_patient_ids": sorted(training_patient_ids or []),
                   "target_state": state.target_states}],
        "federated": fed_block,
        "schema": "pathstrat.mil_run/1"})
    return out


def load_federated_run(run_dir: str | os.PathLike) -> tuple[FederationConfig, GlobalState, nn.Module]:
    """(federation config, agreed state, model) of a federated run directory."""
    from pathstrat.training.inference import load_fold_model, load_run_spec

    run = Path(run_dir)
    spec = load_run_spec(run)
    fed_json = run / "federation.json"
    if not fed_json.exists():
        from pathstrat.errors import SchemaError

        raise SchemaError(f"'{run}' has no federation.json; pass the out dir of `pathstrat federated "
                          "simulate` / the coordinator's ServerApp.")
    summary = json.loads(fed_json.read_text(encoding="utf-8"))
    fed = FederationConfig.model_validate(summary["config"])
    state = GlobalState.from_dict(summary["agreed"])
    return fed, state, load_fold_model(run, spec["folds"][0], spec)


def finetune_site(run_dir: str | os.PathLike, site: SiteConfig, out_dir: str | os.PathLike, *,
                  epochs: int = 5, lr: float | None = None, seed: int = 0) -> dict[str, Any]:
    """Fine-tune the global model on one site's training patients; evaluate before and after on
    the site's held-out patients; write the tuned model as a normal run checkpoint in ``out_dir``.

    Returns ``{"before": metrics, "after": metrics, "run_dir": path}``. Nothing leaves the site.
    """
    fed, state, model = load_federated_run(run_dir)
    if lr is not None:
        fed = fed.model_copy(update={"lr": float(lr)})
    fed = fed.model_copy(update={"seed": fed.seed})
    local = LocalSite(site, fed)
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    before = local.evaluate(weights, state)
    tuned, loss = local.train(weights, state, epochs=epochs, seed=seed)
    after = local.evaluate(tuned, state)
    model.load_state_dict(tuned)
    train_ids = local.store.table.iloc[local.train_idx]["patient_id"].astype(str).tolist()
    summary = json.loads((Path(run_dir) / "federation.json").read_text(encoding="utf-8"))
    out = save_federated_checkpoint(out_dir, model, fed, state, summary,
                                    training_patient_ids=train_ids,
                                    extra={"finetuned_at": site.name, "finetune_epochs": epochs,
                                           "base_run": str(Path(run_dir).resolve())})
    res = {"site": site.name, "epochs": epochs, "final_train_loss": loss,
           "before": _scalars(before), "after": _scalars(after), "run_dir": str(out)}
    summary = {**summary, "finetune": res}
    write_json_atomic(out / "federation.json", summary)
    write_json_atomic(out / "finetune.json", res)
    return res


def _scalars(m: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in m.items() if not isinstance(v, list) and np.isfinite(float(v))}


__all__ = ["finetune_site", "load_federated_run", "save_federated_checkpoint"]
