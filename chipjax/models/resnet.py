"""ResNet-18/34/50/101/152 in Flax linen, torchvision layout (v1.5: stride on the Bottleneck's 3x3 conv).

NHWC. The network is a chain of *units* named as torchvision names its modules:
``"relu"`` (conv1 + bn1 + relu), ``"maxpool"``, ``"layer1.0"`` … ``"layer4.N"`` (one
residual block each), ``"avgpool"`` (global average pool, ``(B, C)``) and ``"fc"``.
Tap aliases ``"layer1"`` … ``"layer4"`` name the last block of each stage. Variables
convert from a torchvision ``state_dict`` with
:func:`chipjax.io.torchvision_map.convert_resnet`.
"""
from __future__ import annotations

import functools
from typing import Callable, Mapping

import flax.linen as nn
import jax

from ..errors import ModelError
from .base import ArchSpec
from .layers import AvgPoolFlatten, BatchNorm, MaxPool2d, conv2d, dense
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, mean_std_normalize, resize_crop_view

#: depth -> (block kind, blocks per stage), as torchvision builds them.
RESNET_CONFIGS: Mapping[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
STAGE_WIDTHS = (64, 128, 256, 512)
EXPANSION = {"basic": 1, "bottleneck": 4}


class Stem(nn.Module):
    """``conv1`` (7x7, stride 2, pad 3, 64) + ``bn1`` + ReLU: ``(B, H, W, 3) -> (B, H/2, W/2, 64)``."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = conv2d(64, 7, stride=2, padding=3, use_bias=False, name="conv1")(x)
        return nn.relu(BatchNorm(name="bn1")(x))


class BasicBlock(nn.Module):
    """torchvision ``BasicBlock``: two 3x3 convs, ``(B, H, W, C_in) -> (B, H/stride, W/stride, features)``."""

    features: int
    stride: int = 1
    downsample: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = conv2d(self.features, 3, self.stride, 1, use_bias=False, name="conv1")(x)
        y = nn.relu(BatchNorm(name="bn1")(y))
        y = conv2d(self.features, 3, 1, 1, use_bias=False, name="conv2")(y)
        y = BatchNorm(name="bn2")(y)
        return nn.relu(y + _shortcut(x, self.features, self.stride, self.downsample))


class Bottleneck(nn.Module):
    """torchvision v1.5 ``Bottleneck``: 1x1, 3x3 (strided), 1x1 convs,
    ``(B, H, W, C_in) -> (B, H/stride, W/stride, 4 * features)``."""

    features: int
    stride: int = 1
    downsample: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out = self.features * EXPANSION["bottleneck"]
        y = conv2d(self.features, 1, use_bias=False, name="conv1")(x)
        y = nn.relu(BatchNorm(name="bn1")(y))
        y = conv2d(self.features, 3, self.stride, 1, use_bias=False, name="conv2")(y)
        y = nn.relu(BatchNorm(name="bn2")(y))
        y = conv2d(out, 1, use_bias=False, name="conv3")(y)
        y = BatchNorm(name="bn3")(y)
        return nn.relu(y + _shortcut(x, out, self.stride, self.downsample))


def _shortcut(x: jax.Array, features: int, stride: int, downsample: bool) -> jax.Array:
    """Identity, or torchvision's ``downsample`` (1x1 strided conv + BN), called inside a block's compact scope."""
    if not downsample:
        return x
    x = conv2d(features, 1, stride, 0, use_bias=False, name="downsample.0")(x)
    return BatchNorm(name="downsample.1")(x)


def resnet_plan(depth: int, num_classes: int = 1000) -> list[tuple[str, Callable[[], nn.Module]]]:
    """``[(unit name, module factory), ...]``, input to output, for ResNet-``depth``."""
    kind, blocks = _config(depth)
    block = BasicBlock if kind == "basic" else Bottleneck
    plan: list[tuple[str, Callable[[], nn.Module]]] = [
        ("relu", Stem),
        ("maxpool", functools.partial(MaxPool2d, kernel_size=3, stride=2, padding=1)),
    ]
    in_channels = 64
    for stage, (width, n) in enumerate(zip(STAGE_WIDTHS, blocks), start=1):
        for i in range(n):
            stride = 2 if (stage > 1 and i == 0) else 1
            out = width * EXPANSION[kind]
            downsample = stride != 1 or in_channels != out
            plan.append((f"layer{stage}.{i}", functools.partial(block, features=width, stride=stride, downsample=downsample)))
            in_channels = out
    plan.append(("avgpool", functools.partial(AvgPoolFlatten, output_size=(1, 1))))
    plan.append(("fc", functools.partial(dense, num_classes)))
    return plan


def _config(depth: int) -> tuple[str, tuple[int, int, int, int]]:
    if depth not in RESNET_CONFIGS:
        raise ModelError(f"no ResNet of depth {depth}; choose one of {', '.join(map(str, RESNET_CONFIGS))}")
    return RESNET_CONFIGS[depth]


class ResNet(nn.Module):
    """ResNet-``depth``: ``(B, S, S, 3) -> (B, num_classes)``; ``__call__(x, start, stop)`` runs ``units[start:stop]``."""

    depth: int
    num_classes: int = 1000

    def setup(self):
        self.units = [make() for _, make in resnet_plan(self.depth, self.num_classes)]

    def __call__(self, x: jax.Array, start: int = 0, stop: int | None = None) -> jax.Array:
        for unit in self.units[start:stop]:
            x = unit(x)
        return x


def _convert(state_dict, depth: int):
    from ..io.torchvision_map import convert_resnet

    return convert_resnet(state_dict, depth)


def resnet_spec(depth: int) -> ArchSpec:
    """The :class:`ArchSpec` of torchvision's ``resnet{depth}`` (ImageNet: 224 px, resize 256, mean/std)."""
    kind, blocks = _config(depth)
    units = tuple(name for name, _ in resnet_plan(depth))
    aliases = {f"layer{s}": f"layer{s}.{n - 1}" for s, n in enumerate(blocks, start=1)}
    return ArchSpec(
        name=f"resnet{depth}",
        make_module=functools.partial(ResNet, depth=depth),
        units=units,
        aliases=aliases,
        input_size=224,
        view=resize_crop_view(224, 256),
        normalize=mean_std_normalize(IMAGENET_MEAN, IMAGENET_STD),
        convert=functools.partial(_convert, depth=depth),
        pretrained=None,
        default_layer="layer4",
        stage_layers=("layer2", "layer3", "layer4"),
    )
