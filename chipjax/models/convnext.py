"""ConvNeXt-Tiny/Small/Base/Large in Flax linen, torchvision layout, NHWC, eval mode.

Units: ``"features.0"`` (4×4/4 conv + LayerNorm), one unit per CNBlock ``"features.{s}.{j}"``
(``s`` = 1, 3, 5, 7), the downsampling layers ``"features.2"``, ``"features.4"``,
``"features.6"`` (LayerNorm + 2×2/2 conv), ``"avgpool"`` ``(B, C)`` and ``"classifier"``
(LayerNorm, Linear). Aliases ``"features.{s}"`` name the last block of each stage. LayerNorm
ε = 1e-6 with the two-pass variance, as torch; GELU is the exact (erf) form. Stochastic depth is
the identity in eval mode.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from ..errors import ModelError
from .blocks import gelu
from .chain import Sequential, chain_spec
from .layers import AvgPoolFlatten, conv2d, dense

#: name -> (stage widths, blocks per stage, resize size of torchvision's weights); crop 224.
CONVNEXT_CONFIGS = {
    "convnext_tiny": ((96, 192, 384, 768), (3, 3, 9, 3), 236),
    "convnext_small": ((96, 192, 384, 768), (3, 3, 27, 3), 230),
    "convnext_base": ((128, 256, 512, 1024), (3, 3, 27, 3), 232),
    "convnext_large": ((192, 384, 768, 1536), (3, 3, 27, 3), 232),
}
LN_EPSILON = 1e-6


def layer_norm(name: str | None = None) -> nn.LayerNorm:
    """``nn.LayerNorm(C, eps=1e-6)`` (also torchvision's ``LayerNorm2d`` on NHWC) over the last axis."""
    return nn.LayerNorm(epsilon=LN_EPSILON, use_fast_variance=False, name=name)


class CNBlock(nn.Module):
    """torchvision ``CNBlock``: ``x + layer_scale · Linear(GELU(Linear(LN(dwconv7(x)))))``, ``(B, H, W, C)`` kept."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dim = x.shape[-1]
        y = conv2d(dim, 7, 1, 3, use_bias=True, groups=dim, name="block.0")(x)
        y = layer_norm(name="block.2")(y)
        y = gelu(dense(4 * dim, name="block.3")(y))
        y = dense(dim, name="block.5")(y)
        scale = self.param("layer_scale", nn.initializers.constant(1e-6), (dim, 1, 1), jnp.float32)
        return x + scale.reshape(dim) * y


def _stem(width: int, name: str | None = None):
    return Sequential(layers=(("0", functools.partial(conv2d, width, 4, 4, 0, True)), ("1", layer_norm)), name=name)


def _downsample(width: int, name: str | None = None):
    return Sequential(layers=(("0", layer_norm), ("1", functools.partial(conv2d, width, 2, 2, 0, True))), name=name)


def _classifier(num_classes: int, name: str | None = None):
    return Sequential(layers=(("0", layer_norm), ("2", functools.partial(dense, num_classes))), name=name)


def convnext_plan(name: str, num_classes: int = 1000) -> list:
    """``[(unit name, module factory), ...]``, input to output, of torchvision's ``name``."""
    widths, depths, _ = _config(name)
    plan = [("features.0", functools.partial(_stem, widths[0]))]
    for s, (width, n) in enumerate(zip(widths, depths)):
        plan += [(f"features.{2 * s + 1}.{j}", CNBlock) for j in range(n)]
        if s + 1 < len(widths):
            plan.append((f"features.{2 * s + 2}", functools.partial(_downsample, widths[s + 1])))
    plan.append(("avgpool", functools.partial(AvgPoolFlatten, output_size=(1, 1))))
    plan.append(("classifier", functools.partial(_classifier, num_classes)))
    return plan


def _config(name: str):
    if name not in CONVNEXT_CONFIGS:
        raise ModelError(f"no ConvNeXt {name!r}; choose one of {', '.join(CONVNEXT_CONFIGS)}")
    return CONVNEXT_CONFIGS[name]


def convnext_spec(name: str):
    """The :class:`ArchSpec` of torchvision's ``name`` (224 px crop, its weights' resize size, ImageNet mean/std)."""
    _, depths, resize = _config(name)
    aliases = {f"features.{2 * s + 1}": f"features.{2 * s + 1}.{n - 1}" for s, n in enumerate(depths)}
    return chain_spec(
        name,
        functools.partial(convnext_plan, name),
        aliases=aliases,
        default_layer="features.7",
        stage_layers=("features.3", "features.5", "features.7"),
        resize_size=resize,
    )
