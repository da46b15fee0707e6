"""chipjax: CHIP (Channel-wise disentangled InterPretation) of convolutional networks in JAX/Flax.

>>> import chipjax as cj
>>> model = cj.load_model("efficientnet_lite0")
>>> x = model.preprocess(image)
>>> maps = cj.explain(model, x, method="chip")      # (B, S, S) in [0, 1]

The public API is what this file imports by name (``__all__``); the modules behind it stay
importable as ``chipjax.<module>`` for the lower-level functions (docs/DESIGN.md §2, §3).
"""
from __future__ import annotations

from . import cams, chip, data, errors, eval, evalsets, methods, metrics, perturb, solvers, stats, tap, viz
from .chip import CHIP
from .eval import evaluate
from .fit import fit_folder
from .methods import explain
from .models import load_model, model_names
from .models.base import Model
from .tap import ModuleTap, Tap, module_layers, tap_module

from ._version import __version__

__all__ = [
    "CHIP", "Model", "ModuleTap", "Tap", "__version__", "cams", "chip", "data", "errors", "eval", "evalsets", "evaluate",
    "explain", "fit_folder", "load_model", "methods", "metrics", "model_names", "module_layers", "perturb",
    "solvers", "stats", "tap", "tap_module", "viz",
]
