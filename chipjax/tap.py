"""Layer taps: split a network ``f = g ∘ h`` at a named layer.

Every explanation method works on a :class:`Tap`: the head ``h`` runs once per
image and gives the feature map ``A (B, H, W, K)``; the tail ``g`` maps a batch
of (possibly perturbed) feature maps to logits. Zoo models build taps from their
unit list (:meth:`chipjax.models.base.Model.tap`), where the split is exact by
construction; :func:`tap_module` builds one for any user network — a Flax linen
module, a Flax NNX module or an Equinox module — by the path of one of its layers.

A user network need not be a chain: a skip connection may run around the tapped
layer (inside a residual block). So a user tap's tail is *the network run on the real
images with the tapped value replaced by its argument*. The images travel in the tap's
``variables`` (``{"state": …, "images": x}``; :meth:`ModuleTap.bind` rebinds them),
and under ``vmap`` over perturbed values everything that does not depend on the
replaced value — the head, the skip inputs around the tap — is unbatched: computed
once per image, not once per mask, and exact. (For a chain, the head is dead code
in the tail and XLA removes it.)
"""
from __future__ import annotations

import dataclasses
import difflib
import weakref
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from .errors import InputError, LayerError


@dataclasses.dataclass(frozen=True)
class Tap:
    """A network split at ``layer``.

    Attributes:
      layer: the tap name.
      head_fn: ``(variables, x (B, S, S, 3)) -> A (B, H, W, K)``, pure.
      tail_fn: ``(variables, A (N, H, W, K)) -> logits (N, C)``, pure.
      variables: the weights both take.
      prefix_fn, rest_fn: optional split ``tail_fn = rest_fn ∘ prefix_fn`` where ``prefix_fn`` is
        *channel-wise* (output channel k depends on input channel k alone: depthwise convolution,
        batch norm, activation, pooling) and keeps the K channels; channel masks then act after it
        (:func:`channel_mask_site`). Zoo taps set it where the units after the tap allow; None: no split.
      entry_fn, exit_fn, entry_terms: optional split ``tail_fn = exit_fn ∘ entry_fn`` where ``entry_fn``
        returns a tuple of products linear in the features, each ``a[:, ::s, ::s] @ W`` for
        ``entry_terms[i] = (path of W (1, 1, K, O) in variables, s)`` or ``a`` itself for ``(None, 1)``:
        one channel's share of the entry is then a rank-1 term (:func:`ablated_entry`), so ablating a
        channel costs the exit only (ResNet Bottleneck taps). None: no split.
    """

    layer: str
    head_fn: Callable[[Any, jax.Array], jax.Array]
    tail_fn: Callable[[Any, jax.Array], jax.Array]
    variables: Any
    prefix_fn: Callable[[Any, jax.Array], jax.Array] | None = None
    rest_fn: Callable[[Any, jax.Array], jax.Array] | None = None
    entry_fn: Callable[[Any, jax.Array], tuple] | None = None
    exit_fn: Callable[[Any, tuple], jax.Array] | None = None
    entry_terms: tuple | None = None

    def head(self, x: jax.Array) -> jax.Array:
        """Feature maps ``(B, H, W, K)`` of images ``(B, S, S, 3)``."""
        return _jit(self.head_fn)(self.variables, x)

    def tail(self, a: jax.Array) -> jax.Array:
        """Logits ``(N, C)`` of feature maps ``(N, H, W, K)``."""
        return _jit(self.tail_fn)(self.variables, a)


def channel_mask_site(tap: Tap, features: jax.Array) -> tuple[Callable, Any, jax.Array]:
    """Where binary channel masks of ``tap`` are cheapest to evaluate: ``(tail_fn, variables, site)``
    with ``tail_fn(variables, site * m) == tap.tail_fn(tap.variables, features * m)`` for every
    ``m ∈ {0, 1}^K`` (up to float rounding).

    Without a channel-wise prefix (``tap.prefix_fn is None``) that is the tap itself. With one, a
    channel switched off at the tap leaves its prefix output at ``P0 = prefix(0)`` and one left on
    at ``P1 = prefix(A)``, so ``prefix(A ⊙ m) = P0 + m ⊙ (P1 − P0)``: the prefix runs once per image
    instead of once per mask, and the perturbed networks run only ``rest_fn`` (EfficientNet's
    ``blocks.i.expand`` taps skip the next depthwise convolution; ``head`` taps the global pooling).

    Args:
      features: ``(B, H, W, K)`` at the tap.
    Returns:
      ``tail_fn``, ``variables`` and ``site (B, ..., K)``: ``features`` itself, or ``P1 − P0``
      (``P0`` travels in ``variables``). For binary masks only: CHIP's and Ablation-CAM's.
    """
    if tap.prefix_fn is None:
        return tap.tail_fn, tap.variables, features
    prefix = _jit(tap.prefix_fn)
    off = prefix(tap.variables, jnp.zeros((1, *features.shape[1:]), features.dtype))  # (1, ..., K)
    return _offset_tail(tap.rest_fn), {"tap": tap.variables, "offset": off}, prefix(tap.variables, features) - off


def ablated_entry(entry: tuple, terms: tuple, variables: Any, features: jax.Array, channel: jax.Array) -> tuple:
    """The entry (``tap.entry_fn(variables, features)``) of ``features`` with ``channel`` zeroed, from
    the entry of ``features`` minus that channel's rank-1 share: ``a[..., c] ⊗ W[c]`` per kernel term
    (``H'·W'·O`` products instead of ``H'·W'·K·O``), the features with channel c zeroed per identity term.

    Args:
      entry: the unablated entry, a tuple of ``(B, H', W', O)``; terms: ``tap.entry_terms``;
      features: ``(B, H, W, K)``; channel: ``()`` int.
    Returns:
      the ablated entry, shaped as ``entry``.
    """
    out = []
    for e, (path, stride) in zip(entry, terms):
        if path is None:
            out.append(e * (1 - jax.nn.one_hot(channel, features.shape[-1], dtype=e.dtype)))
            continue
        kernel = variables["params"]
        for key in path:
            kernel = kernel[key]
        a_c = features[:, ::stride, ::stride, channel]  # (B, H', W')
        out.append(e - a_c[..., None].astype(e.dtype) * kernel[0, 0, channel].astype(e.dtype))
    return tuple(out)


_OFFSET_TAILS: dict[Callable, Callable] = {}


def _offset_tail(rest_fn: Callable) -> Callable:
    """``(variables, d) -> rest_fn(variables["tap"], d + variables["offset"])``, one function per ``rest_fn``
    (the engine's compiled sweeps are keyed on the tail function)."""
    if rest_fn not in _OFFSET_TAILS:
        def tail_fn(variables, d):
            return rest_fn(variables["tap"], d + variables["offset"].astype(d.dtype))

        _OFFSET_TAILS[rest_fn] = tail_fn
    return _OFFSET_TAILS[rest_fn]


_JIT_CACHE: dict[Callable, Callable] = {}


def _jit(fn: Callable) -> Callable:
    if fn not in _JIT_CACHE:
        _JIT_CACHE[fn] = jax.jit(fn)
    return _JIT_CACHE[fn]


def resolve_layer(layer: str, valid: Sequence[str]) -> str:
    """Return ``layer`` if it is a valid tap name, else raise a :class:`LayerError` listing the valid ones."""
    if layer in valid:
        return layer
    close = difflib.get_close_matches(str(layer), valid, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise LayerError(f"unknown layer {layer!r}.{hint} Valid layers: {', '.join(valid)}")


# ------------------------------------------------------------------------------------------------
# The one exact split: run the network with one layer's output captured or replaced
# ------------------------------------------------------------------------------------------------
#
# A *runner* is ``run(state, x (B, S, S, 3), path, replacement) -> (logits (B, C), out)``:
# the network on images x; ``out`` is the output of the first call of the layer at ``path``
# (a tuple of names; None: no layer); with ``replacement`` (B, H, W, K) that output is
# replaced by it (the layer itself does not run) and everything after it sees the
# replacement. Feature maps are NHWC whatever the module system.


def _record_call(found: dict, path: tuple, key: tuple, replacement, call: Callable):
    """One layer call under a hook: record (and maybe replace) the first output of ``path``.

    ``found`` collects ``{"out": …}`` for the tapped layer and, when ``path`` is None, the
    call order and output shapes of every layer under ``"order"``.
    """
    if path is None:
        out = call()
        order = found.setdefault("order", {})
        if key not in order:
            order[key] = jax.tree_util.tree_map(lambda t: t.shape, _first(out))
        return out
    if key != path or "out" in found:
        return call()
    out = call() if replacement is None else replacement
    found["out"] = _first(out)
    return out


def _first(out):
    """A layer's feature output: the first element of a ``(value, state)`` pair (Equinox stateful layers)."""
    return out[0] if isinstance(out, tuple) else out


def _linen_runner(module) -> Callable:
    import flax.linen as nn

    def run(state, x, path, replacement):
        found: dict = {}

        def hook(next_fun, args, kwargs, context):
            if context.method_name != "__call__" or not context.module.path:
                return next_fun(*args, **kwargs)
            return _record_call(found, path, tuple(context.module.path), replacement,
                                lambda: next_fun(*args, **kwargs))

        with nn.intercept_methods(hook):
            logits = module.apply(state, x)
        return logits, found

    return run


def _nnx_runner(graphdef) -> Callable:
    from flax import nnx

    class _Hook(nnx.Module):
        def __init__(self, inner, record):
            self.inner, self.record = inner, record

        def __call__(self, *args, **kwargs):
            return self.record(lambda: self.inner(*args, **kwargs))

    def run(state, x, path, replacement):
        model = nnx.merge(graphdef, state)  # a fresh copy: nothing the user holds is touched
        model.eval()  # batch norm on running statistics, dropout off
        found: dict = {}
        if path != ():
            nodes = dict(nnx.iter_graph(model))
            for p, node in list(nodes.items()):
                if not p or not _is_nnx_layer(node) or (path is not None and p != path):
                    continue
                hook = _Hook(node, _bind_record(found, path, p, replacement))
                parent = nodes[p[:-1]]
                if isinstance(p[-1], int):
                    parent[p[-1]] = hook
                else:
                    setattr(parent, p[-1], hook)
        return model(x), found

    return run


def _is_nnx_layer(node) -> bool:
    """An NNX module that is called (not a container such as ``nnx.List``/``nnx.Dict``)."""
    from flax import nnx

    containers = tuple(c for c in (getattr(nnx, "List", None), getattr(nnx, "Dict", None)) if c is not None)
    return isinstance(node, nnx.Module) and not isinstance(node, containers)


def _eqx_runner(model, has_state: bool) -> Callable:
    import equinox as eqx

    class _Hook(eqx.Module):
        inner: Any
        call: Callable = eqx.field(static=True)

        def __call__(self, *args, **kwargs):
            return self.call(lambda: self.inner(*args, **kwargs))

    model = eqx.nn.inference_mode(model)  # batch norm on running statistics, dropout off

    def one(state, image, path, replacement):  # image (S, S, 3); replacement (H, W, K) or None
        found: dict = {}
        hooked = model
        rep = None if replacement is None else jnp.moveaxis(replacement, -1, 0)  # Equinox is channel-first
        paths = _eqx_paths(model) if path is None else [] if path == () else [path]
        for p in sorted(paths, key=len, reverse=True):  # deepest first, so no path runs through a hook
            hooked = eqx.tree_at(lambda t, p=p: _get(t, p), hooked,
                                 _Hook(_get(hooked, p), _bind_record(found, path, p, rep)))
        x = jnp.moveaxis(image, -1, 0)
        logits = hooked(x, state)[0] if has_state else hooked(x)
        out = found.get("out")
        return logits, (None if out is None else jnp.moveaxis(out, 0, -1)), found.get("order")

    def run(state, x, path, replacement):
        if path is None:  # shapes and call order of every layer: one unbatched call
            logits, _, order = one(state, x[0], None, None)
            order = {k: (x.shape[0],) + tuple(s[1:]) + (s[0],) if len(s) == 3 else (x.shape[0],) + tuple(s)
                     for k, s in order.items()}
            return logits[None], {"order": order}
        logits, out, _ = jax.vmap(lambda img, r: one(state, img, path, r),
                                  in_axes=(0, None if replacement is None else 0))(x, replacement)
        return logits, {"out": out}

    return run


def _bind_record(found, path, key, replacement):
    """The ``call`` of an Equinox hook (a static, hashable function of the layer's thunk)."""
    def record(call):
        return _record_call(found, path, key, replacement, call)
    return record


def _eqx_paths(model) -> list[tuple]:
    """Paths of every Equinox submodule of ``model`` (fields and list/tuple items), depth first."""
    import equinox as eqx

    paths = []

    def walk(node, prefix):
        if isinstance(node, eqx.Module):
            if prefix:
                paths.append(prefix)
            children = [(f.name, getattr(node, f.name, None)) for f in dataclasses.fields(node)]
        elif isinstance(node, (list, tuple)):
            children = list(enumerate(node))
        elif isinstance(node, dict):
            children = list(node.items())
        else:
            return
        for name, child in children:
            walk(child, prefix + (name,))

    walk(model, ())
    return paths


def _get(tree, path):
    for k in path:
        tree = tree[k] if isinstance(k, int) or isinstance(tree, dict) else getattr(tree, k)
    return tree


# ------------------------------------------------------------------------------------------------
# User networks: which system, their layers, the bound tap
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Network:
    """A user network as a pure runner: ``run(state, x, path, replacement)`` (see above) and its state."""

    system: str  # "linen" | "nnx" | "equinox"
    run: Callable
    state: Any


def _network(module_or_model, variables) -> _Network:
    """Recognise the module system of a user's network and make its runner."""
    parts = getattr(module_or_model, "network_parts", None)  # a chipjax Model (no import of chipjax.models here)
    if callable(parts):
        module, own_variables = parts()
        return _network(module, own_variables if variables is None else variables)
    try:
        import flax.linen as nn
        if isinstance(module_or_model, nn.Module):
            if variables is None:
                raise InputError("a flax.linen module needs its variables: tap_module(module, layer, x, variables)")
            return _Network("linen", _linen_runner(module_or_model), variables)
    except ImportError:  # pragma: no cover - flax is a dependency
        pass
    from flax import nnx

    if isinstance(module_or_model, nnx.Module):
        if variables is not None:
            raise InputError("an NNX module carries its own state: call tap_module(module, layer, x) without variables")
        graphdef, state = nnx.split(module_or_model)
        return _Network("nnx", _nnx_runner(graphdef), state)
    if _is_equinox(module_or_model):
        return _Network("equinox", _eqx_runner(module_or_model, variables is not None), variables)
    raise InputError(f"cannot tap a {type(module_or_model).__name__}: give a flax.linen module (with its variables), "
                     f"a flax.nnx module, an Equinox module or a chipjax zoo model")


def _is_equinox(obj) -> bool:
    """Whether ``obj`` is an Equinox module, without importing Equinox unless it is loaded already."""
    import sys

    eqx = sys.modules.get("equinox")
    return eqx is not None and isinstance(obj, eqx.Module)


def _layer_shapes(net: _Network, x) -> dict[str, tuple]:
    """``{layer path: output shape (B, H, W, K)}`` of every layer, in the order their calls finish."""
    seen: dict = {}

    def trace(state, x):  # the shapes are read at trace time; nothing runs
        logits, found = net.run(state, x, None, None)
        seen.update(found.get("order", {}))
        return logits

    jax.eval_shape(trace, net.state, x)
    return {".".join(map(str, k)): tuple(s) for k, s in seen.items() if isinstance(s, tuple)}


def _as_example(x) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim != 4:
        raise InputError(f"example_input must be a batch of images (B, S, S, 3), got shape {x.shape}")
    return x


def module_layers(module_or_model, example_input, variables=None) -> list[str]:
    """Paths of every layer of a user network (``"conv1"``, ``"block1.conv"``, ``"layers.3"``), input to output.

    A layer is listed when its call returns, so a block comes right after its own layers (as
    torch forward hooks fire). Works for a flax.linen module (``variables`` given), a flax.nnx
    module and an Equinox module; ``example_input (B, S, S, 3)`` only gives the shapes.
    """
    return list(_layer_shapes(_network(module_or_model, variables), _as_example(example_input)))


def default_layer(shapes: dict[str, tuple]) -> str:
    """The last layer whose output is a spatial feature map ``(B, H, W, K)`` with ``H·W > 1`` (torch-cam's
    candidate layer), from :func:`_layer_shapes`; :class:`LayerError` if there is none."""
    spatial = [name for name, s in shapes.items() if len(s) == 4 and s[1] * s[2] > 1]
    if not spatial:
        raise LayerError(f"no layer gives a spatial feature map (B, H, W, K); name one of: {', '.join(shapes)}")
    return spatial[-1]


@dataclasses.dataclass(frozen=True)
class ModuleTap(Tap):
    """A user network tapped at ``layer``, bound to the images it explains.

    ``variables`` is ``{"state": <the network's variables/state>, "images": x (B, S, S, 3)}``.
    ``tail_fn(variables, A)`` runs the network on ``variables["images"]`` with the tapped
    output replaced by ``A`` (so ``A`` must hold B feature maps, one per bound image); called
    on the unmodified output of ``head_fn`` (``tail_fn(v, head_fn(v, x'))``, as Score-CAM and
    RISE run the whole network on masked images) it runs the network on ``x'`` itself.
    :meth:`head` refuses images other than the bound ones (:meth:`bind` them first).

    Attributes (beyond :class:`Tap`'s): ``system`` (``"linen"``, ``"nnx"``, ``"equinox"``),
    ``layers`` (every layer path, input to output), ``tail_reads_images`` (whether the tail
    depends on the bound images at all, i.e. something — a skip connection — runs around the
    tap; when it does not, as in a chain of layers, the tap explains any images of its size
    and its tail takes any batch).
    """

    system: str = ""
    layers: tuple[str, ...] = ()
    tail_reads_images: bool = True

    @property
    def images(self) -> jax.Array:
        return self.variables["images"]

    def bind(self, x) -> "ModuleTap":
        """The same tap bound to images ``x (B, S, S, 3)`` (same S as before)."""
        x = jnp.asarray(x)
        if x.shape[1:] != self.images.shape[1:]:
            raise InputError(f"this tap was built for images of shape (B, {', '.join(map(str, self.images.shape[1:]))}), "
                             f"got {x.shape}; build a new tap with tap_module(..., example_input=x)")
        return dataclasses.replace(self, variables={**self.variables, "images": x})

    def head(self, x: jax.Array) -> jax.Array:
        """Feature maps ``(B, H, W, K)`` of the bound images ``x``; :class:`InputError` for other images."""
        if self.tail_reads_images and not isinstance(x, jax.core.Tracer) and x is not self.images:
            same = jnp.shape(x) == self.images.shape and bool(jnp.array_equal(x, self.images))
            if not same:
                raise InputError(f"this {self.layer} tap is bound to other images (its tail runs on them); "
                                 f"use tap.bind(x) to explain these")
        return super().head(x)


def tap_module(module_or_model, layer: str | None, example_input, variables=None) -> ModuleTap:
    """Tap a user's network at the layer path ``layer`` (None: the last spatial feature map).

    Args:
      module_or_model: a ``flax.linen.Module`` (give ``variables``), a ``flax.nnx.Module``
        (its own state; it is split with ``nnx.split`` and never mutated), an Equinox module
        (called on one channel-first image ``(3, S, S) -> (C,)``, Equinox's convention; chipjax
        vmaps it over the batch and hands out NHWC feature maps), or a chipjax zoo model.
        Every one maps images to logits; batch norm runs in eval mode (linen: build the module
        with ``use_running_average=True``; NNX: on a copy put in ``.eval()``; Equinox:
        ``eqx.nn.inference_mode``), so explaining mutates no state.
      layer: a path from :func:`module_layers`, e.g. ``"block2.relu"``; ``None`` picks
        :func:`default_layer` — read it back as ``tap.layer``.
      example_input: the images ``(B, S, S, 3)`` to explain: the tail runs on them
        (:meth:`ModuleTap.bind` re-binds the tap to other images of the same size).
      variables: linen: the module's variables; Equinox: an ``eqx.nn.State`` if the model
        takes one (``model(x, state) -> (logits, state)``); NNX: must be None.
    Returns:
      A :class:`ModuleTap`: ``tail(head(x))`` equals the network's logits on ``x``, and the
      perturbed tails are exact across skip connections around the tap.
    """
    net = _network(module_or_model, variables)
    x = _as_example(example_input)
    shapes = _layer_shapes(net, x)
    layers = tuple(shapes)
    layer = default_layer(shapes) if layer is None else resolve_layer(layer, list(layers))
    path = tuple(int(p) if p.isdigit() and net.system != "linen" else p for p in layer.split("."))
    reads_images = _tail_reads_images(net, path, x)
    return ModuleTap(layer=layer, head_fn=_head_fn(net, path), tail_fn=_tail_fn(net, path, reads_images),
                     variables={"state": net.state, "images": x}, system=net.system, layers=layers,
                     tail_reads_images=reads_images)


def _tail_reads_images(net: _Network, path: tuple, x) -> bool:
    """Whether the logits of the network with the output at ``path`` replaced still depend on the images.

    A forward dependency pass over the traced program (conservative: an inner call's outputs
    all depend on the images if any of its inputs does).
    """
    a = jax.eval_shape(lambda s, x: net.run(s, x, path, None)[1]["out"], net.state, x)
    closed = jax.make_jaxpr(lambda x, a, s: net.run(s, x, path, a)[0])(x, jnp.zeros(a.shape, a.dtype), net.state)
    jaxpr = closed.jaxpr
    tainted = {jaxpr.invars[0]}
    for eqn in jaxpr.eqns:
        if any(not hasattr(v, "val") and v in tainted for v in eqn.invars):
            tainted.update(eqn.outvars)
    return any(not hasattr(v, "val") and v in tainted for v in jaxpr.outvars)


def _head_fn(net: _Network, path: tuple) -> Callable:
    """``(variables, x (B, S, S, 3)) -> A (B, H, W, K)``: the tapped output; remembers (weakly) which
    images each output came from, for :func:`_tail_fn`."""
    def head_fn(variables, x):
        _, found = net.run(variables["state"], x, path, None)
        out = found["out"]
        _remember_origin(out, x)
        return out

    return head_fn


def _tail_fn(net: _Network, path: tuple, reads_images: bool) -> Callable:
    """``(variables, A (B, H, W, K)) -> logits (B, C)``: the network on the bound images with the tapped
    output replaced by ``A``; on an unmodified head output, the network on that head's images.
    ``reads_images`` False (nothing runs around the tap): any batch, the images are dead code."""

    def tail_fn(variables, a):
        source = _origin(a)
        if source is not None:  # tail(head(x')): the whole network on x'
            return net.run(variables["state"], source, (), None)[0]
        images = variables["images"]
        if not reads_images:
            images = jnp.zeros((a.shape[0],) + images.shape[1:], images.dtype)
        elif a.shape[0] != images.shape[0]:
            raise InputError(f"the tail of this tap replaces the features of its {images.shape[0]} bound images, "
                             f"got {a.shape[0]} feature maps; bind the tap to those images first (tap.bind(x))")
        return net.run(variables["state"], images, path, a)[0]

    return tail_fn


#: ``id(head output) -> (weak reference to it, the images it came from)``; an entry goes when its output does.
_ORIGINS: "dict[int, tuple]" = {}


def _remember_origin(out, x) -> None:
    """Note that ``out`` (a head output) came from images ``x`` (weakly: no array or tracer is kept alive)."""
    key = id(out)

    def forget(ref, key=key):
        if _ORIGINS.get(key, (None,))[0] is ref:
            del _ORIGINS[key]

    try:
        source = weakref.ref(x)
    except TypeError:  # not weak-referenceable: nothing to remember
        return
    _ORIGINS[key] = (weakref.ref(out, forget), source)


def _origin(a):
    """The images whose head output ``a`` is (this very object), or None."""
    entry = _ORIGINS.get(id(a))
    if entry is None or entry[0]() is not a:
        return None
    return entry[1]()
