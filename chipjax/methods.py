"""``cj.explain``: one entry point for CHIP, Refined CHIP and the CAM-family baselines."""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .errors import InputError
from .options import RefinedChipOptions, for_method, option_names
from .shapes import ImagesIn, Logits, Maps, Targets
from .tap import Tap

METHODS = ("chip", "refined-chip", "cam", "gradcam", "gradcam++", "scorecam", "ablationcam", "rise")


def resolve_targets(target, logits: Logits, labels: Sequence[str] | None = None) -> Targets:
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
            t = class_index(t, labels)
        else:
            t = _class_number(t)
        if not 0 <= t < num_classes:
            raise InputError(f"class index {t} is out of range: the model has classes 0..{num_classes - 1}")
        out.append(t)
    return jnp.asarray(out, jnp.int32)


def _class_number(t) -> int:
    """An integral class index (int, numpy/jax integer, or a float with no fraction) as int."""
    if isinstance(t, (bool, np.bool_)):
        raise InputError(f"class {t!r} is a bool; give a class index (int) or a class name")
    try:
        value = float(t)
    except (TypeError, ValueError):
        raise InputError(f"class {t!r} is neither an index nor a class name") from None
    if not value.is_integer():
        raise InputError(f"class index must be a whole number, got {t!r}")
    return int(value)


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


class Explanation(NamedTuple):
    """What one :func:`explain_details` call computed.

    Attributes:
      maps: ``(B, S, S)`` in [0, 1].
      logits: ``(B, C)`` of the unperturbed network (computed once, from the tap's features).
      targets: ``(B,)`` int32, the classes explained.
    """

    maps: jax.Array
    logits: jax.Array
    targets: jax.Array


def explain(model, x: ImagesIn, method: str = "chip", layer: str | Sequence[str] | None = None, target=None,
            **options: Any) -> Maps:
    """Heat maps of ``x (B, S, S, 3)`` for ``target`` at ``layer`` by ``method``.

    Args:
      model: a zoo :class:`~chipjax.models.base.Model`, or a :class:`~chipjax.tap.Tap`
        (e.g. from :func:`chipjax.tap_module` for your own Flax module); for ``refined-chip`` on
        your own network, a list of its taps (shallow to deep).
      x: preprocessed images ``(B, S, S, 3)``.
      method: one of ``chip``, ``refined-chip``, ``cam``, ``gradcam``, ``gradcam++``,
        ``scorecam``, ``ablationcam``, ``rise``.
      layer: tap name (default: the model's last conv stage); for ``refined-chip`` a list
        of tap names (default: the model's last three stages).
      target: ``None`` (top-1 per image), a class index or name, or one per image.
      options: method options, the fields of the method's options object in
        :data:`chipjax.options.METHOD_OPTIONS` (defaults, ranges and docs there), e.g. ``num_masks``,
        ``keep_prob``, ``lam_ratio``, ``seed``, ``chunk_size``, ``score``, ``nonneg`` for CHIP;
        ``chip_model`` (a fitted :class:`~chipjax.chip.CHIP`) explains with class-level weights.
        :func:`method_options` lists a method's options; they are checked once, before anything
        runs, and an unknown or out-of-range one raises :class:`InputError`.
    Returns:
      ``(B, S, S)`` float32 maps in [0, 1].

    Determinism: the random methods (``chip``, ``refined-chip``, ``rise``) draw mask ``i`` from
    ``fold_in(PRNGKey(seed), i)``, so the same seed, inputs and options give bit-identical maps
    on every run of the same program on the same device; different seeds draw different masks
    and give different maps. ``chunk_size`` (memory per step) never changes which masks are
    drawn, only the order of the float32 sums: the statistics agree to float32 rounding, and
    the lasso passes that on, amplified by its conditioning, to W and the maps (ResNet-18 at
    layer4, K = 512: with 2048 masks maps agree within 3e-5 on [0, 1] and class-level W within
    1e-5 relative), not bit for bit. With about as many masks as channels or fewer, the lasso is
    ill-conditioned and W may differ much more between chunk sizes (its objective still agrees);
    use ``num_masks`` of several K for reproducible weights.
    """
    return explain_details(model, x, method, layer, target, **options).maps


def explain_details(model, x: ImagesIn, method: str = "chip", layer: str | Sequence[str] | None = None, target=None,
                    **options: Any) -> Explanation:
    """:func:`explain`, also returning the unperturbed logits and the targets (:class:`Explanation`).

    One forward pass: the head runs once (the deepest tap for ``refined-chip``), the unperturbed
    tail once (logits, targets), and the method reuses those features.
    """
    from .models.base import check_images

    x = check_images(x)
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    chip_model = options.pop("chip_model", None) if method == "chip" else None
    if chip_model is not None and options:
        raise InputError(f"option {', '.join(sorted(options))} cannot be used with a fitted chip_model (its weights "
                         f"are fixed); drop it, or drop chip_model to fit image-level CHIP")
    checked = for_method(method, **options)  # the one check of this call's options
    labels = getattr(model, "labels", None)
    if method == "refined-chip":
        return _refined(model, x, layer, target, labels, checked)
    if chip_model is not None:
        layer = _check_chip_model(chip_model, model, layer)
    tap = _tap_of(model, layer)
    features = tap.head(x)
    logits = tap.tail(features)
    targets = resolve_targets(target, logits, labels)
    if chip_model is not None:
        return Explanation(chip_model.explain_features(features, targets, x.shape[1:3]), logits, targets)
    return Explanation(_maps_with(method)(tap, x, targets, checked, features), logits, targets)


def method_options(method: str) -> tuple[str, ...]:
    """Names of the options ``method`` takes (keyword arguments of :func:`explain`)."""
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return option_names(method) + (("chip_model",) if method == "chip" else ())


def _check_chip_model(chip_model, model, layer) -> str:
    """The layer a class-level CHIP model explains at; refuse one fitted on another model or layer."""
    if isinstance(model, Tap):
        raise InputError("a class-level CHIP model explains a zoo model: pass the model, not a tap")
    chip_model.check_compatible(model)
    if layer is not None and layer != chip_model.layer:
        raise InputError(f"this CHIP model was fitted at layer {chip_model.layer}, not {layer}; "
                         f"leave layer unset or fit a CHIP model at {layer}")
    return chip_model.layer


def method_fn(method: str):
    """The public map function ``(tap, x, targets, *, features=None, **options) -> (B, S, S)`` of ``method``."""
    from . import cams, chip

    return chip.chip_maps if method == "chip" else cams.MAP_FUNCTIONS[method]


def _maps_with(method: str):
    """The map function ``(tap, x, targets, checked_options, features) -> (B, S, S)`` of ``method``."""
    from . import cams, chip

    return chip.chip_maps_with if method == "chip" else cams.MAPS_WITH_OPTIONS[method]


def _tap_of(model, layer) -> Tap:
    if isinstance(model, Tap):
        if layer not in (None, model.layer):
            raise InputError(f"this tap is at {model.layer}; tap the model at {layer} instead")
        return model
    if isinstance(layer, (list, tuple)):
        raise InputError(f"method takes one layer, got {layer}; use method='refined-chip' for several")
    return model.tap(layer)


def _refined(model, x, layers, target, labels, options: RefinedChipOptions):
    from . import chip

    if isinstance(model, Tap):
        raise InputError("refined-chip needs several layers: pass the model, or a list of taps of your network "
                         "(e.g. [cj.tap_module(net, 'block2', x), cj.tap_module(net, 'block3', x)]), not a single tap")
    if isinstance(model, (list, tuple)):  # taps of one user network, shallow to deep
        if not model or not all(isinstance(t, Tap) for t in model) or layers is not None:
            raise InputError("refined-chip on your own network takes a list of its taps (cj.tap_module), one per "
                             "layer, and no layer argument")
        taps = list(model)
    else:
        layers = (list(model.spec.stage_layers) if layers is None
                  else ([layers] if isinstance(layers, str) else list(layers)))
        taps = [model.tap(l) for l in layers]
    deepest = taps[-1].head(x)
    logits = taps[-1].tail(deepest)
    targets = resolve_targets(target, logits, labels)
    features = [t.head(x) for t in taps[:-1]] + [deepest]
    per_layer = [options] * len(taps)
    if options.num_masks != "auto":
        counts = chip.layer_mask_counts(int(options.num_masks), [a.shape[-1] for a in features], options.layer_masks)
        per_layer = [dataclasses.replace(options, num_masks=n) for n in counts]
    maps = [chip.chip_maps_with(t, x, targets, o, a) for t, o, a in zip(taps, per_layer, features)]
    return Explanation(chip.fuse_maps(maps, options.fusion), logits, targets)
