"""Torch state dicts <-> Flax variables, driven by one key table per architecture: the one scheme of the zoo.

Every family's table is a ``{torch key: KeyEntry}`` mapping (:class:`KeyEntry`: the Flax path, the
layout and the torch shape); :func:`convert_state_dict` reads a state dict with it and
:func:`export_state_dict` writes one (the exact inverse: torch's key names, layouts and shapes).
This is architecture knowledge, so it lives with the models; :mod:`chipjax.io` only reads bytes.

torchvision families (:func:`with_torch_keys`; EfficientNet-Lite's table is written out in
:mod:`chipjax.models.efficientnet`):

A zoo model names its Flax submodules like torch names its modules, so the table is
derived, not written by hand: the variable ``params/units_<i>/<inner...>/<leaf>`` of
unit ``i`` (named e.g. ``"layer1.0"``) is the torch key ``"<unit>.<inner...>.<torch leaf>"``
with leaves renamed ``kernel``/``scale`` -> ``weight``, ``bias`` -> ``bias``,
``batch_stats/mean`` -> ``running_mean`` and ``batch_stats/var`` -> ``running_var``.
A per-architecture ``unit_prefix`` overrides the torch prefix of a unit (ResNet's stem
unit ``"relu"`` holds the top-level ``conv1``/``bn1``).

Layouts: conv weights OIHW -> HWIO, depthwise ``(C, 1, k, k)`` -> ``(k, k, C)``, linear weights
``(out, in)`` -> ``(in, out)``, vectors as they are. ``num_batches_tracked`` entries are ignored; every other missing, extra or
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
from .variables import variable_shapes

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
      layout: ``"conv"`` (torch OIHW -> HWIO), ``"dw"`` (depthwise ``(C, 1, k, k) -> (k, k, C)``),
        ``"linear"`` (``(out, in) -> (in, out)``) or ``"same"``.
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
    """Torch layout -> Flax layout (see :class:`KeyEntry`)."""
    if layout == "conv":
        return np.transpose(array, (2, 3, 1, 0))
    if layout == "dw":
        return np.transpose(array[:, 0], (1, 2, 0))
    if layout == "linear":
        return array.T
    return array


def _to_torch(array: np.ndarray, layout: str) -> np.ndarray:
    """Flax layout -> torch layout: the inverse of :func:`_to_flax`."""
    if layout == "conv":
        return np.transpose(array, (3, 2, 0, 1))
    if layout == "dw":
        return np.transpose(array, (2, 0, 1))[:, None]
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


def export_state_dict(variables: Mapping[str, Any], table: Mapping[str, KeyEntry]) -> dict[str, np.ndarray]:
    """Flax variables -> a torch-style state dict ``{torch key: float32 ndarray}`` in torch's layouts and shapes.

    The exact inverse of :func:`convert_state_dict` with the same ``table``: what ``load_state_dict``
    of the reference torch model takes (``num_batches_tracked`` buffers are not written; pass
    ``strict=False`` or add them). Raises :class:`WeightsError` naming a variable the table needs and
    ``variables`` lacks.
    """
    flat = flatten_dict(dict(variables))
    out: dict[str, np.ndarray] = {}
    for key, entry in table.items():
        if entry.path not in flat:
            raise WeightsError(f"the variables lack {'/'.join(entry.path)}, which torch key {key!r} needs; are they "
                               f"the variables of this architecture?")
        array = np.array(_to_torch(np.asarray(flat[entry.path], np.float32), entry.layout), order="C")  # writable
        if array.shape != entry.torch_shape:
            raise WeightsError(f"variable {'/'.join(entry.path)} gives shape {array.shape} for torch key {key!r}, "
                               f"which needs {entry.torch_shape}")
        out[key] = array
    return out


def with_torch_keys(spec, unit_prefix: Mapping[str, str] | None = None, ignored_prefixes: tuple[str, ...] = ()):
    """``spec`` (an :class:`~chipjax.models.base.ArchSpec`) with its ``key_table`` derived from its module
    names (:func:`torch_key_table`, computed once, on first use) and a ``convert`` that reads with it;
    checkpoint keys under ``ignored_prefixes`` (e.g. an auxiliary head) are dropped before reading."""
    table = functools.cache(lambda: torch_key_table(spec, unit_prefix))
    convert = functools.partial(_convert_kept, table=table, arch=spec.name, ignored_prefixes=tuple(ignored_prefixes))
    return dataclasses.replace(spec, key_table=table, convert=convert)


def _convert_kept(state_dict: Mapping[str, Any], table, arch: str, ignored_prefixes: tuple[str, ...]) -> dict:
    kept = {k: v for k, v in state_dict.items() if not str(k).startswith(ignored_prefixes)} if ignored_prefixes \
        else state_dict
    return convert_state_dict(kept, table(), arch)
