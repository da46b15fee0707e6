"""Model randomisation for the sanity checks (Adebayo et al.): re-initialised copies of a model, cascading
from the logits down or one unit at a time, and the per-layer similarity records."""
from __future__ import annotations

from typing import Callable

import numpy as np

from .. import metrics as M

# ------------------------------------------------------------------------------------- models
def parameterised_units(model) -> tuple[list[str], dict[str, int]]:
    """The variable keys of ``model``'s parameterised units, input to output, and each key's unit index."""
    present = {key for tree in model.variables.values() for key in tree}
    keys, first_unit = [], {}
    for index, unit in enumerate(model.spec.units):
        for key in (unit, unit.replace(".", "_")):
            if key in present and key not in keys:
                keys.append(key)
                first_unit[key] = index
                break
    return keys, first_unit


def randomized_model(model, top: int, seed: int = 0, independent: bool = False):
    """``model`` with its top ``top`` parameterised units re-initialised from ``seed`` (cascading
    randomisation of Adebayo et al.), via :func:`chipjax.metrics.randomize_top_layers`; with
    ``independent`` only the ``top``-th unit from the output (independent randomisation,
    :func:`chipjax.metrics.randomize_layers`)."""
    import jax
    import jax.numpy as jnp

    from ..metrics import randomize_layers, randomize_top_layers
    from ..models.base import Model

    keys, first_unit = parameterised_units(model)
    top = min(int(top), len(keys))
    start = first_unit[keys[len(keys) - top]]
    # initialise only units[start:], on an input shaped like their input: cheap even for a big network
    module, size = model.module, model.input_size
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    inner = jax.eval_shape(lambda v, a: module.apply(v, a, start=0, stop=start), model.variables, x)
    init = jax.jit(lambda key, a: module.init(key, a, start=start, stop=None))
    fresh = init(jax.random.PRNGKey(seed), jnp.zeros(inner.shape, inner.dtype))
    if independent:
        variables = randomize_layers(model.variables, fresh, [keys[len(keys) - top]])
        return Model(model.spec, variables, f"{model.weights}, unit {keys[len(keys) - top]} re-initialised (seed {seed})")
    variables = randomize_top_layers(model.variables, fresh, keys, top)
    return Model(model.spec, variables, f"{model.weights}, top {top} units re-initialised (seed {seed})")


SANITY_MODES = ("cascading", "independent")
SANITY_SIMILARITIES = ("spearman", "spearman_abs", "ssim", "hog")


class SanityModels:
    """Randomised copies of a model for the per-layer sanity check, made once each when first asked for:
    ``get(mode, n)`` is the model with its top ``n`` units (cascading) or its ``n``-th unit from the output
    (independent) re-initialised (seed 0)."""

    def __init__(self, model, depth: int = 0):
        self.model = model
        self.keys = parameterised_units(model)[0][::-1]  # from the logits down
        self.keys = self.keys[:depth] if depth else self.keys
        self._made: dict = {}

    def get(self, mode: str, n: int):
        if (mode, n) not in self._made:
            self._made[(mode, n)] = randomized_model(self.model, n, independent=(mode == "independent"))
        return self._made[(mode, n)]


def sanity_layer_records(model_maps: np.ndarray, maps_of: Callable, sanity: SanityModels) -> list[dict]:
    """Per image: ``{mode: [[unit key, [spearman, spearman_abs, ssim, hog]], ...]}``, units from the logits down
    (a list, so the order survives the JSON records). ``model_maps (B, S, S)`` are the trained model's maps and
    ``maps_of(model)`` the same run's maps of the same batch on another model."""
    out = [{mode: [] for mode in SANITY_MODES} for _ in range(len(model_maps))]
    for mode in SANITY_MODES:
        for n, key in enumerate(sanity.keys, start=1):
            sims = M.map_similarities(model_maps, maps_of(sanity.get(mode, n)))
            for b in range(len(model_maps)):
                out[b][mode].append([key, [round(float(sims[k][b]), 6) for k in SANITY_SIMILARITIES]])
    return out
