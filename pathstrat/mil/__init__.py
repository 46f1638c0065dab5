"""Multiple-instance learning models, heads and losses.

``MODELS`` is the registry of self-describing entries (:class:`ModelSpec`); ``build_model``
creates one with the published defaults merged with user hyperparameters.

Importing this package imports every module in it (not the ``kinds`` subpackage, which its
own ``__init__`` loads), so a new model is one file here with a ``@register_model`` class;
``tests/test_mil.py``, parametrised over ``MODELS.names()``, picks it up.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any

from torch import nn

from pathstrat.errors import ConfigError
from pathstrat.mil.base import MODELS, MILOutput, ModelSpec, masked_softmax
from pathstrat.mil.scaling import attach_scaler

# every module of the package registers what it defines (models.py, transmil.py, a new file)
for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.ispkg):
    importlib.import_module(f"{__name__}.{_mod}")

__all__ = ["MODELS", "MILOutput", "ModelSpec", "build_model", "model_hparams", "masked_softmax"]


def model_hparams(name: str, **hparams: Any) -> dict[str, Any]:
    """Defaults of model ``name`` overridden by ``hparams``; unknown keys raise ConfigError."""
    spec = MODELS.get(name)
    allowed = set(inspect.signature(spec.cls.__init__).parameters) - {"self", "in_dim", "heads"}
    unknown = sorted(set(hparams) - allowed)
    if unknown:
        raise ConfigError(f"Unknown hyperparameter(s) {unknown} for MIL model '{name}'. "
                          f"Known: {sorted(allowed)}.")
    return {**spec.defaults, **hparams}



def build_model(name: str, in_dim: int, heads: dict[str, int], **hparams: Any) -> nn.Module:
    """Build MIL model ``name`` for ``in_dim`` features with one output layer per head.

    ``heads`` maps head name to its number of outputs (1 for binary/regression/Cox).
    """
    if not heads:
        raise ConfigError("build_model needs at least one head, e.g. heads={'responder': 1}.")
    spec = MODELS.get(name)
    model = spec.cls(int(in_dim), {str(k): int(v) for k, v in heads.items()},
                     **model_hparams(name, **hparams))
    model.spec = spec  # type: ignore[attr-defined]
    return attach_scaler(model, int(in_dim))  # identity until fitted (pathstrat.mil.scaling)
