"""RegNet-X and RegNet-Y (torchvision's sizes 400MF … 128GF) in Flax linen, NHWC, eval mode.

Units: ``"stem"`` (3×3/2 conv + BN + ReLU), one unit per residual bottleneck block
``"trunk_output.block{s}.block{s}-{i}"`` (post-ReLU output), ``"avgpool"`` ``(B, C)`` and
``"fc"``; aliases ``"trunk_output.block{s}"`` name the last block of stage ``s``. Stage widths,
depths and group widths are computed as torchvision's ``BlockParams.from_init_params`` does
(in float32, as torch computes them).
"""
from __future__ import annotations

import functools
import math
from typing import Mapping

import flax.linen as nn
import jax
import numpy as np

from ..errors import ModelError
from .blocks import ConvNormAct, SqueezeExcitation, make_divisible
from .chain import chain_spec
from .layers import AvgPoolFlatten, dense

#: name -> (depth, w_0, w_a, w_m, group width, se ratio) of torchvision's builders.
REGNET_CONFIGS: Mapping[str, tuple[int, int, float, float, int, float | None]] = {
    "regnet_y_400mf": (16, 48, 27.89, 2.09, 8, 0.25),
    "regnet_y_800mf": (14, 56, 38.84, 2.4, 16, 0.25),
    "regnet_y_1_6gf": (27, 48, 20.71, 2.65, 24, 0.25),
    "regnet_y_3_2gf": (21, 80, 42.63, 2.66, 24, 0.25),
    "regnet_y_8gf": (17, 192, 76.82, 2.19, 56, 0.25),
    "regnet_y_16gf": (18, 200, 106.23, 2.48, 112, 0.25),
    "regnet_y_32gf": (20, 232, 115.89, 2.53, 232, 0.25),
    "regnet_y_128gf": (27, 456, 160.83, 2.52, 264, 0.25),
    "regnet_x_400mf": (22, 24, 24.48, 2.54, 16, None),
    "regnet_x_800mf": (16, 56, 35.73, 2.28, 16, None),
    "regnet_x_1_6gf": (18, 80, 34.01, 2.25, 24, None),
    "regnet_x_3_2gf": (25, 88, 26.31, 2.25, 48, None),
    "regnet_x_8gf": (23, 80, 49.56, 2.88, 120, None),
    "regnet_x_16gf": (22, 216, 55.59, 2.1, 128, None),
    "regnet_x_32gf": (23, 320, 69.86, 2.0, 168, None),
}
STEM_WIDTH = 32


def stage_params(depth: int, w_0: int, w_a: float, w_m: float, group_width: int) -> list[tuple[int, int, int]]:
    """``[(width, depth, group width), ...]`` per stage, as ``BlockParams.from_init_params`` (bottleneck 1.0)."""
    widths_cont = np.arange(depth, dtype=np.float32) * np.float32(w_a) + np.float32(w_0)
    capacity = np.round(np.log(widths_cont / np.float32(w_0)) / np.float32(math.log(w_m)))
    block_widths = (np.round(np.float32(w_0) * np.power(np.float32(w_m), capacity) / np.float32(8)) * 8).astype(int).tolist()
    splits = [w != wp for w, wp in zip(block_widths + [0], [0] + block_widths)]
    stage_widths = [w for w, t in zip(block_widths, splits[:-1]) if t]
    stage_depths = np.diff([d for d, t in enumerate(splits) if t]).astype(int).tolist()
    stages = []
    for w, d in zip(stage_widths, stage_depths):
        g = min(group_width, w)
        stages.append((make_divisible(w, g), d, g))
    return stages


class ResBottleneckBlock(nn.Module):
    """torchvision ``ResBottleneckBlock``: ``relu(proj(x) + f(x))``, ``f`` = 1×1, grouped 3×3 [+ SE], 1×1."""

    width_out: int
    stride: int
    group_width: int
    se_ratio: float | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width_in = x.shape[-1]
        y = ConvNormAct(self.width_out, 1, name="f.a")(x)
        y = ConvNormAct(self.width_out, 3, self.stride, groups=self.width_out // self.group_width, name="f.b")(y)
        if self.se_ratio:
            y = SqueezeExcitation(int(round(self.se_ratio * width_in)), "relu", "sigmoid", name="f.se")(y)
        y = ConvNormAct(self.width_out, 1, activation=None, name="f.c")(y)
        if width_in != self.width_out or self.stride != 1:
            x = ConvNormAct(self.width_out, 1, self.stride, activation=None, name="proj")(x)
        return nn.relu(x + y)


def regnet_plan(name: str, num_classes: int = 1000) -> list:
    """``[(unit name, module factory), ...]``, input to output, of torchvision's ``name``."""
    depth, w_0, w_a, w_m, group_width, se_ratio = _config(name)
    plan = [("stem", functools.partial(ConvNormAct, STEM_WIDTH, 3, 2))]
    for s, (width, n, g) in enumerate(stage_params(depth, w_0, w_a, w_m, group_width), start=1):
        for i in range(n):
            block = functools.partial(ResBottleneckBlock, width, 2 if i == 0 else 1, g, se_ratio)
            plan.append((f"trunk_output.block{s}.block{s}-{i}", block))
    plan.append(("avgpool", functools.partial(AvgPoolFlatten, output_size=(1, 1))))
    plan.append(("fc", functools.partial(dense, num_classes)))
    return plan


def _config(name: str):
    if name not in REGNET_CONFIGS:
        raise ModelError(f"no RegNet {name!r}; choose one of {', '.join(REGNET_CONFIGS)}")
    return REGNET_CONFIGS[name]


def regnet_spec(name: str):
    """The :class:`ArchSpec` of torchvision's ``name`` (224 px crop, resize 232 as its default weights)."""
    depth, w_0, w_a, w_m, group_width, _ = _config(name)
    stages = stage_params(depth, w_0, w_a, w_m, group_width)
    aliases = {f"trunk_output.block{s}": f"trunk_output.block{s}.block{s}-{n - 1}" for s, (_, n, _) in enumerate(stages, start=1)}
    last = len(stages)
    return chain_spec(
        name,
        functools.partial(regnet_plan, name),
        aliases=aliases,
        default_layer=f"trunk_output.block{last}",
        stage_layers=tuple(f"trunk_output.block{s}" for s in range(last - 2, last + 1)),
        resize_size=232,
    )
