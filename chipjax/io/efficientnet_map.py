"""``efficientnet_lite_pytorch`` state dicts -> Flax variables of :class:`chipjax.models.efficientnet.EfficientNetLite`.

Reference keys: ``_conv_stem.weight``, ``_bn0.*`` (stem BN), ``_blocks.N._expand_conv.weight``,
``_blocks.N._bn0.*``, ``_blocks.N._depthwise_conv.weight``, ``_blocks.N._bn1.*``,
``_blocks.N._project_conv.weight``, ``_blocks.N._bn2.*``, ``_conv_head.weight``, ``_bn1.*`` (head BN),
``_fc.weight``, ``_fc.bias``; BN ``*`` is ``weight``, ``bias``, ``running_mean``, ``running_var`` and
the ignored ``num_batches_tracked``.

Layouts: conv ``(Cout, Cin, k, k)`` -> ``(k, k, Cin, Cout)``; depthwise ``(C, 1, k, k)`` -> ``(k, k, C)``;
linear ``(out, in)`` -> ``(in, out)``; BN weight/bias -> ``params`` scale/bias, running mean/var ->
``batch_stats`` mean/var.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping

import numpy as np

from ..errors import WeightsError
from ..models.efficientnet import HEAD_CHANNELS, NUM_CLASSES, STEM_CHANNELS, BlockConfig, UnitConfig, lite_units

# torch (conv, BN) attribute names of each MBConv part
PART_KEYS = {"expand": ("_expand_conv", "_bn0"), "dw": ("_depthwise_conv", "_bn1"), "project": ("_project_conv", "_bn2")}
IGNORED_SUFFIXES = (".num_batches_tracked",)


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


def key_table(i: int) -> list[tuple]:
    """The full map of EfficientNet-Lite``i``: ``(torch key, torch shape, collection, flax path, layout)`` rows."""
    rows: list[tuple] = []
    in_ch = 3
    for unit in lite_units(i):
        rows.extend(unit_entries(unit, in_ch))
        in_ch = _unit_out_channels(unit, in_ch)
    return rows


def to_flax_layout(array: np.ndarray, layout: str) -> np.ndarray:
    """Torch layout -> Flax: conv ``OIHW -> HWIO``, depthwise ``(C, 1, k, k) -> (k, k, C)``, linear transposed."""
    if layout == "conv":
        return np.transpose(array, (2, 3, 1, 0))
    if layout == "dw":
        return np.transpose(array[:, 0], (1, 2, 0))
    if layout == "linear":
        return np.transpose(array)
    return array


def convert_efficientnet_lite(state_dict: Mapping[str, Any], i: int) -> dict[str, dict]:
    """Reference state dict -> ``{"params": ..., "batch_stats": ...}`` (float32 numpy) of EfficientNet-Lite``i``.

    Raises:
      WeightsError: naming the first missing, unexpected or mis-shaped key.
    """
    variables: dict[str, dict] = {"params": {}, "batch_stats": {}}
    used = set()
    for key, shape, collection, path, layout in key_table(i):
        if key not in state_dict:
            raise WeightsError(
                f"missing key {key} in the EfficientNet-Lite{i} state dict; is this a checkpoint of "
                f"efficientnet_lite_pytorch's efficientnet-lite{i}?"
            )
        array = np.asarray(state_dict[key])
        if tuple(array.shape) != shape:
            raise WeightsError(
                f"key {key} has shape {tuple(array.shape)}, EfficientNet-Lite{i} needs {shape}; "
                f"are these weights for another Lite variant?"
            )
        node = variables[collection]
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = np.ascontiguousarray(to_flax_layout(array, layout), dtype=np.float32)
        used.add(key)
    for key in state_dict:
        if key not in used and not key.endswith(IGNORED_SUFFIXES):
            raise WeightsError(
                f"unexpected key {key} in the EfficientNet-Lite{i} state dict; are these weights for another architecture?"
            )
    return variables
