"""The model card (``README.md`` in the Hugging Face model-card layout) of a package."""

from __future__ import annotations

from typing import Any


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _training(doc: dict[str, Any]) -> list[str]:
    ts = doc["training_summary"]
    if "n_patients" in ts:
        return [f"{ts['n_patients']} patients, {ts['n_slides']} slides (no patient-level data is "
                "included in this package)."]
    parent = ts.get("parent") or {}
    return [f"Started from {doc['parent_package']['name']} {doc['parent']} (trained on "
            f"{parent.get('n_patients', '?')} patients, {parent.get('n_slides', '?')} slides at the "
            f"sponsor), then trained by federated learning at {ts['federation_sites']} site(s) "
            f"holding {ts['federation_bags']} {doc['model'].get('level', 'slide')} bags in all "
            "(training and held-out); no data left a site and no patient-level data is included "
            "in this package."]


def _federation(doc: dict[str, Any], fed: dict[str, Any]) -> list[str]:
    p = doc["parent_package"]
    out = ["## Federated improvement", "",
           f"- parent: {p['name']} {p['version']} (manifest sha256 `{p['manifest_sha256']}`, "
           f"signature {p['signature']})",
           f"- {fed['strategy']}, {fed['rounds_run']} of {fed['rounds_planned']} rounds, "
           f"{fed['local_epochs']} local epoch(s) per round; kept round {fed['kept_round']}: "
           f"{fed['selection_reason']}",
           "- sites: " + ", ".join(f"{s['name']} ({s['n_train']} training / {s['n_eval']} held-out)"
                                   for s in fed["sites"])]
    for name, reason in fed.get("refused_sites", {}).items():
        out.append(f"- refused: {name}: {reason}")
    for rnd, names in fed.get("failed_sites_by_round", {}).items():
        out.append(f"- round {rnd}: failed {', '.join(names)}")
    out += [f"- privacy: {fed['privacy']}",
            "- the pinned pipeline and the input scaling are the parent's (checked at every site; "
            "the scaling was not refitted)", ""]
    return out


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
             "## Training data", "", *_training(doc), ""]
    fed = doc.get("federation")
    if fed:
        lines += _federation(doc, fed)
    lines += [("## Metrics (federated: the sites' held-out patients at the kept round, weighted "
               "by their counts; no CI, patient-level scores never leave a site)") if fed else
              "## Metrics (out-of-fold, patient bootstrap 95% CI)", "",
              "| target | metric | value | 95% CI |", "|---|---|---|---|"]
    for tgt, ms in (doc.get("metrics") or {}).items():
        for m, v in ms.items():
            if isinstance(v, dict) and "mean" in v:
                ci = ("–" if v.get("ci_low") is None and v.get("ci_high") is None
                      else f"{_fmt(v.get('ci_low'))}–{_fmt(v.get('ci_high'))}")
                lines.append(f"| {tgt} | {m} | {_fmt(v.get('mean'))} | {ci} |")
    rules = doc.get("rules")
    if rules:
        lines += ["", "## Decision rule", "",
                  f"Select when {rules['selected_when']} with threshold {rules['threshold']:.4g} "
                  f"(rule {rules['rule']} = {rules['target_value']} on target {rules['target']})."]
        for k, v in rules.get("operating_characteristics", {}).items():
            if isinstance(v, dict) and "value" in v:
                lines.append(f"- {k}: {_fmt(v['value'])} (Wilson 95% CI {_fmt(v.get('wilson_low'))}–"
                             f"{_fmt(v.get('wilson_high'))})")
    if doc.get("rules_note"):
        lines += ["", "## Decision rule", "", doc["rules_note"]]
    where = ("on the federation sites' held-out patients" if fed
             else "by cross-validation on the sponsor's cohort")
    lines += ["", "## Limitations", "", limitations or
              f"Performance was estimated {where}; other scanners, "
              "stains and populations can differ. `predict --package` reports an out-of-distribution "
              "check per slide and per cohort: do not rely on predictions for a cohort it flags.",
              *(["", (doc.get("ood") or {})["statement"]] if (doc.get("ood") or {}).get("statement")
                else []), "",
              "## Licence", "", f"{licence}", ""]
    return "\n".join(lines)
