"""ResNet-18/34/50/101/152 in Flax linen, torchvision layout (v1.5: stride on the Bottleneck's 3x3 conv).

NHWC. The network is a chain of *units* named as torchvision names its modules:
``"relu"`` (conv1 + bn1 + relu), ``"maxpool"``, ``"layer1.0"`` … ``"layer4.N"`` (one
residual block each), ``"avgpool"`` (global average pool, ``(B, C)``) and ``"fc"``.
Tap aliases ``"layer1"`` … ``"layer4"`` name the last block of each stage. Variables
convert from a torchvision ``state_dict`` with
:func:`convert_resnet`.

ResNeXt (``resnext50_32x4d``, ``resnext101_32x8d``, ``resnext101_64x4d``) and Wide ResNet
(``wide_resnet50_2``, ``wide_resnet101_2``) are the same network with a grouped / wider 3x3 conv in
the Bottleneck (:data:`RESNET_VARIANTS`, :func:`resnet_variant_spec`), same unit and tap names.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Mapping

import flax.linen as nn
import jax

from ..errors import ModelError
from .base import ArchSpec
from .keymap import KeyEntry, convert_state_dict, with_torch_keys
from .layers import AvgPoolFlatten, BatchNorm, MaxPool2d, channelwise_units, conv2d, dense, plan_unit_class
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
#: torchvision name -> (depth, groups, width per group) of the grouped / wide Bottleneck variants.
RESNET_VARIANTS: Mapping[str, tuple[int, int, int]] = {
    "resnext50_32x4d": (50, 32, 4),
    "resnext101_32x8d": (101, 32, 8),
    "resnext101_64x4d": (101, 64, 4),
    "wide_resnet50_2": (50, 1, 128),
    "wide_resnet101_2": (101, 1, 128),
}


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
    """torchvision v1.5 ``Bottleneck``: 1x1, 3x3 (strided, ``groups``), 1x1 convs,
    ``(B, H, W, C_in) -> (B, H/stride, W/stride, 4 * features)``.

    The inner width is ``int(features * width_per_group / 64) * groups`` as in torchvision
    (ResNeXt: ``groups=32, width_per_group=4``; Wide ResNet: ``width_per_group=128``).
    """

    features: int
    stride: int = 1
    downsample: bool = False
    groups: int = 1
    width_per_group: int = 64

    @nn.compact
    def __call__(self, x, part: str = "all"):
        """``part="all"``: the block. ``"entry"``: the products that read the block input —
        ``(conv1(x), downsample conv(x) or x)``, both linear in x (:func:`bottleneck_entry_terms`);
        ``"exit"``: the rest of the block from that pair."""
        out = self.features * EXPANSION["bottleneck"]
        width = int(self.features * (self.width_per_group / 64.0)) * self.groups
        if part == "exit":
            y, skip = x
        else:
            y = conv2d(width, 1, use_bias=False, name="conv1")(x)
            skip = conv2d(out, 1, self.stride, 0, use_bias=False, name="downsample.0")(x) if self.downsample else x
            if part == "entry":
                return y, skip
        y = nn.relu(BatchNorm(name="bn1")(y))
        y = conv2d(width, 3, self.stride, 1, use_bias=False, groups=self.groups, name="conv2")(y)
        y = nn.relu(BatchNorm(name="bn2")(y))
        y = conv2d(out, 1, use_bias=False, name="conv3")(y)
        y = BatchNorm(name="bn3")(y)
        if self.downsample:
            skip = BatchNorm(name="downsample.1")(skip)
        return nn.relu(y + skip)


def bottleneck_entry_terms(block: "Bottleneck") -> tuple[tuple[str | None, int], ...]:
    """A Bottleneck's entry (``part="entry"``) as products of its input, one ``(name of its 1×1 kernel,
    stride)`` per output: ``conv1``, then the shortcut's ``downsample.0`` (or ``None``: the input itself)."""
    return (("conv1", 1), ("downsample.0", block.stride) if block.downsample else (None, 1))


def resnet_entry(plan) -> Callable[[int], tuple | None]:
    """``unit index -> ((parameter path of a (1, 1, K, O) kernel or None, stride), ...)`` when that unit is a
    Bottleneck (its entry is linear in its input: ``ArchSpec.entry``), else None."""

    def entry(i: int):
        if i >= len(plan):
            return None
        factory = plan[i][1]
        if plan_unit_class(factory) is not Bottleneck:
            return None
        terms = bottleneck_entry_terms(factory())
        return tuple((None if name is None else (f"units_{i}", name, "kernel"), stride) for name, stride in terms)

    return entry


def _shortcut(x: jax.Array, features: int, stride: int, downsample: bool) -> jax.Array:
    """Identity, or torchvision's ``downsample`` (1x1 strided conv + BN), called inside a block's compact scope."""
    if not downsample:
        return x
    x = conv2d(features, 1, stride, 0, use_bias=False, name="downsample.0")(x)
    return BatchNorm(name="downsample.1")(x)


def resnet_plan(
    depth: int, num_classes: int = 1000, groups: int = 1, width_per_group: int = 64
) -> list[tuple[str, Callable[[], nn.Module]]]:
    """``[(unit name, module factory), ...]``, input to output, for ResNet-``depth`` (grouped/wide: see :class:`Bottleneck`)."""
    kind, blocks = _config(depth)
    block = BasicBlock
    if kind == "bottleneck":
        block = functools.partial(Bottleneck, groups=groups, width_per_group=width_per_group)
    elif (groups, width_per_group) != (1, 64):
        raise ModelError(f"ResNet-{depth} has BasicBlocks, which support only groups=1 and width_per_group=64")
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
    groups: int = 1
    width_per_group: int = 64

    def setup(self):
        plan = resnet_plan(self.depth, self.num_classes, self.groups, self.width_per_group)
        self.units = [make() for _, make in plan]

    def __call__(self, x: jax.Array, start: int = 0, stop: int | None = None, part: str = "all") -> jax.Array:
        """``units[start:stop]``; ``part="entry"``: only the entry of the Bottleneck ``units[start]``;
        ``part="exit"``: ``x`` is that entry, and the rest of ``units[start]`` and ``units[start + 1:stop]`` run."""
        if part == "entry":
            return self.units[start](x, part="entry")
        units = self.units[start:stop]
        if part == "exit":
            x, units = units[0](x, part="exit"), units[1:]
        for unit in units:
            x = unit(x)
        return x


#: torch prefix of the stem unit: ``"relu"`` holds torchvision's top-level ``conv1``/``bn1``.
STEM_PREFIX = {"relu": ""}


@functools.lru_cache(maxsize=None)
def resnet_key_table(depth: int) -> Mapping[str, KeyEntry]:
    """``{torch key: KeyEntry}`` of torchvision's ``resnet{depth}`` (the stem unit ``"relu"`` holds ``conv1``/``bn1``)."""
    return resnet_spec(depth).key_table()


def convert_resnet(state_dict: Mapping, depth: int) -> dict:
    """torchvision ``resnet{depth}().state_dict()`` (as arrays) -> Flax variables of :class:`ResNet`."""
    return convert_state_dict(state_dict, resnet_key_table(depth), f"resnet{depth}")


def resnet_variant_spec(name: str) -> ArchSpec:
    """The :class:`ArchSpec` of torchvision's ResNeXt / Wide ResNet ``name`` (a key of :data:`RESNET_VARIANTS`)."""
    if name not in RESNET_VARIANTS:
        raise ModelError(f"no ResNet variant {name!r}; choose one of {', '.join(RESNET_VARIANTS)}")
    depth, groups, width_per_group = RESNET_VARIANTS[name]
    base = resnet_spec(depth)
    variant = dataclasses.replace(
        base, name=name, make_module=functools.partial(ResNet, depth=depth, groups=groups, width_per_group=width_per_group))
    return with_torch_keys(variant, STEM_PREFIX)


def resnet_spec(depth: int) -> ArchSpec:
    """The :class:`ArchSpec` of torchvision's ``resnet{depth}`` (ImageNet: 224 px, resize 256, mean/std)."""
    kind, blocks = _config(depth)
    plan = resnet_plan(depth)
    units = tuple(name for name, _ in plan)
    aliases = {f"layer{s}": f"layer{s}.{n - 1}" for s, n in enumerate(blocks, start=1)}
    spec = ArchSpec(
        name=f"resnet{depth}",
        make_module=functools.partial(ResNet, depth=depth),
        units=units,
        aliases=aliases,
        input_size=224,
        view=resize_crop_view(224, 256),
        normalize=mean_std_normalize(IMAGENET_MEAN, IMAGENET_STD),
        pretrained=None,
        default_layer="layer4",
        stage_layers=("layer2", "layer3", "layer4"),
        channelwise_units=channelwise_units(plan),
        entry=resnet_entry(plan),
    )
    return with_torch_keys(spec, STEM_PREFIX)
