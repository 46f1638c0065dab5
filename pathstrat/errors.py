"""Exception hierarchy: every error a user can meet names the item and the fix.

Subclass builtins where a caller might already catch them (``ValueError``, ``OSError``,
``ImportError``) so pathstrat errors fit existing ``except`` clauses.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PathstratError(Exception):
    """Base class of every pathstrat error."""


class ManifestError(PathstratError, ValueError):
    """The cohort manifest is malformed (missing column, duplicate ids, bad values)."""


class SchemaError(PathstratError, ValueError):
    """A file or config does not follow its documented schema."""


class ConfigError(SchemaError):
    """A YAML config or CLI override is invalid."""


class SlideReadError(PathstratError, OSError):
    """A slide cannot be opened or decoded."""


class MissingMPPError(PathstratError, ValueError):
    """A slide has no usable microns-per-pixel metadata."""


class EmptyTissueError(PathstratError, ValueError):
    """Tissue detection found no tissue (or no tile passed the tissue threshold)."""


class WeightsError(PathstratError, FileNotFoundError):
    """Encoder or model weights are missing, unreadable or inconsistent."""


class FeatureDimError(SchemaError):
    """A feature file's dimension or encoder does not match what is expected."""


class LeakageError(PathstratError, ValueError):
    """A patient would appear in both training and evaluation data."""


class MissingDependencyError(PathstratError, ImportError):
    """An optional dependency is not installed; the message names the extra."""

    def __init__(self, package: str, extra: str, purpose: str = "") -> None:
        self.package = package
        self.extra = extra
        what = f" for {purpose}" if purpose else ""
        how = MANUAL_INSTALL.get(extra, f"pip install \"pathstrat[{extra}]\"")
        super().__init__(
            f"The optional package '{package}' is needed{what} but is not installed. "
            f"Install it with: {how}"
        )


#: Optional packages that are not on a package index, so they cannot be an extra.
MANUAL_INSTALL = {
    "conch": "pip install 'git+<URL of mahmoodlab/CONCH>' (CONCH is not on PyPI; see docs/encoders.md)",
}


class UnknownNameError(PathstratError, KeyError):
    """A registry lookup failed; the message suggests the closest names."""

    def __init__(self, kind: str, name: str, known: Iterable[str]) -> None:
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        self.name = name
        self.known = known
        super().__init__(f"Unknown {kind} '{name}'.{hint} Known: {', '.join(known)}.")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def import_optional(module: str, extra: str, purpose: str = ""):
    """Import an optional module or raise :class:`MissingDependencyError` naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(module.split(".")[0], extra, purpose) from exc


class NonFiniteError(PathstratError, ArithmeticError):
    """Training produced a non-finite loss, gradient or weight (the model is never saved)."""
