"""Variables of an :class:`~chipjax.models.base.ArchSpec`: random init, and their shapes without computing them."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

if TYPE_CHECKING:
    from .base import ArchSpec


def _init_side(spec: ArchSpec) -> int:
    """Side of the square input used to build the variables: 64 px, or the network's minimum if larger."""
    return max(64, spec.min_size)


def init_variables(spec: ArchSpec, seed: int = 0) -> Any:
    """Random-init Flax variables of ``spec`` (PRNG key from ``seed``)."""
    module = spec.make_module()
    side = _init_side(spec)
    x = jnp.zeros((1, side, side, 3), jnp.float32)
    return jax.jit(module.init)(jax.random.PRNGKey(seed), x)


def variable_shapes(spec: ArchSpec) -> Any:
    """Shapes/dtypes of the variables of ``spec``, without computing them."""
    module = spec.make_module()
    side = _init_side(spec)
    x = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
    return jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
