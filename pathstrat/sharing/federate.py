"""Federated improvement of a model package: the package is the initial global model, every site
checks its features against the package's pinned pipeline, and the kept global model becomes a
new package version whose parent is the package.

Decisions (docs/model-sharing.md, "Improving the model without moving data"):

- **Starting weights**: the package's first fold model (:func:`~pathstrat.sharing.build.starting_fold`,
  the rule `finetune` uses); fold models start from different initialisations, so their weights
  are never averaged.
- **Architecture, heads, encoder, pipeline** come from the package; a federation YAML that sets
  them differently is refused.
- **Input scaling**: the sponsor's standardisation (the ``input_mean``/``input_inv_std`` buffers
  of the starting model) is kept, not refitted at the sites: the starting weights were learned on
  inputs standardised with it, and refitting would change what they mean. The new package's
  buffers are the parent's, bit for bit.
- **Head state**: what gives the outputs their meaning (regression mean/std, survival cut
  points, class names) is the package's; loss weights (positive-class and class weights) are
  agreed from the sites' counts as in any federation.
- **OOD statistics**: the parent's, kept as they are and said so in the card: they describe the
  sponsor's training cohort only, not the partner sites' data the new version was also trained on.
- **Decision rule**: not carried over (its threshold was set on the parent's scores).
- **Federation record** in package.json and the card: aggregate only (rounds, kept round and
  why, site names with counts, refused sites with their public reasons, held-out metrics) - no
  ids, no paths.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pathstrat.errors import ConfigError

log = logging.getLogger(__name__)

#: Federation settings a package decides; a config that sets them differently is refused.
FROM_PACKAGE = ("model", "hparams", "targets", "encoder_id", "feature_dim", "level", "pinned_pipeline")
#: Head-state keys that give a head's outputs their meaning (kept from the package).
DECODING_KEYS = ("mean", "std", "cuts")
_TARGET_FIELDS = ("name", "kind", "columns", "time_col", "event_col", "classes", "n_bins")


def _abs(v: Any, base: Path) -> Any:
    if v is None:
        return None
    p = Path(str(v)).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def from_package(data: dict[str, Any], base: str | Path = ".") -> dict[str, Any]:
    """A federation config's raw ``data`` with its ``package`` verified and the settings the
    package decides filled in (relative paths of ``package`` are relative to ``base``, the
    config file's folder). Raises :class:`PackageError` for a bad package, :class:`ConfigError`
    when the config contradicts it."""
    from pathstrat.sharing.build import open_package

    start = data["package"]
    start = dict(start) if isinstance(start, dict) else {"path": start}
    for k in ("path", "public_key", "out", "sign_key"):
        start[k] = _abs(start.get(k), Path(base))
    with open_package(start["path"], public_key=start.get("public_key"),
                      require_signature=bool(start.get("require_signature"))) as (_, doc):
        pass
    targets = [{k: t.get(k) for k in _TARGET_FIELDS if k in t} for t in doc["model"]["targets"]]
    pinned = {"model": doc["model"]["arch"], "hparams": dict(doc["model"]["hparams"]),
              "targets": targets, "encoder_id": doc["pipeline"]["encoder"]["encoder_id"],
              "feature_dim": int(doc["model"]["in_dim"]), "level": doc["model"].get("level", "slide"),
              "pinned_pipeline": doc["pipeline"]}
    clash = [k for k in FROM_PACKAGE if data.get(k) is not None and data[k] != pinned[k]]
    if clash:
        raise ConfigError(f"The federation config sets {clash}, but they come from the package "
                          f"'{doc['name']}' {doc['version']} it starts from; remove them from the "
                          "config (the package pins architecture, heads, encoder and pipeline).")
    log.info("federation starts from package %s %s (signature %s)", doc["name"], doc["version"],
             doc["_signature"])
    return {**data, **pinned, "package": start}


@dataclass
class StartModel:
    """The initial global model of a federation started from a package."""

    weights: dict[str, Any]  # tensors of the starting fold model (scaler buffers included)
    target_state: dict[str, dict[str, Any]]
    doc: dict[str, Any]  # the verified package.json
    parent: dict[str, Any]  # parent_record of the package

    def merge_state(self, agreed):
        """The agreed GlobalState with the package's decoding state (see the module docstring)."""
        from pathstrat.federated.site import GlobalState

        states = {name: {**st, **{k: v for k, v in self.target_state.get(name, {}).items()
                                  if k in DECODING_KEYS}}
                  for name, st in agreed.target_states.items()}
        return GlobalState(states, dict(agreed.classes))

    def scaler(self) -> dict[str, Any]:
        from pathstrat.mil.scaling import SCALER_KEYS

        return {k: self.weights[k] for k in SCALER_KEYS if k in self.weights}


def load_start(fed) -> StartModel:
    """Verify ``fed.package`` again (on the coordinator, when the run starts) and read its
    starting fold model; the package must still pin the pipeline the config was made from."""
    from safetensors.torch import load_file

    from pathstrat.sharing.build import open_package, parent_record, starting_fold
    from pathstrat.sharing.manifest import PackageError

    start = fed.package
    with open_package(start.path, public_key=start.public_key,
                      require_signature=start.require_signature) as (root, doc):
        if doc["pipeline"] != fed.pinned_pipeline:
            raise PackageError(f"Package '{start.path}' no longer pins the pipeline the federation "
                               "config was made from; reload the config.")
        spec = json.loads((root / "checkpoints" / "model.json").read_text(encoding="utf-8"))
        fold = starting_fold(spec)
        weights = load_file(str(root / "checkpoints" / fold["file"]))
    return StartModel(weights, dict(fold.get("target_state") or {}), doc, parent_record(doc))


def refuse_unpinned(fed, site_name: str, features_dir: Path, slide_ids: list[str]) -> None:
    """A site's join check: refuse (SiteRefusedError) unless every feature file of the site was
    made with the package's pinned pipeline. The coordinator learns which attributes differ and
    how many files; file names (slide ids) stay in the site's log."""
    from pathstrat.federated.site import SiteRefusedError
    from pathstrat.sharing.predict import pinned_fix, pipeline_mismatches
    from pathstrat.training.data import resolve_features_dir

    if fed.pinned_pipeline is None:
        return
    fdir = resolve_features_dir(features_dir, slide_ids)
    bad = pipeline_mismatches(fed.pinned_pipeline, fdir, slide_ids)
    if not bad:
        return
    attrs = sorted({d for _, diff in bad for d in diff})
    head = (f"Site '{site_name}' refuses to join: {len(bad)} of its {len(slide_ids)} feature "
            f"file(s) were not made with the starting package's pinned pipeline")
    fix = pinned_fix(fed.pinned_pipeline)
    files = "; ".join(f"'{n}': {', '.join(d[:3])}" for n, d in bad[:5])
    raise SiteRefusedError(f"{head} ({files}). {fix}",
                           f"{head}: {', '.join(attrs[:4])}. {fix}")


def federation_record(fed, summary: dict[str, Any]) -> dict[str, Any]:
    """What the new package says about the federation: aggregate only (no ids, no paths)."""
    sel = summary.get("selection") or {}
    rounds = summary.get("rounds", [])
    return {
        "strategy": fed.strategy, "rounds_planned": fed.rounds, "rounds_run": len(rounds),
        "local_epochs": fed.local_epochs, "lr": fed.lr, "lr_schedule": fed.lr_schedule,
        "kept_round": sel.get("kept_round"), "selection": sel.get("criterion"),
        "selection_reason": sel.get("reason"), "stopped_early": sel.get("stopped_early"),
        "sites": [{"name": s["name"], "n_train": s.get("n_train"), "n_eval": s.get("n_eval")}
                  for s in summary.get("sites", [])],
        "refused_sites": dict(summary.get("refused", {})),
        "failed_sites_by_round": {str(r["round"]): r["failed_sites"] for r in rounds
                                  if r.get("failed_sites")},
        "heldout_metrics": {k: float(v) for k, v in (summary.get("final_metrics") or {}).items()
                            if isinstance(v, (int, float)) and math.isfinite(float(v))},
        "privacy": summary.get("dp_statement"), "secagg": bool(summary.get("secagg")),
    }


def _metrics(record: dict[str, Any], targets: list[dict[str, Any]]) -> dict[str, Any]:
    """Held-out metrics in the package's ``{target: {metric: {mean, ci_low, ci_high}}}`` layout
    (no CI: patient-level scores never leave a site)."""
    out: dict[str, Any] = {}
    for key, v in record["heldout_metrics"].items():
        head, _, metric = key.partition(".")
        if metric and metric != "n" and head in {t["name"] for t in targets}:
            out.setdefault(head, {})[metric] = {"mean": v, "ci_low": None, "ci_high": None}
    return out


def build_federated_package(run_dir: str | Path, fed, summary: dict[str, Any],
                            start: StartModel) -> Path:
    """The kept global model of ``run_dir`` as a new version of the starting package (see the
    module docstring); returns its folder."""
    from pathstrat import __version__
    from pathstrat.sharing.build import (
        PACKAGE_SCHEMA,
        SEMVER,
        next_minor,
        open_package,
        write_package,
    )
    from pathstrat.sharing.manifest import PackageError

    run, parent = Path(run_dir), start.doc
    version = fed.package.version or next_minor(parent["version"])
    if not SEMVER.match(version):
        raise PackageError(f"Version '{version}' is not a semantic version (MAJOR.MINOR.PATCH).")
    dest = Path(fed.package.out) if fed.package.out else run / f"{parent['name']}-{version}.pathstrat"
    spec = json.loads((run / "checkpoints" / "model.json").read_text(encoding="utf-8"))
    spec = {**spec, "federated": {k: v for k, v in spec.get("federated", {}).items()
                                  if k not in ("base_run",)}}  # no paths in the package
    record = federation_record(fed, summary)
    n_bags = sum(int(s.get("n_train") or 0) + int(s.get("n_eval") or 0) for s in record["sites"])
    doc = {
        "schema": PACKAGE_SCHEMA, "name": parent["name"], "version": version,
        "parent": parent["version"], "parent_package": start.parent,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "pathstrat_version": __version__, "pipeline": parent["pipeline"],
        "model": {**parent["model"], "n_fold_models": 1, "targets": spec["targets"],
                  "input_scaling": {**(parent["model"].get("input_scaling") or {}),
                                    "kept_from_parent": True,
                                    "note": "the sponsor's standardisation, not refitted at the sites"}},
        "rules": None,
        "rules_note": (f"The decision rule of {parent['version']} is not carried over: its threshold "
                       "was set on the parent's scores. Set a new one with `pathstrat select` on "
                       "held-out predictions of this version."),
        "metrics": _metrics(record, spec["targets"]),
        "federation": record,
        "ood": {"source": f"parent {parent['name']} {parent['version']}",
                "statement": "The out-of-distribution statistics are the parent's: they describe the "
                             "sponsor's training cohort only, not the federation sites' data this "
                             "version was also trained on. A slide flagged as outside is unlike "
                             "the sponsor's cohort."},
        "training_summary": {"parent": parent.get("training_summary"),
                             "federation_sites": len(record["sites"]), "federation_bags": n_bags},
    }
    with open_package(fed.package.path, public_key=fed.package.public_key,
                      require_signature=fed.package.require_signature) as (root, again):
        if again["_manifest_sha256"] != start.parent["manifest_sha256"]:
            raise PackageError(f"Package '{fed.package.path}' changed during the federation; the "
                               "new version cannot name it as its parent.")
        copy = {"checkpoints/fold0.safetensors": run / "checkpoints" / "fold0.safetensors",
                "ood.json": root / "ood.json", "ood.safetensors": root / "ood.safetensors"}
        out = write_package(dest, doc, copy=copy, model_json=spec, sign_key=fed.package.sign_key)
    log.info("federated improvement: package %s %s (parent %s) in %s", doc["name"], version,
             parent["version"], out)
    return out


__all__ = ["StartModel", "build_federated_package", "federation_record", "from_package",
           "load_start", "refuse_unpinned"]
