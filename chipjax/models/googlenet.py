"""GoogLeNet (Inception v1) in Flax linen, torchvision layout, NHWC, eval mode.

Units are torchvision's top-level modules: ``"conv1"``, ``"maxpool1"``, ``"conv2"``, ``"conv3"``,
``"maxpool2"``, ``"inception3a"`` … ``"inception5b"`` (the four branches concatenated),
the max-pools between them, ``"avgpool"`` ``(B, 1024)`` and ``"fc"``. ``BasicConv2d`` is
conv (no bias) + BN (ε = 1e-3) + ReLU; max-pools use ``ceil_mode`` as torch does.

The auxiliary classifiers (``aux1``, ``aux2``) only run in training; their keys in a checkpoint
are accepted and ignored. Preprocessing: torchvision's ImageNet weights are built with
``transform_input=True``, which turns ImageNet-normalised input into ``(x − 0.5) / 0.5`` of the
pixel in [0, 1]; this model has no such step and its ``preprocess`` scales ``(x / 255 − 0.5) / 0.5``
directly, the same numbers. A checkpoint trained with ``transform_input=False`` expects ImageNet
mean/std input instead: normalise the images yourself in that case.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from .chain import chain_spec
from .layers import AvgPoolFlatten, BatchNorm, MaxPool2d, conv2d, dense, max_pool2d

#: name -> (ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj) of torchvision's ``Inception`` blocks.
INCEPTION_BLOCKS = {
    "inception3a": (64, 96, 128, 16, 32, 32),
    "inception3b": (128, 128, 192, 32, 96, 64),
    "inception4a": (192, 96, 208, 16, 48, 64),
    "inception4b": (160, 112, 224, 24, 64, 64),
    "inception4c": (128, 128, 256, 24, 64, 64),
    "inception4d": (112, 144, 288, 32, 64, 64),
    "inception4e": (256, 160, 320, 32, 128, 128),
    "inception5a": (256, 160, 320, 32, 128, 128),
    "inception5b": (384, 192, 384, 48, 128, 128),
}


class BasicConv2d(nn.Module):
    """torchvision's ``BasicConv2d``: conv ``"conv"`` (no bias) + BN ``"bn"`` (ε = 1e-3) + ReLU."""

    features: int
    kernel_size: int | tuple[int, int] = 1
    stride: int = 1
    padding: int | tuple[int, int] = 0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = conv2d(self.features, self.kernel_size, self.stride, self.padding, use_bias=False, name="conv")(x)
        return nn.relu(BatchNorm(epsilon=1e-3, name="bn")(x))


class Inception(nn.Module):
    """torchvision ``Inception``: 1×1 | 1×1-3×3 | 1×1-3×3 | maxpool-1×1 branches, concatenated on channels."""

    ch1x1: int
    ch3x3red: int
    ch3x3: int
    ch5x5red: int
    ch5x5: int
    pool_proj: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = BasicConv2d(self.ch1x1, name="branch1")(x)
        b2 = BasicConv2d(self.ch3x3, 3, padding=1, name="branch2.1")(BasicConv2d(self.ch3x3red, name="branch2.0")(x))
        b3 = BasicConv2d(self.ch5x5, 3, padding=1, name="branch3.1")(BasicConv2d(self.ch5x5red, name="branch3.0")(x))
        b4 = BasicConv2d(self.pool_proj, name="branch4.1")(max_pool2d(x, 3, 1, 1, ceil_mode=True))
        return jnp.concatenate([b1, b2, b3, b4], axis=-1)


def googlenet_plan(num_classes: int = 1000) -> list:
    """``[(unit name, module factory), ...]``, input to output, of torchvision's ``googlenet()``."""
    pool = lambda k: functools.partial(MaxPool2d, kernel_size=k, stride=2, ceil_mode=True)  # noqa: E731
    block = lambda name: (name, functools.partial(Inception, *INCEPTION_BLOCKS[name]))  # noqa: E731
    return [
        ("conv1", functools.partial(BasicConv2d, 64, 7, 2, 3)),
        ("maxpool1", pool(3)),
        ("conv2", functools.partial(BasicConv2d, 64, 1)),
        ("conv3", functools.partial(BasicConv2d, 192, 3, 1, 1)),
        ("maxpool2", pool(3)),
        block("inception3a"),
        block("inception3b"),
        ("maxpool3", pool(3)),
        *[block(f"inception4{c}") for c in "abcde"],
        ("maxpool4", pool(2)),
        block("inception5a"),
        block("inception5b"),
        ("avgpool", functools.partial(AvgPoolFlatten, output_size=(1, 1))),
        ("fc", functools.partial(dense, num_classes)),
    ]


def googlenet_spec():
    """The :class:`ArchSpec` of torchvision's ``googlenet`` (224 px, resize 256, ``(x / 255 − 0.5) / 0.5``)."""
    return chain_spec(
        "googlenet",
        googlenet_plan,
        aliases={},
        default_layer="inception5b",
        stage_layers=("inception4e", "inception5b"),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        ignored_prefixes=("aux1.", "aux2."),
    )
