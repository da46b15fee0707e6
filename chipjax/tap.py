"""Layer taps: split a network ``f = g ∘ h`` at a named layer.

Every explanation method works on a :class:`Tap`: the head ``h`` runs once per
image and gives the feature map ``A (B, H, W, K)``; the tail ``g`` maps a batch
of (possibly perturbed) feature maps to logits. Zoo models build taps from their
unit list (:meth:`chipjax.models.base.Model.tap`); :func:`tap_module` builds one
for any user Flax linen module by the path of one of its submodules.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable, Sequence

import jax

from .errors import LayerError


@dataclasses.dataclass(frozen=True)
class Tap:
    """A network split at ``layer``.

    Attributes:
      layer: the tap name.
      head_fn: ``(variables, x (B, S, S, 3)) -> A (B, H, W, K)``, pure.
      tail_fn: ``(variables, A (N, H, W, K)) -> logits (N, C)``, pure.
      variables: the weights both take.
    """

    layer: str
    head_fn: Callable[[Any, jax.Array], jax.Array]
    tail_fn: Callable[[Any, jax.Array], jax.Array]
    variables: Any

    def head(self, x: jax.Array) -> jax.Array:
        """Feature maps ``(B, H, W, K)`` of images ``(B, S, S, 3)``."""
        return _jit(self.head_fn)(self.variables, x)

    def tail(self, a: jax.Array) -> jax.Array:
        """Logits ``(N, C)`` of feature maps ``(N, H, W, K)``."""
        return _jit(self.tail_fn)(self.variables, a)


_JIT_CACHE: dict[Callable, Callable] = {}


def _jit(fn: Callable) -> Callable:
    if fn not in _JIT_CACHE:
        _JIT_CACHE[fn] = jax.jit(fn)
    return _JIT_CACHE[fn]


def resolve_layer(layer: str, valid: Sequence[str]) -> str:
    """Return ``layer`` if it is a valid tap name, else raise a :class:`LayerError` listing the valid ones."""
    if layer in valid:
        return layer
    close = difflib.get_close_matches(str(layer), valid, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise LayerError(f"unknown layer {layer!r}.{hint} Valid layers: {', '.join(valid)}")


def module_layers(module, variables, x) -> list[str]:
    """Paths (``"Conv_0"``, ``"block1.conv"``) of every submodule of a linen ``module``, in call order.

    ``x`` is an example input (its shape is all that matters).
    """
    import flax.linen as nn

    names: list[str] = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and context.module.path:
            name = ".".join(context.module.path)
            if name not in names:
                names.append(name)
        return out

    with nn.intercept_methods(record):
        jax.eval_shape(lambda v, x: module.apply(v, x), variables, x)
    return names


def tap_module(module, variables, layer: str, example_input) -> Tap:
    """Tap a user's own Flax linen ``module`` at the submodule path ``layer``.

    The head runs ``module`` and returns that submodule's output; the tail runs the
    module with that output replaced by its argument, so the part before the tap is
    dead code that XLA removes (for a straight chain of layers; with a skip connection
    around the tap the skipped input is recomputed from a zero image, so tap such nets
    only outside residual blocks).

    Args:
      module: a ``flax.linen.Module`` mapping images ``(B, S, S, 3)`` to logits.
      variables: its variables.
      layer: a path from :func:`module_layers`, e.g. ``"Conv_1"``.
      example_input: an input of the right shape, e.g. ``jnp.zeros((1, 32, 32, 3))``.
    """
    import flax.linen as nn
    import jax.numpy as jnp

    valid = module_layers(module, variables, example_input)
    layer = resolve_layer(layer, valid)
    path = tuple(layer.split("."))
    in_shape = tuple(jnp.shape(example_input)[1:])

    def head_fn(variables, x):
        captured = {}

        def capture(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.method_name == "__call__" and tuple(context.module.path) == path:
                captured["a"] = out
            return out

        with nn.intercept_methods(capture):
            module.apply(variables, x)
        return captured["a"]

    def tail_fn(variables, a):
        def replace(next_fun, args, kwargs, context):
            if context.method_name == "__call__" and tuple(context.module.path) == path:
                next_fun(*args, **kwargs)  # keeps parameter bookkeeping; dead code under jit
                return a
            return next_fun(*args, **kwargs)

        x = jnp.zeros((a.shape[0],) + in_shape, a.dtype)
        with nn.intercept_methods(replace):
            return module.apply(variables, x)

    return Tap(layer=layer, head_fn=head_fn, tail_fn=tail_fn, variables=variables)
