"""torchvision state dicts -> Flax variables, driven by one key table per architecture.

A zoo model names its Flax submodules like torch names its modules, so the table is
derived, not written by hand: the variable ``params/units_<i>/<inner...>/<leaf>`` of
unit ``i`` (named e.g. ``"layer1.0"``) is the torch key ``"<unit>.<inner...>.<torch leaf>"``
with leaves renamed ``kernel``/``scale`` -> ``weight``, ``bias`` -> ``bias``,
``batch_stats/mean`` -> ``running_mean`` and ``batch_stats/var`` -> ``running_var``.
A per-architecture ``unit_prefix`` overrides the torch prefix of a unit (ResNet's stem
unit ``"relu"`` holds the top-level ``conv1``/``bn1``).

Layouts: conv weights OIHW -> HWIO, linear weights ``(out, in)`` -> ``(in, out)``, vectors
as they are. ``num_batches_tracked`` entries are ignored; every other missing, extra or
mis-shaped key raises :class:`~chipjax.errors.WeightsError` naming it.
"""
from __future__ import annotations

import dataclasses
import functools
import types
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from ..errors import WeightsError

#: (collection, Flax leaf name) -> torch parameter/buffer name.
TORCH_LEAF_NAMES: Mapping[tuple[str, str], str] = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
    ("params", "layer_scale"): "layer_scale",  # ConvNeXt's CNBlock parameter, (C, 1, 1) as in torch
}
IGNORED_SUFFIXES = ("num_batches_tracked",)


@dataclasses.dataclass(frozen=True)
class KeyEntry:
    """Where one torch tensor goes.

    Attributes:
      path: Flax variable path, e.g. ``("params", "units_2", "conv1", "kernel")``.
      layout: ``"conv"`` (torch OIHW -> HWIO), ``"linear"`` (``(out, in) -> (in, out)``) or ``"same"``.
      torch_shape: the shape the torch tensor must have.
    """

    path: tuple[str, ...]
    layout: str
    torch_shape: tuple[int, ...]


def _layout(leaf: str, ndim: int) -> str:
    if leaf == "kernel" and ndim == 4:
        return "conv"
    if leaf == "kernel" and ndim == 2:
        return "linear"
    return "same"


def _torch_shape(flax_shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    if layout == "conv":
        kh, kw, cin, cout = flax_shape
        return (cout, cin, kh, kw)
    if layout == "linear":
        return tuple(reversed(flax_shape))
    return tuple(flax_shape)


def _to_flax(array: np.ndarray, layout: str) -> np.ndarray:
    if layout == "conv":
        return np.transpose(array, (2, 3, 1, 0))
    if layout == "linear":
        return array.T
    return array


def _unit_index(unit_attr: str) -> int:
    return int(unit_attr.removeprefix("units_"))


def torch_key_table(spec, unit_prefix: Mapping[str, str] | None = None) -> Mapping[str, KeyEntry]:
    """``{torch key: KeyEntry}`` for every variable of the zoo architecture ``spec``.

    Args:
      spec: an :class:`~chipjax.models.base.ArchSpec` whose module keeps its units in
        ``self.units`` (Flax names them ``units_<i>``) and names inner submodules as torch does.
      unit_prefix: torch prefix of a unit where it is not the unit's name (``""`` for none).
    """
    from ..models import variable_shapes

    unit_prefix = dict(unit_prefix or {})
    table: dict[str, KeyEntry] = {}
    flat = flatten_dict(dict(variable_shapes(spec)))
    for path, struct in sorted(flat.items(), key=lambda item: _unit_index(item[0][1])):  # input to output
        shape = tuple(struct.shape)
        collection, unit_attr, *inner, leaf = path
        unit = spec.units[_unit_index(unit_attr)]
        prefix = unit_prefix.get(unit, unit)
        key = ".".join(p for p in (prefix, *inner, TORCH_LEAF_NAMES[(collection, leaf)]) if p)
        layout = _layout(leaf, len(shape))
        if key in table:
            raise AssertionError(f"two variables of {spec.name} map to torch key {key!r}")
        table[key] = KeyEntry(path=tuple(path), layout=layout, torch_shape=_torch_shape(shape, layout))
    return types.MappingProxyType(table)


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _prefix_hint(present: set[str], missing: list[str]) -> str:
    for wrapper in ("module.", "model.", "backbone."):
        if all(wrapper + k in present for k in missing):
            return f"its keys start with {wrapper!r}: strip that prefix from every key (e.g. a DataParallel or wrapper checkpoint)"
    return "is it a checkpoint of another architecture? Load it with the model name it was saved from"


def convert_state_dict(state_dict: Mapping[str, Any], table: Mapping[str, KeyEntry], arch: str) -> dict:
    """Torch-style ``{key: array}`` -> Flax variables ``{"params": ..., "batch_stats": ...}`` (float32).

    Args:
      state_dict: torch key -> array (numpy arrays; CPU torch tensors also work).
      table: from :func:`torch_key_table`.
      arch: model name for messages.

    Raises:
      WeightsError: naming any missing, extra or mis-shaped key (``num_batches_tracked`` is ignored).
    """
    present = {k: v for k, v in state_dict.items() if not str(k).endswith(IGNORED_SUFFIXES)}
    missing = [k for k in table if k not in present]
    if missing:
        raise WeightsError(
            f"{arch}: the checkpoint lacks {len(missing)} key(s) the model needs: {_listing(missing)}; "
            f"{_prefix_hint(set(present), missing)}"
        )
    extra = [k for k in present if k not in table]
    if extra:
        raise WeightsError(
            f"{arch}: the checkpoint has {len(extra)} key(s) {arch} does not use: {_listing(extra)}; "
            f"is it a checkpoint of another architecture (or of a modified model)? Load it with the matching model name"
        )
    flat: dict[tuple[str, ...], jax.Array] = {}
    for key, entry in table.items():
        try:
            array = np.asarray(present[key], dtype=np.float32)
        except (TypeError, ValueError, RuntimeError) as e:
            raise WeightsError(f"{arch}: key {key!r} is not a numeric array ({e}); the checkpoint is damaged or not a state dict") from None
        if array.shape != entry.torch_shape:
            raise WeightsError(
                f"{arch}: key {key!r} has shape {array.shape}, {arch} needs {entry.torch_shape}; "
                f"is it a checkpoint of another architecture or another number of classes? Load it with the matching model"
            )
        flat[entry.path] = jnp.asarray(_to_flax(array, entry.layout))
    return unflatten_dict(flat)


@functools.lru_cache(maxsize=None)
def resnet_key_table(depth: int) -> Mapping[str, KeyEntry]:
    """Key table of torchvision's ``resnet{depth}`` (the stem unit ``"relu"`` holds ``conv1``/``bn1``)."""
    from ..models.resnet import resnet_spec

    return torch_key_table(resnet_spec(depth), unit_prefix={"relu": ""})


@functools.lru_cache(maxsize=None)
def vgg_key_table(depth: int, batch_norm: bool) -> Mapping[str, KeyEntry]:
    """Key table of torchvision's ``vgg{depth}`` / ``vgg{depth}_bn``."""
    from ..models.vgg import vgg_spec

    return torch_key_table(vgg_spec(depth, batch_norm))


def convert_resnet(state_dict: Mapping[str, Any], depth: int) -> dict:
    """torchvision ``resnet{depth}().state_dict()`` (as arrays) -> Flax variables of :class:`~chipjax.models.resnet.ResNet`."""
    return convert_state_dict(state_dict, resnet_key_table(depth), f"resnet{depth}")


def convert_vgg(state_dict: Mapping[str, Any], depth: int, batch_norm: bool = False) -> dict:
    """torchvision ``vgg{depth}[_bn]().state_dict()`` (as arrays) -> Flax variables of :class:`~chipjax.models.vgg.VGG`."""
    name = f"vgg{depth}_bn" if batch_norm else f"vgg{depth}"
    return convert_state_dict(state_dict, vgg_key_table(depth, batch_norm), name)
