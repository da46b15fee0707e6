"""The contract every zoo architecture follows, and the :class:`Model` wrapper users hold.

A zoo architecture is a Flax linen module made of an ordered list of *units*
(``setup`` assigns ``self.units``) whose ``__call__(x, start=0, stop=None)``
runs ``units[start:stop]`` in order. Tap ``units[i]`` is the output of unit ``i``;
splitting there gives ``head = units[:i+1]`` and ``tail = units[i+1:]``, so
``tail(head(x)) == model(x)`` holds by construction.
"""
from __future__ import annotations

import dataclasses
from functools import cached_property
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InputError, WeightsError
from ..shapes import Images, ImagesIn, Logits
from ..tap import Tap, resolve_layer

Variables = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """Everything needed to build and load one architecture.

    Attributes:
      name: registry name, e.g. ``"resnet50"``.
      make_module: ``() -> flax module`` honouring ``__call__(x, start, stop)``.
      units: unit names, input to output; tap ``units[i]`` is unit ``i``'s output.
      aliases: extra tap names pointing at a unit, e.g. ``{"layer3": "layer3.5"}``.
      input_size: side S of the square input the weights expect.
      view: ``uint8 (H, W, 3) -> uint8 (S, S, 3)``: what the network sees (resize/crop).
      normalize: ``uint8 (S, S, 3) -> float32 (S, S, 3)`` as the weights expect.
      pretrained: ``() -> path`` of shipped weights, or ``None`` where none ship.
      default_layer: tap used when the caller names none (last conv stage).
      stage_layers: taps of the last stages, coarse last, for Refined CHIP.
      min_size: smallest input side the network runs on (torchvision's ``min_size``; Inception-v3: 75).
      convert: torch-style state dict ``{key: ndarray}`` -> Flax variables; raises
        :class:`~chipjax.errors.WeightsError` naming any missing/extra/mis-shaped key.
      key_table: ``() -> {torch key: KeyEntry}``, the table ``convert`` reads with and
        :meth:`Model.torch_state_dict` writes with (:mod:`chipjax.models.keymap`); ``None``: no torch layout.
      channelwise_units: units whose output channel k depends on input channel k alone (depthwise
        convolution + BN + activation, pooling) with the channel count kept; a tap right before a run
        of them gets that run as its channel-wise prefix (:func:`chipjax.tap.channel_mask_site`).
      entry: ``unit index -> ((parameter path of a (1, 1, K, O) kernel or None, stride), ...)`` where that
        unit's module takes ``part="entry"`` / ``"exit"``: its first products of its input, linear in it
        (a kernel: ``x[:, ::s, ::s] @ W``; None: ``x`` itself), and the rest from them. A tap right before
        such a unit ablates one channel as a rank-1 update of the entry (``Tap.entry_terms``); else None.
    """

    name: str
    make_module: Callable[[], Any]
    units: tuple[str, ...]
    aliases: Mapping[str, str]
    input_size: int
    view: Callable[[np.ndarray], np.ndarray]
    normalize: Callable[[np.ndarray], np.ndarray]
    pretrained: Callable[[], str] | None
    default_layer: str
    stage_layers: tuple[str, ...]
    min_size: int = 1
    convert: Callable[[Mapping[str, np.ndarray]], Variables] | None = None
    key_table: Callable[[], Mapping[str, Any]] | None = None
    channelwise_units: frozenset[str] = frozenset()
    entry: Callable[[int], tuple | None] | None = None


def tap_names(units: Sequence[str], aliases: Mapping[str, str]) -> list[str]:
    """Tappable names, input to output: every unit but the last, each alias right after its unit."""
    by_unit: dict[str, list[str]] = {}
    for alias, unit in aliases.items():
        by_unit.setdefault(unit, []).append(alias)
    names: list[str] = []
    for unit in units[:-1]:
        names.append(unit)
        names.extend(sorted(by_unit.get(unit, [])))
    return names


class Model:
    """A network with its weights, preprocessing, labels and layer taps.

    ``model(x)`` maps float32 ``(B, S, S, 3)`` to logits ``(B, 1000)``.
    """

    def __init__(self, spec: ArchSpec, variables: Variables, weights_label: str):
        self.spec = spec
        self.name = spec.name
        self.module = spec.make_module()
        self.variables = variables
        self.weights = weights_label
        self._apply = jax.jit(self._apply_range, static_argnames=("start", "stop"))
        self._taps: dict[str, Tap] = {}

    def __repr__(self) -> str:
        return f"Model({self.name!r}, weights={self.weights!r}, layers={len(self.layers)})"

    # --- running ---------------------------------------------------------------
    def _apply_range(self, variables: Variables, x: jax.Array, start: int = 0, stop: int | None = None):
        return self.module.apply(variables, x, start=start, stop=stop)

    def __call__(self, x: ImagesIn) -> Logits:
        """Logits ``(B, num_classes)`` of preprocessed images ``(B, S, S, 3)``."""
        x = check_images(x)
        return self._apply(self.variables, x)

    def network_parts(self) -> tuple[Any, Variables]:
        """``(flax module, variables)``: what :func:`chipjax.tap.tap_module` taps."""
        return self.module, self.variables

    def torch_state_dict(self) -> dict[str, np.ndarray]:
        """The variables as the reference torch model's ``state_dict`` (torch key names, layouts and
        shapes; float32 arrays): the inverse of loading a torch checkpoint
        (:func:`chipjax.models.keymap.export_state_dict`). Raises :class:`WeightsError` for an
        architecture without a torch layout."""
        from .keymap import export_state_dict

        if self.spec.key_table is None:
            raise WeightsError(f"{self.name} has no torch key table, so no torch state dict; families with one: "
                               f"ResNet, VGG, EfficientNet-Lite and the torchvision zoo")
        return export_state_dict(self.variables, self.spec.key_table())

    # --- taps --------------------------------------------------------------------
    @cached_property
    def layers(self) -> list[str]:
        """Tap names, input to output (torchvision-style)."""
        return tap_names(self.spec.units, self.spec.aliases)

    @property
    def default_layer(self) -> str:
        return self.spec.default_layer

    def tap(self, layer: str | None = None) -> Tap:
        """Split at ``layer`` (default: the last conv stage) into head and tail.

        Returns a :class:`~chipjax.tap.Tap` whose ``head_fn(variables, x)`` gives the
        feature map ``A (B, H, W, K)`` and ``tail_fn(variables, A)`` the logits.
        """
        layer = self.default_layer if layer is None else layer
        name = resolve_layer(layer, self.layers)
        if name not in self._taps:
            self._taps[name] = self._make_tap(name)
        return self._taps[name]

    def _make_tap(self, name: str) -> Tap:
        unit = self.spec.aliases.get(name, name)
        split = self.spec.units.index(unit) + 1
        module = self.module

        def head_fn(variables, x):
            return module.apply(variables, x, start=0, stop=split)

        def tail_fn(variables, a):
            return module.apply(variables, a, start=split, stop=None)

        units = self.spec.units
        cut = split  # the channel-wise run after the tap (never the last unit)
        while cut < len(units) - 1 and units[cut] in self.spec.channelwise_units:
            cut += 1
        if cut == split:
            terms = None if self.spec.entry is None else self.spec.entry(split)
            if terms is None:
                return Tap(layer=name, head_fn=head_fn, tail_fn=tail_fn, variables=self.variables)

            def entry_fn(variables, a):
                return module.apply(variables, a, start=split, part="entry")

            def exit_fn(variables, e):
                return module.apply(variables, e, start=split, part="exit")

            return Tap(layer=name, head_fn=head_fn, tail_fn=tail_fn, variables=self.variables, entry_fn=entry_fn,
                       exit_fn=exit_fn, entry_terms=terms)

        def prefix_fn(variables, a):
            return module.apply(variables, a, start=split, stop=cut)

        def rest_fn(variables, p):
            return module.apply(variables, p, start=cut, stop=None)

        return Tap(layer=name, head_fn=head_fn, tail_fn=tail_fn, variables=self.variables, prefix_fn=prefix_fn,
                   rest_fn=rest_fn)

    # --- data --------------------------------------------------------------------
    @property
    def input_size(self) -> int:
        return self.spec.input_size

    @cached_property
    def labels(self) -> list[str]:
        from .labels import imagenet_labels

        return imagenet_labels()

    def view(self, image) -> np.ndarray:
        """The uint8 ``(S, S, 3)`` picture the network sees (for overlays)."""
        from .preprocess import to_rgb_uint8

        return self.spec.view(to_rgb_uint8(image))

    def preprocess(self, image) -> Images:
        """PIL image, path or uint8 ``(H, W, 3)`` array -> float32 ``(1, S, S, 3)``."""
        return jnp.asarray(self.spec.normalize(self.view(image))[None])


def check_images(x) -> Images:
    """Validate a batch of preprocessed images: float ``(B, H, W, 3)`` with B, H, W ≥ 1, finite."""
    try:
        x = jnp.asarray(x)
    except (TypeError, ValueError) as e:
        raise InputError(f"expected a float array of images (B, H, W, 3), got {type(x).__name__} ({e}); "
                         f"use model.preprocess(image)") from None
    if x.ndim == 3:
        raise InputError(f"expected a batch (B, H, W, 3), got shape {x.shape}: add a leading batch axis, e.g. x[None]")
    if x.ndim != 4 or x.shape[-1] != 3:
        raise InputError(f"expected images of shape (B, H, W, 3) (NHWC, RGB), got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise InputError(f"expected float images (use model.preprocess), got dtype {x.dtype}")
    if 0 in x.shape:
        raise InputError(f"the image batch is empty: shape {x.shape}; give at least one image with at least one pixel")
    if not isinstance(x, jax.core.Tracer) and not bool(jnp.isfinite(x).all()):
        raise InputError("input images contain NaN or Inf: clean the array before explaining it")
    return x
