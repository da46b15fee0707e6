"""MobileNet-V2 and MobileNet-V3 (Large, Small) in Flax linen, torchvision layout, NHWC, eval mode.

Units are torchvision's modules: ``"features.0"`` (stem), one unit ``"features.i"`` per
inverted-residual block with a skip, and blocks without a skip split into their children so
the post-activation tensors inside them are taps (V2: ``"features.i.conv.0"`` expansion,
``"features.i.conv.1"`` depthwise, then ``"features.i"`` the linear projection; V3 likewise
``"features.i.block.k"``, the squeeze-excitation output included). Then the last conv
(``"features.18"`` / ``"features.16"`` / ``"features.12"``), ``"avgpool"`` ``(B, C)`` and
``"classifier"``. Torch keys follow from the names (:mod:`chipjax.models.chain`).

V3 uses BatchNorm ε = 1e-3 as torchvision does; V2 the default 1e-5.
"""
from __future__ import annotations

import functools

from .blocks import ConvNormAct, SqueezeExcitation, make_divisible
from .chain import block_units, chain_spec
from .layers import AvgPoolFlatten, BatchNorm, conv2d, dense

#: (expand ratio t, out channels c, repeats n, first stride s) of torchvision's MobileNetV2.
V2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

# (in, kernel, expanded, out, squeeze-excitation, activation, stride) of torchvision's V3 configs.
V3_LARGE = (
    (16, 3, 16, 16, False, "relu", 1), (16, 3, 64, 24, False, "relu", 2), (24, 3, 72, 24, False, "relu", 1),
    (24, 5, 72, 40, True, "relu", 2), (40, 5, 120, 40, True, "relu", 1), (40, 5, 120, 40, True, "relu", 1),
    (40, 3, 240, 80, False, "hardswish", 2), (80, 3, 200, 80, False, "hardswish", 1),
    (80, 3, 184, 80, False, "hardswish", 1), (80, 3, 184, 80, False, "hardswish", 1),
    (80, 3, 480, 112, True, "hardswish", 1), (112, 3, 672, 112, True, "hardswish", 1),
    (112, 5, 672, 160, True, "hardswish", 2), (160, 5, 960, 160, True, "hardswish", 1),
    (160, 5, 960, 160, True, "hardswish", 1),
)
V3_SMALL = (
    (16, 3, 16, 16, True, "relu", 2), (16, 3, 72, 24, False, "relu", 2), (24, 3, 88, 24, False, "relu", 1),
    (24, 5, 96, 40, True, "hardswish", 2), (40, 5, 240, 40, True, "hardswish", 1),
    (40, 5, 240, 40, True, "hardswish", 1), (40, 5, 120, 48, True, "hardswish", 1),
    (48, 5, 144, 48, True, "hardswish", 1), (48, 5, 288, 96, True, "hardswish", 2),
    (96, 5, 576, 96, True, "hardswish", 1), (96, 5, 576, 96, True, "hardswish", 1),
)
V3_CONFIGS = {"large": (V3_LARGE, 1280), "small": (V3_SMALL, 1024)}
V3_BN_EPSILON = 1e-3


def _classifier_v2(num_classes: int, name: str | None = None):
    """torchvision's V2 ``classifier`` (Dropout, Linear): the Linear is ``"1"``."""
    from .chain import Sequential

    return Sequential(layers=(("1", functools.partial(dense, num_classes)),), name=name)


def mobilenet_v2_plan(num_classes: int = 1000) -> list:
    """``[(unit name, module factory), ...]`` of torchvision's ``mobilenet_v2()`` (width 1.0)."""
    plan = [("features.0", functools.partial(ConvNormAct, 32, 3, 2, activation="relu6"))]
    in_ch, index = 32, 1
    for t, c, n, s in V2_SETTING:
        out = make_divisible(c, 8)
        for i in range(n):
            stride = s if i == 0 else 1
            mid = in_ch * t
            parts = []
            if t != 1:
                parts.append(("expand", functools.partial(ConvNormAct, mid, 1, activation="relu6")))
            parts.append(("dw", functools.partial(ConvNormAct, mid, 3, stride, groups=mid, activation="relu6")))
            parts = [(f"conv.{k}", make) for k, (_, make) in enumerate(parts)]
            k = len(parts)
            parts.append((f"conv.{k}", functools.partial(conv2d, out, 1, use_bias=False)))
            parts.append((f"conv.{k + 1}", BatchNorm))
            plan += block_units(f"features.{index}", parts, residual=stride == 1 and in_ch == out, last=2)
            in_ch, index = out, index + 1
    plan.append((f"features.{index}", functools.partial(ConvNormAct, 1280, 1, activation="relu6")))
    plan.append(("avgpool", functools.partial(AvgPoolFlatten, output_size=(1, 1))))
    plan.append(("classifier", functools.partial(_classifier_v2, num_classes)))
    return plan


def _classifier_v3(hidden: int, num_classes: int, name: str | None = None):
    """torchvision's V3 ``classifier``: Linear ``"0"``, Hardswish, Dropout, Linear ``"3"``."""
    from .blocks import Activation
    from .chain import Sequential

    return Sequential(
        layers=(
            ("0", functools.partial(dense, hidden)),
            ("1", functools.partial(Activation, "hardswish")),
            ("3", functools.partial(dense, num_classes)),
        ),
        name=name,
    )


def mobilenet_v3_plan(size: str = "large", num_classes: int = 1000) -> list:
    """``[(unit name, module factory), ...]`` of torchvision's ``mobilenet_v3_{size}()``."""
    setting, last_channel = V3_CONFIGS[size]
    cna = functools.partial(ConvNormAct, bn_epsilon=V3_BN_EPSILON)
    plan = [("features.0", functools.partial(cna, setting[0][0], 3, 2, activation="hardswish"))]
    for index, (cin, k, mid, out, se, act, stride) in enumerate(setting, start=1):
        parts = []
        if mid != cin:
            parts.append(functools.partial(cna, mid, 1, activation=act))
        parts.append(functools.partial(cna, mid, k, stride, groups=mid, activation=act))
        if se:
            parts.append(functools.partial(SqueezeExcitation, make_divisible(mid // 4, 8), "relu", "hardsigmoid"))
        parts.append(functools.partial(cna, out, 1, activation=None))
        named = [(f"block.{j}", make) for j, make in enumerate(parts)]
        plan += block_units(f"features.{index}", named, residual=stride == 1 and cin == out)
    last_conv = 6 * setting[-1][3]
    plan.append((f"features.{len(setting) + 1}", functools.partial(cna, last_conv, 1, activation="hardswish")))
    plan.append(("avgpool", functools.partial(AvgPoolFlatten, output_size=(1, 1))))
    plan.append(("classifier", functools.partial(_classifier_v3, last_channel, num_classes)))
    return plan


def mobilenet_v2_spec():
    """The :class:`ArchSpec` of torchvision's ``mobilenet_v2`` (224 px, resize 256, ImageNet mean/std)."""
    return chain_spec(
        "mobilenet_v2",
        mobilenet_v2_plan,
        aliases={},
        default_layer="features.18",
        stage_layers=("features.14.conv.0", "features.17.conv.0", "features.18"),
    )


def mobilenet_v3_spec(size: str = "large"):
    """The :class:`ArchSpec` of torchvision's ``mobilenet_v3_{size}`` (224 px, resize 256, ImageNet mean/std)."""
    setting, _ = V3_CONFIGS[size]
    last = f"features.{len(setting) + 1}"
    s = [i for i, row in enumerate(setting, start=1) if row[6] == 2][-1]  # first block of the last stage
    # its expansion (S/16) and its depthwise or squeeze-excitation output (S/32): post-activation tensors
    stages = (f"features.{s}.block.0", f"features.{s}.block.{2 if setting[s - 1][4] else 1}", last)
    return chain_spec(
        f"mobilenet_v3_{size}",
        functools.partial(mobilenet_v3_plan, size),
        aliases={},
        default_layer=last,
        stage_layers=stages,
    )
