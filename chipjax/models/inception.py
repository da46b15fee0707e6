"""Inception-v3 in Flax linen, torchvision layout, NHWC, eval mode.

Units are torchvision's top-level modules: ``"Conv2d_1a_3x3"`` … ``"Conv2d_4a_3x3"``,
``"maxpool1"``, ``"maxpool2"``, ``"Mixed_5b"`` … ``"Mixed_7c"`` (branches concatenated in
torch's order), ``"avgpool"`` ``(B, 2048)`` and ``"fc"``. Convolutions are
:class:`~chipjax.models.googlenet.BasicConv2d` (BN ε = 1e-3); the 3×3 average pools count the
zero padding, as torch's default. Inputs need at least 75 px (torchvision's ``min_size``).

``AuxLogits`` only runs in training; its checkpoint keys are accepted and ignored. Preprocessing
is ``(x / 255 − 0.5) / 0.5`` for torchvision's ImageNet weights (built with
``transform_input=True``; see :mod:`chipjax.models.googlenet`), at 299 px from a 342 px resize.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from .chain import chain_spec
from .googlenet import BasicConv2d
from .layers import AvgPoolFlatten, MaxPool2d, dense, max_pool2d


def avg_pool3x3_same(x: jax.Array) -> jax.Array:
    """``F.avg_pool2d(x, 3, stride=1, padding=1)`` (padding counted): ``(B, H, W, C)`` kept."""
    pads = ((0, 0), (1, 1), (1, 1), (0, 0))
    return lax.reduce_window(x, jnp.zeros((), x.dtype), lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pads) / 9.0


def _conv(name: str, features: int, kernel=1, stride: int = 1, padding=0) -> BasicConv2d:
    return BasicConv2d(features, kernel, stride, padding, name=name)


class InceptionA(nn.Module):
    """torchvision ``InceptionA``: ``(B, H, W, C) -> (B, H, W, 224 + pool_features)``."""

    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = _conv("branch1x1", 64)(x)
        b5 = _conv("branch5x5_2", 64, 5, padding=2)(_conv("branch5x5_1", 48)(x))
        b3 = _conv("branch3x3dbl_1", 64)(x)
        b3 = _conv("branch3x3dbl_3", 96, 3, padding=1)(_conv("branch3x3dbl_2", 96, 3, padding=1)(b3))
        bp = _conv("branch_pool", self.pool_features)(avg_pool3x3_same(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """torchvision ``InceptionB`` (grid reduction): ``(B, H, W, C) -> (B, (H-3)//2+1, ·, 480 + C)``."""

    @nn.compact
    def __call__(self, x):
        b3 = _conv("branch3x3", 384, 3, 2)(x)
        bd = _conv("branch3x3dbl_1", 64)(x)
        bd = _conv("branch3x3dbl_3", 96, 3, 2)(_conv("branch3x3dbl_2", 96, 3, padding=1)(bd))
        return jnp.concatenate([b3, bd, max_pool2d(x, 3, 2)], axis=-1)


class InceptionC(nn.Module):
    """torchvision ``InceptionC`` (factorised 7×7): ``(B, H, W, C) -> (B, H, W, 768)``."""

    c7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.c7
        b1 = _conv("branch1x1", 192)(x)
        b7 = _conv("branch7x7_1", c7)(x)
        b7 = _conv("branch7x7_3", 192, (7, 1), padding=(3, 0))(_conv("branch7x7_2", c7, (1, 7), padding=(0, 3))(b7))
        bd = _conv("branch7x7dbl_1", c7)(x)
        bd = _conv("branch7x7dbl_2", c7, (7, 1), padding=(3, 0))(bd)
        bd = _conv("branch7x7dbl_3", c7, (1, 7), padding=(0, 3))(bd)
        bd = _conv("branch7x7dbl_4", c7, (7, 1), padding=(3, 0))(bd)
        bd = _conv("branch7x7dbl_5", 192, (1, 7), padding=(0, 3))(bd)
        bp = _conv("branch_pool", 192)(avg_pool3x3_same(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """torchvision ``InceptionD`` (grid reduction): ``(B, H, W, C) -> (B, (H-3)//2+1, ·, 512 + C)``."""

    @nn.compact
    def __call__(self, x):
        b3 = _conv("branch3x3_2", 320, 3, 2)(_conv("branch3x3_1", 192)(x))
        b7 = _conv("branch7x7x3_1", 192)(x)
        b7 = _conv("branch7x7x3_2", 192, (1, 7), padding=(0, 3))(b7)
        b7 = _conv("branch7x7x3_3", 192, (7, 1), padding=(3, 0))(b7)
        b7 = _conv("branch7x7x3_4", 192, 3, 2)(b7)
        return jnp.concatenate([b3, b7, max_pool2d(x, 3, 2)], axis=-1)


class InceptionE(nn.Module):
    """torchvision ``InceptionE`` (expanded filter bank): ``(B, H, W, C) -> (B, H, W, 2048)``."""

    @nn.compact
    def __call__(self, x):
        b1 = _conv("branch1x1", 320)(x)
        b3 = _conv("branch3x3_1", 384)(x)
        b3 = jnp.concatenate(
            [_conv("branch3x3_2a", 384, (1, 3), padding=(0, 1))(b3), _conv("branch3x3_2b", 384, (3, 1), padding=(1, 0))(b3)],
            axis=-1,
        )
        bd = _conv("branch3x3dbl_2", 384, 3, padding=1)(_conv("branch3x3dbl_1", 448)(x))
        bd = jnp.concatenate(
            [_conv("branch3x3dbl_3a", 384, (1, 3), padding=(0, 1))(bd), _conv("branch3x3dbl_3b", 384, (3, 1), padding=(1, 0))(bd)],
            axis=-1,
        )
        bp = _conv("branch_pool", 192)(avg_pool3x3_same(x))
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def inception_v3_plan(num_classes: int = 1000) -> list:
    """``[(unit name, module factory), ...]``, input to output, of torchvision's ``inception_v3()``."""
    conv = lambda *a, **k: functools.partial(BasicConv2d, *a, **k)  # noqa: E731
    pool = functools.partial(MaxPool2d, kernel_size=3, stride=2)
    return [
        ("Conv2d_1a_3x3", conv(32, 3, 2)),
        ("Conv2d_2a_3x3", conv(32, 3)),
        ("Conv2d_2b_3x3", conv(64, 3, padding=1)),
        ("maxpool1", pool),
        ("Conv2d_3b_1x1", conv(80, 1)),
        ("Conv2d_4a_3x3", conv(192, 3)),
        ("maxpool2", pool),
        ("Mixed_5b", functools.partial(InceptionA, 32)),
        ("Mixed_5c", functools.partial(InceptionA, 64)),
        ("Mixed_5d", functools.partial(InceptionA, 64)),
        ("Mixed_6a", InceptionB),
        ("Mixed_6b", functools.partial(InceptionC, 128)),
        ("Mixed_6c", functools.partial(InceptionC, 160)),
        ("Mixed_6d", functools.partial(InceptionC, 160)),
        ("Mixed_6e", functools.partial(InceptionC, 192)),
        ("Mixed_7a", InceptionD),
        ("Mixed_7b", InceptionE),
        ("Mixed_7c", InceptionE),
        ("avgpool", functools.partial(AvgPoolFlatten, output_size=(1, 1))),
        ("fc", functools.partial(dense, num_classes)),
    ]


def inception_v3_spec():
    """The :class:`ArchSpec` of torchvision's ``inception_v3`` (299 px, resize 342, ``(x / 255 − 0.5) / 0.5``)."""
    return chain_spec(
        "inception_v3",
        inception_v3_plan,
        aliases={},
        default_layer="Mixed_7c",
        stage_layers=("Mixed_6e", "Mixed_7c"),
        input_size=299,
        resize_size=342,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        ignored_prefixes=("AuxLogits.",),
        min_size=75,
    )
