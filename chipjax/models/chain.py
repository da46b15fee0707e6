"""One generic zoo network: a chain of named units, and its :class:`ArchSpec` with a derived torch key map.

Architecture files (``mobilenet.py``, ``densenet.py``, …) write a *plan*: ``[(unit name,
module factory), ...]``, input to output, with units and their submodules named as
torchvision names its modules. :class:`UnitChain` runs a plan (``__call__(x, start,
stop)`` as :mod:`chipjax.models.base` requires); :func:`chain_spec` wraps it into an
:class:`ArchSpec` whose ``convert`` uses the key table that
:func:`chipjax.models.keymap.torch_key_table` derives from the module names, so a
missing, extra or mis-shaped torch key is named in the error.
"""
from __future__ import annotations

import functools
from typing import Callable, Mapping, Sequence

import flax.linen as nn
import jax

from .base import ArchSpec
from .keymap import with_torch_keys
from .layers import channelwise_units
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, mean_std_normalize, resize_crop_view

Plan = Sequence[tuple[str, Callable[[], nn.Module]]]


class UnitChain(nn.Module):
    """Runs ``plan()``'s units in order: ``(B, S, S, 3) -> (B, num_classes)``; ``__call__(x, start, stop)`` runs ``units[start:stop]``."""

    plan: Callable[[], Plan]

    def setup(self):
        self.units = [make() for _, make in self.plan()]

    def __call__(self, x: jax.Array, start: int = 0, stop: int | None = None) -> jax.Array:
        for unit in self.units[start:stop]:
            x = unit(x)
        return x


class Sequential(nn.Module):
    """``nn.Sequential`` with torch's child names: ``layers = ((name, factory), ...)`` run in order.

    With ``residual`` the input is added to the result (an inverted-residual block).
    """

    layers: tuple[tuple[str, Callable[..., nn.Module]], ...]
    residual: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = x
        for name, make in self.layers:
            y = make(name=name)(y)
        return x + y if self.residual else y


def block_units(base: str, parts: Sequence[tuple[str, Callable[..., nn.Module]]], residual: bool, last: int = 1) -> list:
    """Units of one torchvision block ``base`` whose children ``parts`` run in sequence.

    A residual block is one unit ``base`` (its parts see the skip). A block without a skip is
    split so the post-activation tensors inside it are taps: every part but the last ``last``
    is its own unit ``"{base}.{part}"``, and the last ``last`` parts form the unit ``base``.
    """
    if residual:
        return [(base, functools.partial(Sequential, layers=tuple(parts), residual=True))]
    head, tail = list(parts[: len(parts) - last]), tuple(parts[len(parts) - last :])
    units = [(f"{base}.{name}", make) for name, make in head]
    return units + [(base, functools.partial(Sequential, layers=tail))]


def chain_spec(
    name: str,
    plan: Callable[[], Plan],
    *,
    aliases: Mapping[str, str],
    default_layer: str,
    stage_layers: tuple[str, ...],
    input_size: int = 224,
    resize_size: int = 256,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    unit_prefix: Mapping[str, str] | None = None,
    ignored_prefixes: tuple[str, ...] = (),
    min_size: int = 1,
) -> ArchSpec:
    """The :class:`ArchSpec` of a torchvision classifier written as a plan.

    Args:
      name: registry name (torchvision's builder name, e.g. ``"mobilenet_v2"``).
      plan: ``() -> [(unit name, module factory), ...]``, input to output.
      aliases: extra tap names, e.g. ``{"features.denseblock4": ...}``.
      default_layer, stage_layers: see :class:`ArchSpec`.
      input_size, resize_size: torchvision's ``crop_size`` and ``resize_size`` for the weights.
      mean, std: normalisation the weights expect.
      unit_prefix: torch prefix of a unit where it is not the unit's name.
      ignored_prefixes: checkpoint keys the model does not use and may be present (e.g. aux heads).
      min_size: smallest input side the network runs on.
    """
    units = tuple(unit for unit, _ in plan())
    spec = ArchSpec(
        name=name,
        make_module=functools.partial(UnitChain, plan=plan),
        units=units,
        aliases=dict(aliases),
        input_size=input_size,
        view=resize_crop_view(input_size, resize_size),
        normalize=mean_std_normalize(mean, std),
        pretrained=None,
        default_layer=default_layer,
        stage_layers=tuple(stage_layers),
        min_size=min_size,
        channelwise_units=channelwise_units(plan()),
    )
    return with_torch_keys(spec, unit_prefix, tuple(ignored_prefixes))
