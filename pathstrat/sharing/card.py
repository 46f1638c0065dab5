"""The model card (``README.md`` in the Hugging Face model-card layout) of a package."""

from __future__ import annotations

from typing import Any


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def model_card(doc: dict[str, Any], *, licence: str = "other", intended_use: str = "",
               limitations: str = "") -> str:
    """Markdown with YAML front matter: intended use, data, metrics with CIs, limitations, licence."""
    enc = doc["pipeline"]["encoder"]
    til = doc["pipeline"]["tiling"]
    targets = [t["name"] for t in doc["model"]["targets"]]
    lines = ["---", f"license: {licence}", "library_name: pathstrat",
             "tags:", "- pathology", "- multiple-instance-learning", "- pathstrat",
             f"base_model: {enc.get('encoder_id')}", "---", "",
             f"# {doc['name']} {doc['version']}", "",
             f"Attention-MIL model ({doc['model']['arch']}) on {enc.get('encoder_id')} tile embeddings, "
             f"targets: {', '.join(targets)}. Made with pathstrat {doc['pathstrat_version']}"
             + (f"; parent version {doc['parent']}." if doc.get("parent") else "."), "",
             "## Intended use", "", intended_use or "Research use on H&E whole-slide images "
             "processed exactly as pinned below. Not a medical device; not for clinical decisions.", "",
             "## Pinned pipeline", "",
             f"- encoder `{enc.get('encoder_id')}` (dim {enc.get('encoder_dim')}), weights sha256 "
             f"`{enc.get('weights_sha256')}`, transform `{enc.get('transform')}`",
             f"- tiles of {til.get('tile_px')} px at {til.get('target_mpp')} µm/px, overlap "
             f"{til.get('overlap_px')} px, min tissue {til.get('min_tissue')}",
             "- `pathstrat predict --package` refuses features made any other way.", "",
             "## Training data", "",
             f"{doc['training_summary']['n_patients']} patients, {doc['training_summary']['n_slides']} "
             "slides (no patient-level data is included in this package).", "",
             "## Metrics (out-of-fold, patient bootstrap 95% CI)", "",
             "| target | metric | value | 95% CI |", "|---|---|---|---|"]
    for tgt, ms in (doc.get("metrics") or {}).items():
        for m, v in ms.items():
            if isinstance(v, dict) and "mean" in v:
                lines.append(f"| {tgt} | {m} | {_fmt(v.get('mean'))} | {_fmt(v.get('ci_low'))}–"
                             f"{_fmt(v.get('ci_high'))} |")
    rules = doc.get("rules")
    if rules:
        lines += ["", "## Decision rule", "",
                  f"Select when {rules['selected_when']} with threshold {rules['threshold']:.4g} "
                  f"(rule {rules['rule']} = {rules['target_value']} on target {rules['target']})."]
        for k, v in rules.get("operating_characteristics", {}).items():
            if isinstance(v, dict) and "value" in v:
                lines.append(f"- {k}: {_fmt(v['value'])} (Wilson 95% CI {_fmt(v.get('wilson_low'))}–"
                             f"{_fmt(v.get('wilson_high'))})")
    lines += ["", "## Limitations", "", limitations or
              "Performance was estimated by cross-validation on the sponsor's cohort; other scanners, "
              "stains and populations can differ. `predict --package` reports an out-of-distribution "
              "check per slide and per cohort: do not rely on predictions for a cohort it flags.", "",
              "## Licence", "", f"{licence}", ""]
    return "\n".join(lines)
