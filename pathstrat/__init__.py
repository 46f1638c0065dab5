"""pathstrat: digital-pathology patient stratification.

The version has one source, ``[project].version`` in ``pyproject.toml``, read here from the
installed package's metadata.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pathstrat")
except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
    __version__ = "0+unknown"
