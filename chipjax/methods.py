"""``cj.explain``: one entry point for CHIP, Refined CHIP and the CAM-family baselines."""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .errors import InputError
from .tap import Tap

METHODS = ("chip", "refined-chip", "cam", "gradcam", "gradcam++", "scorecam", "ablationcam", "rise")


def resolve_targets(target, logits: jax.Array, labels: Sequence[str] | None = None) -> jax.Array:
    """Class per image: ``None`` -> top-1 of ``logits (B, C)``; an int, a class name, or a sequence of them (B,).

    Raises :class:`InputError` for an index outside ``[0, C)`` or an unknown class name.
    """
    batch, num_classes = logits.shape
    if target is None:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    items = list(target) if isinstance(target, (list, tuple, np.ndarray, jax.Array)) else [target]
    if len(items) == 1:
        items = items * batch
    if len(items) != batch:
        raise InputError(f"got {len(items)} targets for a batch of {batch} images; give one per image or one for all")
    out = []
    for t in items:
        if isinstance(t, str):
            out.append(class_index(t, labels))
            continue
        t = int(t)
        if not 0 <= t < num_classes:
            raise InputError(f"class index {t} is out of range: the model has classes 0..{num_classes - 1}")
        out.append(t)
    return jnp.asarray(out, jnp.int32)


def class_index(name: str, labels: Sequence[str] | None) -> int:
    """Index of a class by name (case-insensitive), or :class:`InputError` with close matches."""
    if name.strip().isdigit():
        return int(name)
    if labels is None:
        raise InputError(f"class {name!r} given by name, but this model has no class names; give an index")
    lowered = [l.lower() for l in labels]
    if name.lower() in lowered:
        return lowered.index(name.lower())
    import difflib

    close = difflib.get_close_matches(name.lower(), lowered, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(labels[lowered.index(c)]) for c in close)}?" if close else ""
    raise InputError(f"class name {name!r} not found among the {len(labels)} classes{hint}")


def explain(model, x: jax.Array, method: str = "chip", layer: str | Sequence[str] | None = None, target=None,
            **options: Any) -> jax.Array:
    """Heat maps of ``x (B, S, S, 3)`` for ``target`` at ``layer`` by ``method``.

    Args:
      model: a zoo :class:`~chipjax.models.base.Model`, or a :class:`~chipjax.tap.Tap`
        (e.g. from :func:`chipjax.tap_module` for your own Flax module).
      x: preprocessed images ``(B, S, S, 3)``.
      method: one of ``chip``, ``refined-chip``, ``cam``, ``gradcam``, ``gradcam++``,
        ``scorecam``, ``ablationcam``, ``rise``.
      layer: tap name (default: the model's last conv stage); for ``refined-chip`` a list
        of tap names (default: the model's last three stages).
      target: ``None`` (top-1 per image), a class index or name, or one per image.
      options: method options, e.g. ``num_masks``, ``keep_prob``, ``lam_ratio``, ``seed``,
        ``chunk_size``, ``score``, ``nonneg`` for CHIP; ``chip_model`` (a fitted
        :class:`~chipjax.chip.CHIP`) explains with class-level weights.
    Returns:
      ``(B, S, S)`` float32 maps in [0, 1].
    """
    from .models.base import check_images

    x = check_images(x)
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    labels = getattr(model, "labels", None)
    if method == "refined-chip":
        return _refined(model, x, layer, target, labels, **options)
    tap = _tap_of(model, layer)
    features = tap.head(x)
    logits = tap.tail(features)
    targets = resolve_targets(target, logits, labels)
    chip_model = options.pop("chip_model", None)
    if method == "chip" and chip_model is not None:
        return chip_model.explain(model, x, targets)
    return method_fn(method)(tap, x, targets, features=features, **options)


def method_fn(method: str):
    """The map function ``(tap, x, targets, *, features, **options) -> (B, S, S)`` of ``method``."""
    from . import chip

    if method == "chip":
        return chip.chip_maps
    from . import cams

    return cams.METHODS[method]


def _tap_of(model, layer) -> Tap:
    if isinstance(model, Tap):
        if layer not in (None, model.layer):
            raise InputError(f"this tap is at {model.layer}; tap the model at {layer} instead")
        return model
    if isinstance(layer, (list, tuple)):
        raise InputError(f"method takes one layer, got {layer}; use method='refined-chip' for several")
    return model.tap(layer)


def _refined(model, x, layers, target, labels, fusion: str = "geometric", **options):
    from . import chip

    if isinstance(model, Tap):
        raise InputError("refined-chip needs several layers: pass the model, not a single tap")
    layers = list(model.spec.stage_layers) if layers is None else ([layers] if isinstance(layers, str) else list(layers))
    taps = [model.tap(l) for l in layers]
    first = taps[-1].head(x)
    targets = resolve_targets(target, taps[-1].tail(first), labels)
    maps = [chip.chip_maps(t, x, targets, **options) for t in taps]
    return chip.fuse_maps(maps, fusion)
