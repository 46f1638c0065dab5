"""One vocabulary for settings in messages: library errors name config fields, front ends translate.

The library is used three ways (Python API, YAML configs, the CLI), and an error that says
``--tile-px`` is wrong for two of them. So library messages name a setting by its **field name
in backticks** (the keyword argument of the API and the key of the YAML section), e.g.
``"use a larger `tile_px` or `target_mpp`"``, and each front end rewrites those names into what its
user typed:

- the CLI (:func:`pathstrat.cli.main`) maps them to the invoked command's flags
  (``--tile-px``) with :func:`command_flags`;
- a config-driven command (``pathstrat run``) maps them to dotted config keys
  (``tiling.tile_px``) with :func:`config_keys`.

Only backticked lower-case identifiers that the mapping knows are rewritten, so prose, file names
and quoted manifest columns (``'mpp'``: columns are written in single quotes) stay as they are.
Files written for people and other tools, where no front end is in between (``failures.csv``),
carry the bare field names (:func:`plain`).
Pydantic validation errors become one line through :func:`format_validation_error`, the one
formatter used by every config schema.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from typing import Any

#: A field reference inside a library message: `name` (snake_case).
FIELD_REF = re.compile(r"`([a-z][a-z0-9_]*)`")


def translate(message: str, names: Mapping[str, str]) -> str:
    """Rewrite every `field` the mapping knows into its front-end spelling (unknown ones stay)."""

    def _sub(m: re.Match[str]) -> str:
        return names.get(m.group(1), m.group(0))

    return FIELD_REF.sub(_sub, message)


def plain(message: str) -> str:
    """``message`` with its `field` references as bare field names, for files that no front end
    translates (``failures.csv``: "use a larger `tile_px`" -> "use a larger tile_px").

    Only what :data:`FIELD_REF` matches loses its backticks; commands such as `pathstrat tile`
    stay quoted."""
    return FIELD_REF.sub(r"\1", message)


def command_flags(command: Any) -> dict[str, str]:
    """``{parameter name: long flag}`` of a click command (``tile_px`` -> ``--tile-px``).

    A repeatable flag also answers to the plural field it fills (``--target`` for ``targets``).
    """
    out: dict[str, str] = {}
    for p in getattr(command, "params", ()):
        opts = [o for o in (*getattr(p, "opts", ()), *getattr(p, "secondary_opts", ()))
                if o.startswith("--")]
        if p.name and opts and getattr(p, "param_type_name", "") == "option":
            out[p.name] = opts[0]
            if getattr(p, "multiple", False):
                out.setdefault(f"{p.name}s", opts[0])
    return out


def for_current_command(message: str) -> str:
    """``message`` in the flags of the click command now running (unchanged outside one)."""
    import click

    ctx = click.get_current_context(silent=True)
    return translate(message, command_flags(ctx.command)) if ctx is not None else message


def leaf_command(group: Any, argv: Sequence[str]) -> Any:
    """The click (sub)command that ``argv`` invokes (the group itself if none matches)."""
    cmd = group
    for tok in argv:
        if tok.startswith("-"):
            continue
        sub = getattr(cmd, "commands", {}).get(tok)
        if sub is None:
            break
        cmd = sub
    return cmd


def config_keys(model: Any) -> dict[str, str]:
    """``{field: "section.field"}`` for the fields of a config model's sections.

    A field name used by several sections (``seed``, ``workers``) is ambiguous and left out,
    so its messages keep the bare name.
    """
    seen: dict[str, list[str]] = {}
    for section, info in model.model_fields.items():
        sub = _model_class(info.annotation)
        if sub is None:
            continue
        for name in sub.model_fields:
            seen.setdefault(name, []).append(f"{section}.{name}")
    return {k: v[0] for k, v in seen.items() if len(v) == 1}


def _model_class(annotation: Any) -> Any:
    """The pydantic model class in ``X`` or ``X | None`` (None for anything else)."""
    cands = [annotation, *getattr(annotation, "__args__", ())]
    for c in cands:
        if isinstance(c, type) and hasattr(c, "model_fields"):
            return c
    return None


def _model_at(model: Any, loc: Sequence[Any]) -> Any:
    """The nested model class that a validation-error location points into."""
    cur = model
    for part in loc:
        if cur is None or not isinstance(part, str) or part not in cur.model_fields:
            return None
        cur = _model_class(cur.model_fields[part].annotation)
    return cur


def unknown_key_message(key: str, known: Sequence[str], prefix: str, source: str) -> str:
    """``source: unknown key 'a.b'. Did you mean 'a.c'? Valid keys here: ...``."""
    where = f"{prefix}." if prefix else ""
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
    hint = f" Did you mean '{where}{close[0]}'?" if close else ""
    return f"{source}: unknown key '{where}{key}'.{hint} Valid keys here: {', '.join(sorted(known))}."


def format_validation_error(exc: Any, source: str, model: Any = None) -> str:
    """One line for a pydantic ``ValidationError``: ``source: key.path: message`` per error.

    ``model`` (the validated class) lets an unknown key suggest the closest valid one.
    Input values are echoed (shortened), so the user sees what was refused.
    """
    lines = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        if err.get("type") == "extra_forbidden" and loc:
            sub = _model_at(model, loc[:-1]) if model is not None else None
            known = list(sub.model_fields) if sub is not None else []
            lines.append(unknown_key_message(str(loc[-1]), known, ".".join(map(str, loc[:-1])), source))
            continue
        where = ".".join(map(str, loc)) or "(top level)"
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        value = err.get("input")
        shown = "" if isinstance(value, dict) or value is None else f" (got {_short(value)})"
        lines.append(f"{source}: {where}: {msg}{shown}")
    return " ".join(lines)


def brief_errors(exc: Any) -> str:
    """``loc: message; ...`` of a ``ValidationError`` (for re-raising inside a validator, where
    pydantic adds the outer location itself)."""
    return "; ".join((f"{'.'.join(map(str, e['loc']))}: " if e.get("loc") else "")
                     + str(e.get("msg", "invalid value")).removeprefix("Value error, ")
                     for e in exc.errors())


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
