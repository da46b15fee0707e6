"""torchvision's EfficientNet-B0…B7 in Flax linen, NHWC, eval mode.

Not the TF-ported EfficientNet-Lite of :mod:`chipjax.models.efficientnet`: these are
torchvision's ``efficientnet_b{i}`` — symmetric padding ``(k - 1) // 2``, SiLU,
squeeze-excitation in every MBConv block, BatchNorm ε = 1e-5 — and load torchvision state dicts.

Units: ``"features.0"`` (stem), one unit ``"features.i.j"`` per MBConv block with a skip, and
blocks without one split into their children (``"features.i.j.block.0"`` expansion,
``".block.1"`` depthwise, ``".block.2"`` squeeze-excitation, then ``"features.i.j"`` the linear
projection), so their post-activation tensors are taps; ``"features.8"`` (last conv, SiLU),
``"avgpool"`` ``(B, C)`` and ``"classifier"``. Aliases ``"features.i"`` name the last unit of
stage ``i``. Stochastic depth and dropout are the identity in eval mode.
"""
from __future__ import annotations

import functools
import math

from ..errors import ModelError
from .blocks import ConvNormAct, SqueezeExcitation, make_divisible
from .chain import Sequential, block_units, chain_spec
from .layers import AvgPoolFlatten, dense

#: (expand ratio, kernel, stride, in, out, repeats) of the seven stages, torchvision's ``bneck_conf`` rows.
BASE_STAGES = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
               (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1))
#: variant -> (width mult, depth mult, crop size, resize size) of torchvision's builders and default weights.
B_PARAMS = {
    0: (1.0, 1.0, 224, 256), 1: (1.0, 1.1, 240, 255), 2: (1.1, 1.2, 288, 288), 3: (1.2, 1.4, 300, 320),
    4: (1.4, 1.8, 380, 384), 5: (1.6, 2.2, 456, 456), 6: (1.8, 2.6, 528, 528), 7: (2.0, 3.1, 600, 600),
}


def _classifier(num_classes: int, name: str | None = None):
    """torchvision's ``classifier`` (Dropout, Linear): the Linear is ``"1"``."""
    return Sequential(layers=(("1", functools.partial(dense, num_classes)),), name=name)


def stage_repeats(variant: int) -> tuple[int, ...]:
    """Blocks per stage of B``variant``: ``ceil(repeats * depth_mult)``."""
    depth = B_PARAMS[variant][1]
    return tuple(int(math.ceil(row[5] * depth)) for row in BASE_STAGES)


def efficientnet_b_plan(variant: int, num_classes: int = 1000) -> list:
    """``[(unit name, module factory), ...]`` of torchvision's ``efficientnet_b{variant}()``."""
    width = B_PARAMS[variant][0]
    adjust = lambda c: make_divisible(c * width, 8)  # noqa: E731
    plan = [("features.0", functools.partial(ConvNormAct, adjust(32), 3, 2, activation="silu"))]
    for stage, ((t, k, s, cin, cout, _), n) in enumerate(zip(BASE_STAGES, stage_repeats(variant)), start=1):
        cin, cout = adjust(cin), adjust(cout)
        for j in range(n):
            in_ch, stride = (cin, s) if j == 0 else (cout, 1)
            mid = make_divisible(in_ch * t, 8)
            parts = []
            if mid != in_ch:
                parts.append(functools.partial(ConvNormAct, mid, 1, activation="silu"))
            parts.append(functools.partial(ConvNormAct, mid, k, stride, groups=mid, activation="silu"))
            parts.append(functools.partial(SqueezeExcitation, max(1, in_ch // 4), "silu", "sigmoid"))
            parts.append(functools.partial(ConvNormAct, cout, 1, activation=None))
            named = [(f"block.{i}", make) for i, make in enumerate(parts)]
            plan += block_units(f"features.{stage}.{j}", named, residual=stride == 1 and in_ch == cout)
    last = 4 * adjust(BASE_STAGES[-1][4])
    plan.append(("features.8", functools.partial(ConvNormAct, last, 1, activation="silu")))
    plan.append(("avgpool", functools.partial(AvgPoolFlatten, output_size=(1, 1))))
    plan.append(("classifier", functools.partial(_classifier, num_classes)))
    return plan


def efficientnet_b_spec(variant: int):
    """The :class:`ArchSpec` of torchvision's ``efficientnet_b{variant}`` (crop/resize of its default weights)."""
    if variant not in B_PARAMS:
        raise ModelError(f"no EfficientNet-B{variant}; choose one of {', '.join(map(str, B_PARAMS))}")
    _, _, crop, resize = B_PARAMS[variant]
    aliases = {f"features.{s}": f"features.{s}.{n - 1}" for s, n in enumerate(stage_repeats(variant), start=1)}
    return chain_spec(
        f"efficientnet_b{variant}",
        functools.partial(efficientnet_b_plan, variant),
        aliases=aliases,
        default_layer="features.8",
        # expansions of the first blocks of stages 6 (S/16) and 7 (S/32): post-activation tensors
        stage_layers=("features.6.0.block.0", "features.7.0.block.0", "features.8"),
        input_size=crop,
        resize_size=resize,
    )
