"""CLI commands of the slide stage: `pathstrat info SLIDE` (see pathstrat.cli for conventions)."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the app."""
    app.command("info")(info)


def info(
    slide: Path = typer.Argument(..., help="Whole-slide image (any format OpenSlide reads)."),
    mpp: float | None = typer.Option(None, "--mpp", help="Level-0 µm/px, overriding the slide metadata."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
) -> None:
    """Show vendor, size, pyramid levels with MPP, objective, MPP source and associated image names.

    Associated images (label, macro) are listed by name only; they are never read or exported.
    """
    from pathstrat.errors import MissingMPPError, SlideReadError
    from pathstrat.slide import KEYS_TRIED, open_slide
    from pathstrat.vocabulary import for_current_command

    with open_slide(slide, mpp=mpp, mpp_source="override", require_mpp=False) as s:
        data = s.info()
        try:
            s.check_readable()
            data["readable"], data["read_error"] = True, None
        except SlideReadError as exc:
            data["readable"], data["read_error"] = False, str(exc)
        if data["mpp"] is None:
            try:
                _ = s.mpp
            except MissingMPPError as exc:
                data["mpp_error"] = for_current_command(str(exc))
    typer.echo(json.dumps(data, indent=2) if as_json else _format_text(data, KEYS_TRIED))
    if not data["readable"]:  # opened but cannot be decoded: scripts checking slides see a failure
        raise SlideReadError(data["read_error"])


def _format_text(d: dict, keys_tried) -> str:
    mpp = (
        f"{d['mpp']:.4f} µm/px (source: {d['mpp_source']})"
        if d["mpp"] is not None
        else f"unknown (tried {', '.join(keys_tried)}; give --mpp or the manifest `mpp` column)"
    )
    obj = f"{d['objective_power']:g}x" if d["objective_power"] else "unknown"
    lines = [
        f"slide:       {d['path']}",
        f"vendor:      {d['vendor']}",
        f"dimensions:  {d['dimensions'][0]} x {d['dimensions'][1]} px (level 0)",
        f"objective:   {obj}",
        f"mpp:         {mpp}",
        f"backend:     {d['backend']}",
        f"readable:    {'yes' if d['readable'] else 'NO - ' + str(d['read_error'])}",
        "levels:",
    ]
    for lv in d["levels"]:
        lmpp = f"{lv['mpp']:.4f} µm/px" if lv["mpp"] is not None else "? µm/px"
        w, h = lv["dimensions"]
        lines.append(f"  {lv['level']}: {w} x {h} px  downsample {lv['downsample']:.4g}  {lmpp}")
    names = ", ".join(d["associated_images"]) or "none"
    lines.append(f"associated images (names only, never exported): {names}")
    return "\n".join(lines)
