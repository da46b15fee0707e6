"""DenseNet-121/161/169/201 in Flax linen, torchvision layout, NHWC, eval mode.

Units are torchvision's ``features`` children — ``"features.conv0"``, ``"features.norm0"``,
``"features.relu0"``, ``"features.pool0"``, ``"features.denseblock1"``,
``"features.transition1"``, …, ``"features.denseblock4"``, ``"features.norm5"`` — then
``"relu"`` (the ``F.relu`` of torchvision's forward: the post-activation 1024/1664/… channel
map, the default tap), ``"avgpool"`` ``(B, C)`` and ``"classifier"``. A dense block is one
unit (its layers concatenate onto a growing tensor). Torch keys follow from the names
(:mod:`chipjax.models.chain`).
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from ..errors import ModelError
from .chain import chain_spec
from .layers import AvgPoolFlatten, BatchNorm, MaxPool2d, ReLU, conv2d, dense

#: name -> (growth rate, layers per block, initial features) as torchvision builds them (bn_size 4).
DENSENET_CONFIGS = {
    "densenet121": (32, (6, 12, 24, 16), 64),
    "densenet161": (48, (6, 12, 36, 24), 96),
    "densenet169": (32, (6, 12, 32, 32), 64),
    "densenet201": (32, (6, 12, 48, 32), 64),
}
BN_SIZE = 4


def avg_pool2d(x: jax.Array, size: int) -> jax.Array:
    """``nn.AvgPool2d(size, size)`` (no padding, floor mode) on NHWC: ``(B, H, W, C) -> (B, H // size, W // size, C)``."""
    summed = lax.reduce_window(x, jnp.zeros((), x.dtype), lax.add, (1, size, size, 1), (1, size, size, 1), "VALID")
    return summed / (size * size)


class DenseLayer(nn.Module):
    """torchvision ``_DenseLayer``: BN-ReLU-1×1 conv-BN-ReLU-3×3 conv, ``(B, H, W, C) -> (B, H, W, growth)``."""

    growth: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.relu(BatchNorm(name="norm1")(x))
        y = conv2d(BN_SIZE * self.growth, 1, use_bias=False, name="conv1")(y)
        y = nn.relu(BatchNorm(name="norm2")(y))
        return conv2d(self.growth, 3, 1, 1, use_bias=False, name="conv2")(y)


class DenseBlock(nn.Module):
    """torchvision ``_DenseBlock``: ``(B, H, W, C) -> (B, H, W, C + layers * growth)``; layers ``"denselayer1"`` …"""

    layers: int
    growth: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.layers):
            x = jnp.concatenate([x, DenseLayer(self.growth, name=f"denselayer{i + 1}")(x)], axis=-1)
        return x


class Transition(nn.Module):
    """torchvision ``_Transition``: BN-ReLU-1×1 conv-2×2 average pool, ``(B, H, W, C) -> (B, H/2, W/2, features)``."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.relu(BatchNorm(name="norm")(x))
        return avg_pool2d(conv2d(self.features, 1, use_bias=False, name="conv")(y), 2)


def densenet_plan(name: str, num_classes: int = 1000) -> list:
    """``[(unit name, module factory), ...]``, input to output, of torchvision's ``name`` (e.g. ``"densenet121"``)."""
    if name not in DENSENET_CONFIGS:
        raise ModelError(f"no DenseNet {name!r}; choose one of {', '.join(DENSENET_CONFIGS)}")
    growth, blocks, width = DENSENET_CONFIGS[name]
    plan = [
        ("features.conv0", functools.partial(conv2d, width, 7, 2, 3, False)),
        ("features.norm0", BatchNorm),
        ("features.relu0", ReLU),
        ("features.pool0", functools.partial(MaxPool2d, kernel_size=3, stride=2, padding=1)),
    ]
    for i, n in enumerate(blocks, start=1):
        plan.append((f"features.denseblock{i}", functools.partial(DenseBlock, n, growth)))
        width += n * growth
        if i != len(blocks):
            width //= 2
            plan.append((f"features.transition{i}", functools.partial(Transition, width)))
    plan += [
        ("features.norm5", BatchNorm),
        ("relu", ReLU),
        ("avgpool", functools.partial(AvgPoolFlatten, output_size=(1, 1))),
        ("classifier", functools.partial(dense, num_classes)),
    ]
    return plan


def densenet_spec(name: str):
    """The :class:`ArchSpec` of torchvision's ``name`` (224 px, resize 256, ImageNet mean/std)."""
    if name not in DENSENET_CONFIGS:
        raise ModelError(f"no DenseNet {name!r}; choose one of {', '.join(DENSENET_CONFIGS)}")
    return chain_spec(
        name,
        functools.partial(densenet_plan, name),
        aliases={"features": "features.norm5"},
        default_layer="relu",
        stage_layers=("features.denseblock3", "features.denseblock4", "relu"),
    )
