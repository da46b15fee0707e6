"""chipjax: CHIP (Channel-wise disentangled InterPretation) of convolutional networks in JAX/Flax.

>>> import chipjax as cj
>>> model = cj.load_model("efficientnet_lite0")
>>> x = model.preprocess(image)
>>> maps = cj.explain(model, x, method="chip")      # (B, S, S) in [0, 1]
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "load_model": ("chipjax.models", "load_model"),
    "model_names": ("chipjax.models", "model_names"),
    "Model": ("chipjax.models.base", "Model"),
    "Tap": ("chipjax.tap", "Tap"),
    "tap_module": ("chipjax.tap", "tap_module"),
    "ModuleTap": ("chipjax.tap", "ModuleTap"),
    "module_layers": ("chipjax.tap", "module_layers"),
    "tap": ("chipjax.tap", None),
    "explain": ("chipjax.methods", "explain"),
    "CHIP": ("chipjax.chip", "CHIP"),
    "errors": ("chipjax.errors", None),
    "solvers": ("chipjax.solvers", None),
    "stats": ("chipjax.stats", None),
    "perturb": ("chipjax.perturb", None),
    "chip": ("chipjax.chip", None),
    "methods": ("chipjax.methods", None),
    "cams": ("chipjax.cams", None),
    "metrics": ("chipjax.metrics", None),
    "data": ("chipjax.data", None),
    "viz": ("chipjax.viz", None),
    "evalsets": ("chipjax.evalsets", None),
    "eval": ("chipjax.eval", None),
    "evaluate": ("chipjax.eval", "evaluate"),
    "fit_folder": ("chipjax.fit", "fit_folder"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'chipjax' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value
