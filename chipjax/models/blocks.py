"""torchvision's shared building blocks (``torchvision.ops.misc``) in Flax, NHWC, eval mode.

Submodules carry torch's names, so :func:`chipjax.models.keymap.torch_key_table` maps them:

* :class:`ConvNormAct`: ``Conv2dNormActivation`` — conv ``"0"``, batch norm ``"1"``, then an activation.
* :class:`SqueezeExcitation`: ``SqueezeExcitation`` — ``fc1``/``fc2`` 1×1 convs with bias.

Activations by name (:data:`ACTIVATIONS`): ``"relu"``, ``"relu6"``, ``"hardswish"``, ``"silu"``,
``"sigmoid"``, ``"hardsigmoid"``, ``"gelu"`` (exact, erf) and ``None`` (identity), each equal
to its ``torch.nn`` counterpart.
"""
from __future__ import annotations

from typing import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from .layers import BatchNorm, conv2d


def hardsigmoid(x: jax.Array) -> jax.Array:
    """``torch.nn.Hardsigmoid``: ``relu6(x + 3) / 6``."""
    return jax.nn.relu6(x + 3.0) / 6.0


def hardswish(x: jax.Array) -> jax.Array:
    """``torch.nn.Hardswish``: ``x · relu6(x + 3) / 6``."""
    return x * hardsigmoid(x)


def gelu(x: jax.Array) -> jax.Array:
    """``torch.nn.GELU()`` (exact, erf form)."""
    return jax.nn.gelu(x, approximate=False)


ACTIVATIONS: Mapping[str | None, Callable[[jax.Array], jax.Array]] = {
    None: lambda x: x,
    "relu": nn.relu,
    "relu6": jax.nn.relu6,
    "hardswish": hardswish,
    "silu": jax.nn.silu,
    "sigmoid": jax.nn.sigmoid,
    "hardsigmoid": hardsigmoid,
    "gelu": gelu,
}


class Activation(nn.Module):
    """An activation of :data:`ACTIVATIONS` as a parameterless unit; any shape."""

    kind: str | None = "relu"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return ACTIVATIONS[self.kind](x)


class ConvNormAct(nn.Module):
    """``Conv2dNormActivation``: conv (no bias, pad ``(k - 1) // 2``) ``"0"`` + BN ``"1"`` + activation.

    ``(B, H, W, C_in) -> (B, H', W', features)``, ``H' = (H + 2 p - k) // stride + 1``.
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    groups: int = 1
    activation: str | None = "relu"
    bn_epsilon: float = 1e-5
    padding: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pad = (self.kernel_size - 1) // 2 if self.padding is None else self.padding
        x = conv2d(self.features, self.kernel_size, self.stride, pad, use_bias=False, groups=self.groups, name="0")(x)
        return ACTIVATIONS[self.activation](BatchNorm(epsilon=self.bn_epsilon, name="1")(x))


class SqueezeExcitation(nn.Module):
    """``SqueezeExcitation``: ``x · σ(fc2(δ(fc1(mean_hw(x)))))``, ``(B, H, W, C) -> (B, H, W, C)``."""

    squeeze_channels: int
    activation: str = "relu"
    scale_activation: str = "sigmoid"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = ACTIVATIONS[self.activation](conv2d(self.squeeze_channels, 1, name="fc1")(s))
        s = ACTIVATIONS[self.scale_activation](conv2d(x.shape[-1], 1, name="fc2")(s))
        return x * s


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """torchvision's ``_make_divisible``: ``v`` rounded to a multiple of ``divisor``, never below 90 % of ``v``."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return int(new_v)
