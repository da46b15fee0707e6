"""The CAM-family baselines on chipjax taps: CAM, Grad-CAM, Grad-CAM++, Ablation-CAM, Score-CAM and RISE.

As in pytorch-grad-cam, every CAM method is *a way to compute channel weights*
``W (B, K)`` for the tapped feature maps ``A (B, H, W, K)``; the ending is shared
(:func:`chipjax.heatmaps.heatmap`: ``normalize01(upsample(ReLU(Σ_k W_k A_k)))``).
RISE explains at the input instead and only shares the normalisation.

* gradient methods (``cam``, ``gradcam``, ``gradcam++``) differentiate
  ``Σ_b logits[b, targets[b]]`` with respect to ``A``: every image gets its own gradient;
* perturbation methods (``ablationcam``, ``scorecam``, ``rise``) run on CHIP's perturbation
  engine (:func:`chipjax.perturb.sweep`): a mask family at a site, one chunking rule
  (:func:`chipjax.perturb.items_per_step`, with the per-device memory budget), sharding over
  local devices, the bf16 option, a score operator and a reducer. Ablation-CAM masks the tap
  (masks ``1 − e_k``); Score-CAM and RISE mask the input and run the full network. Each
  method keeps only its rule for turning scores into channel or pixel weights.

Every ``*_maps`` function has the signature
``fn(tap, x (B, S, S, 3), targets (B,) int, *, features=None, **options) -> (B, S, S)``
in [0, 1] (never NaN) and is listed in :data:`MAP_FUNCTIONS`; its options are a dataclass of
:mod:`chipjax.options`, checked once, and ``*_maps_with`` (:data:`MAPS_WITH_OPTIONS`) takes them checked.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp

from . import perturb
from .errors import InputError
from .heatmaps import heatmap, normalize01, upsample
from .options import AblationCamOptions, RiseOptions, ScoreCamOptions
from .tap import Tap, ablated_entry, channel_mask_site

#: A gradient whose spatial spread exceeds this fraction of its largest magnitude is "not constant" (CAM check).
CAM_TOLERANCE = 1e-4

# ------------------------------------------------------------------------------------------------
# Scores of perturbed networks
# ------------------------------------------------------------------------------------------------


def target_scores(logits: jax.Array, targets: jax.Array, score: str) -> jax.Array:
    """``(..., B, C)`` logits -> ``(..., B)`` score of each image's own target (``prob``, ``logit`` or ``logprob``)."""
    y = perturb.scores_from_logits(logits.astype(jnp.float32), score)
    index = jnp.broadcast_to(targets[:, None], y.shape[:-1] + (1,))
    return jnp.take_along_axis(y, index, axis=-1)[..., 0]


def full_logits(head_fn: Callable, tail_fn: Callable, variables: Any, x: jax.Array) -> jax.Array:
    """The whole network, head then tail: ``(N, S, S, 3) -> (N, C)``."""
    return tail_fn(variables, head_fn(variables, x))


# ------------------------------------------------------------------------------------------------
# Channel weights, one function per method: (..., A (B, H, W, K), targets (B,)) -> W (B, K)
# ------------------------------------------------------------------------------------------------


@partial(jax.jit, static_argnames=("tail_fn",))
def target_gradients(tail_fn: Callable, variables: Any, features: jax.Array, targets: jax.Array) -> jax.Array:
    """``∂ logits[b, targets[b]] / ∂ A[b]`` for every image b: ``(B, H, W, K)``.

    The sum over the batch is differentiated, so each image gets its own gradient
    (the tail treats images independently: inference-mode batch norm).
    """

    def total(a):
        return jnp.sum(target_scores(tail_fn(variables, a), targets, "logit"))

    return jax.grad(total)(features)


def gradcam_weights(grads: jax.Array) -> jax.Array:
    """Grad-CAM (Selvaraju et al. 2017): the spatial mean of the gradient, ``(B, H, W, K) -> (B, K)``."""
    return grads.mean(axis=(1, 2))


def gradcampp_weights(features: jax.Array, grads: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Grad-CAM++ (Chattopadhay et al. 2018, eq. 19 with ``Y = exp(S)``), as pytorch-grad-cam computes it.

    ``α = g² / (2 g² + (Σ_hw A) · g³ + eps)`` (zero where ``g = 0``), ``W_k = Σ_hw α · ReLU(g)``.

    Args:
      features: ``(B, H, W, K)``; grads: ``(B, H, W, K)`` gradient of the target logit.
    Returns:
      ``(B, K)``.
    """
    g2 = grads * grads
    g3 = g2 * grads
    sum_a = features.sum(axis=(1, 2), keepdims=True)
    alpha = g2 / (2.0 * g2 + sum_a * g3 + eps)
    alpha = jnp.where(grads != 0, alpha, 0.0)
    return jnp.sum(alpha * jax.nn.relu(grads), axis=(1, 2))


def cam_weights(grads: jax.Array) -> jax.Array:
    """CAM (Zhou et al. 2016): ``∂ logit / ∂ pooled features`` = the fc weights of the target, ``(B, H, W, K) -> (B, K)``.

    For a tail ``logits = V · mean_hw(A) + b`` the gradient is ``V[:, c] / (H W)`` at every
    position, so the sum over positions is ``V[:, c]``.
    """
    return grads.sum(axis=(1, 2))


def spatial_spread(grads: jax.Array) -> jax.Array:
    """How far each image's gradient is from spatially constant: ``max |g − mean_hw g| / max |g|``, ``(B,)``."""
    dev = jnp.abs(grads - grads.mean(axis=(1, 2), keepdims=True)).max(axis=(1, 2, 3))
    top = jnp.abs(grads).max(axis=(1, 2, 3))
    return jnp.where(top > 0, dev / jnp.where(top > 0, top, 1.0), 0.0)


@partial(jax.jit, static_argnames=("tail_fn", "chunk", "score", "compute_dtype", "devices", "entry"))
def ablation_weights(tail_fn: Callable, variables: Any, features: jax.Array, targets: jax.Array, *, chunk: int,
                     score: str = "logit", compute_dtype=None, devices=None, entry: tuple | None = None) -> jax.Array:
    """Ablation-CAM (Desai & Ramaswamy 2020), as pytorch-grad-cam computes it.

    ``W_k = (y − y^(k)) / y`` with ``y`` the target score and ``y^(k)`` the score with
    channel k of ``A`` zeroed: the perturbation engine (:func:`chipjax.perturb.sweep`) at the
    tap with the mask family ``1 − e_k``.

    Args:
      features: ``(B, H, W, K)``; targets: ``(B,)``.
      chunk: channels ablated per step (``chunk · B`` tail evaluations).
      score: ``logit`` (pytorch-grad-cam's ``ClassifierOutputTarget``), ``prob`` or ``logprob``.
      compute_dtype: e.g. ``jnp.bfloat16`` for the ablated tails (scores in float32).
      devices: devices to shard the channels over (default: every local device).
      entry: ``(tap.entry_fn, tap.exit_fn, tap.entry_terms)`` where the tap has them: the entry runs
        once and each ablation is a rank-1 update of it (:func:`chipjax.tap.ablated_entry`), then
        the exit; the same scores as the whole tail on each ablated copy.
    Returns:
      ``(B, K)``; 0 where the unperturbed score is 0.
    """
    num_channels = features.shape[-1]
    if entry is None:
        y = target_scores(tail_fn(variables, features), targets, score)  # (B,)

        def ablated(operands, idx):  # (c,) -> (c, B)
            variables, features = operands
            masks = 1.0 - jax.nn.one_hot(idx, num_channels, dtype=features.dtype)
            return target_scores(perturb.perturbed_logits(tail_fn, variables, features, masks), targets, score)

        operands = perturb.cast_floating((variables, features), compute_dtype)
    else:
        entry_fn, exit_fn, terms = entry
        E = entry_fn(variables, features)
        y = target_scores(exit_fn(variables, E), targets, score)

        def ablated(operands, idx):  # (c,) -> (c, B)
            variables, features, E = operands
            one = lambda c: exit_fn(variables, ablated_entry(E, terms, variables, features, c))  # noqa: E731
            return target_scores(jax.vmap(one)(idx), targets, score)

        operands = perturb.cast_floating((variables, features, E), compute_dtype)
    y_k = perturb.sweep(ablated, operands, num_channels, chunk=chunk, devices=devices).T  # (B, K)
    safe = jnp.where(y != 0, y, 1.0)[:, None]
    return jnp.where(y[:, None] != 0, (y[:, None] - y_k) / safe, 0.0)


def channel_masks(features: jax.Array, channels: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Score-CAM's input masks: channels ``(c,)`` of ``A (B, H, W, K)``, upsampled and min-max normalised, ``(c, B, *size)``."""
    a = jnp.moveaxis(jnp.take(features, channels, axis=-1), -1, 0)  # (c, B, H, W)
    c, b = a.shape[:2]
    flat = normalize01(upsample(a.reshape((c * b,) + a.shape[2:]), size))
    return flat.reshape((c, b) + tuple(size))


@partial(jax.jit, static_argnames=("head_fn", "tail_fn", "chunk", "score", "channel_softmax", "compute_dtype",
                                   "devices"))
def scorecam_weights(head_fn: Callable, tail_fn: Callable, variables: Any, x: jax.Array, features: jax.Array,
                     targets: jax.Array, *, chunk: int, score: str = "logit", channel_softmax: bool = True,
                     compute_dtype=None, devices=None) -> jax.Array:
    """Score-CAM (Wang et al. 2020): the target's score on the image masked by each channel.

    Image b masked by channel k is ``x[b] ⊙ norm(upsample(A[b, ..., k]))``; the full
    network scores it: the perturbation engine (:func:`chipjax.perturb.sweep`) at the input
    with the mask family "upsampled channel k". With the defaults (``score="logit"``,
    ``channel_softmax=True``) the weights are the softmax over channels of the target logits,
    as pytorch-grad-cam computes them; ``score="prob", channel_softmax=False`` gives the
    authors' code (raw target softmax probabilities).

    Args:
      x: ``(B, S, S, 3)``; features: ``(B, H, W, K)``; targets: ``(B,)``.
      chunk: channels per step (``chunk · B`` full-network evaluations).
      compute_dtype, devices: as :func:`ablation_weights`.
    Returns:
      ``(B, K)``.
    """
    size = x.shape[1:3]

    def scores(operands, idx):  # (c,) -> (c, B)
        variables, x = operands
        masked = x[None] * channel_masks(features, idx, size)[..., None].astype(x.dtype)  # (c, B, S, S, 3)
        logits = full_logits(head_fn, tail_fn, variables, masked.reshape((-1,) + x.shape[1:]))
        return target_scores(logits.reshape(masked.shape[:2] + logits.shape[1:]), targets, score)

    operands = perturb.cast_floating((variables, x), compute_dtype)
    s = perturb.sweep(scores, operands, features.shape[-1], chunk=chunk, devices=devices).T  # (B, K)
    return jax.nn.softmax(s, axis=-1) if channel_softmax else s


# ------------------------------------------------------------------------------------------------
# RISE: saliency at the input from random low-resolution masks
# ------------------------------------------------------------------------------------------------


def rise_masks(key: jax.Array, indices: jax.Array, size: tuple[int, int], grid: int = 7,
               keep_prob: float = 0.5) -> jax.Array:
    """RISE masks number ``indices`` of the stream ``key`` (Petsiuk et al. 2018).

    Each is a ``grid × grid`` Bernoulli(``keep_prob``) grid, bilinearly upsampled to
    ``(grid + 1) · cell`` with ``cell = ceil(size / grid)`` and cropped to ``size`` at a
    random shift in ``[0, cell)``. Mask i depends only on ``key`` and i.

    Returns:
      ``(n, *size)`` float32 in [0, 1].
    """
    h, w = size
    cell = (math.ceil(h / grid), math.ceil(w / grid))
    up = ((grid + 1) * cell[0], (grid + 1) * cell[1])

    def one(i):
        u = jax.random.uniform(jax.random.fold_in(key, i), (grid * grid + 2,))  # one draw: cells, then shifts
        coarse = (u[:-2] < keep_prob).astype(jnp.float32).reshape(grid, grid)
        fine = jax.image.resize(coarse, up, method="bilinear", antialias=False)
        dy = jnp.minimum((u[-2] * cell[0]).astype(jnp.int32), cell[0] - 1)
        dx = jnp.minimum((u[-1] * cell[1]).astype(jnp.int32), cell[1] - 1)
        return jax.lax.dynamic_slice(fine, (dy, dx), (h, w))

    return jax.vmap(one)(indices)


@partial(jax.jit, static_argnames=("head_fn", "tail_fn", "num_masks", "chunk", "grid", "keep_prob", "score",
                                   "compute_dtype", "devices"))
def rise_saliency(head_fn: Callable, tail_fn: Callable, variables: Any, x: jax.Array, targets: jax.Array,
                  key: jax.Array, *, num_masks: int, chunk: int, grid: int = 7, keep_prob: float = 0.5,
                  score: str = "prob", compute_dtype=None, devices=None) -> jax.Array:
    """RISE saliency ``Σ_i score_i · mask_i / (N · keep_prob)``, ``(B, S, S)`` (not normalised).

    The perturbation engine (:func:`chipjax.perturb.sweep`, ``reduce="sum"``) at the input with
    the mask family :func:`rise_masks`.

    Args:
      x: ``(B, S, S, 3)``; targets: ``(B,)``; key: PRNG key of the mask stream.
      num_masks: N; chunk: masks per step (``chunk · B`` full-network evaluations).
      compute_dtype, devices: as :func:`ablation_weights`.
    """
    size = x.shape[1:3]

    def weighted(operands, idx):  # (c,) -> (c, B, S, S): score_i · mask_i per mask and image
        variables, x = operands
        masks = rise_masks(key, idx, size, grid, keep_prob)  # (c, S, S)
        masked = x[None] * masks[:, None, :, :, None].astype(x.dtype)  # (c, B, S, S, 3)
        logits = full_logits(head_fn, tail_fn, variables, masked.reshape((-1,) + x.shape[1:]))
        y = target_scores(logits.reshape(masked.shape[:2] + logits.shape[1:]), targets, score)  # (c, B)
        return y[:, :, None, None] * masks[:, None]

    operands = perturb.cast_floating((variables, x), compute_dtype)
    return perturb.sweep(weighted, operands, num_masks, chunk=chunk, reduce="sum", devices=devices) / (
        num_masks * keep_prob)


# ------------------------------------------------------------------------------------------------
# Maps: fn(tap, x, targets, *, features=None, **options) -> (B, S, S) in [0, 1]
# ------------------------------------------------------------------------------------------------


def cam_maps(tap: Tap, x: jax.Array, targets: jax.Array, *, features: jax.Array | None = None) -> jax.Array:
    """CAM heat maps; only at a tap whose tail is global average pooling + linear.

    Raises :class:`InputError` when the gradient of the target logit is not spatially
    constant on these images (a non-linear tail), e.g. inside the last stage. Under ``jit``
    (traced gradients) that check cannot run and is skipped.
    """
    A = feature_maps(tap, x, features)
    grads = target_gradients(tap.tail_fn, tap.variables, A, as_targets(targets))
    if not isinstance(grads, jax.core.Tracer) and float(jnp.max(spatial_spread(grads))) > CAM_TOLERANCE:
        raise InputError(f"CAM needs a tap right before global average pooling + linear, e.g. layer4 / head; "
                         f"use gradcam here (the tail after {tap.layer} is not linear in the pooled features)")
    return heatmap(A, cam_weights(grads), x.shape[1:3])


def gradcam_maps(tap: Tap, x: jax.Array, targets: jax.Array, *, features: jax.Array | None = None) -> jax.Array:
    """Grad-CAM heat maps: channel weights are the spatial mean of each image's own target gradient."""
    A = feature_maps(tap, x, features)
    grads = target_gradients(tap.tail_fn, tap.variables, A, as_targets(targets))
    return heatmap(A, gradcam_weights(grads), x.shape[1:3])


def gradcampp_maps(tap: Tap, x: jax.Array, targets: jax.Array, *, features: jax.Array | None = None) -> jax.Array:
    """Grad-CAM++ heat maps (see :func:`gradcampp_weights`)."""
    A = feature_maps(tap, x, features)
    grads = target_gradients(tap.tail_fn, tap.variables, A, as_targets(targets))
    return heatmap(A, gradcampp_weights(A, grads), x.shape[1:3])


def ablationcam_maps(tap: Tap, x: jax.Array, targets: jax.Array, *, features: jax.Array | None = None,
                     score: str = AblationCamOptions.score, chunk_size: int | None = None,
                     memory_budget: int | str | None = None, compute_dtype=None) -> jax.Array:
    """Ablation-CAM heat maps (see :func:`ablation_weights`); options: :class:`~chipjax.options.AblationCamOptions`.

    Args:
      score: ``logit`` (default, as pytorch-grad-cam), ``prob`` or ``logprob``.
      chunk_size: tail evaluations per step (default 256); memory ∝ chunk_size.
      memory_budget: bytes per device for the sweep (caps the chunk; see
        :func:`chipjax.perturb.items_per_step`).
      compute_dtype: e.g. ``"bfloat16"``: the ablated tails run in it (scores float32).
    """
    options = AblationCamOptions(score=score, chunk_size=chunk_size, memory_budget=memory_budget,
                                 compute_dtype=compute_dtype).check()
    return ablationcam_maps_with(tap, x, targets, options, features)


def ablationcam_maps_with(tap: Tap, x: jax.Array, targets: jax.Array, options: AblationCamOptions,
                          features: jax.Array | None = None) -> jax.Array:
    """:func:`ablationcam_maps` with its options already checked: ``(B, S, S)`` in [0, 1]."""
    A = feature_maps(tap, x, features)
    tail_fn, variables, site = channel_mask_site(tap, A)
    chunk = perturb.items_per_step(tail_fn, variables, site, num_items=A.shape[-1], chunk_size=options.chunk_size,
                                   default=256, memory_budget=options.memory_budget,
                                   compute_dtype=options.compute_dtype)
    entry = None if tap.entry_fn is None else (tap.entry_fn, tap.exit_fn, tap.entry_terms)
    W = ablation_weights(tail_fn, variables, site, as_targets(targets), chunk=chunk, score=options.score,
                         compute_dtype=_dtype(options.compute_dtype), entry=entry)
    return heatmap(A, W, x.shape[1:3])


def scorecam_maps(tap: Tap, x: jax.Array, targets: jax.Array, *, features: jax.Array | None = None,
                  score: str = ScoreCamOptions.score, channel_softmax: bool = ScoreCamOptions.channel_softmax,
                  chunk_size: int | None = None, memory_budget: int | str | None = None,
                  compute_dtype=None) -> jax.Array:
    """Score-CAM heat maps (see :func:`scorecam_weights`; defaults follow pytorch-grad-cam); options:
    :class:`~chipjax.options.ScoreCamOptions`.

    Args:
      score: ``logit`` (default), ``prob`` or ``logprob`` of the target on each masked image.
      channel_softmax: softmax the scores over channels (pytorch-grad-cam) or use them raw.
      chunk_size: full-network evaluations per step (default 64); memory ∝ chunk_size.
      memory_budget, compute_dtype: as :func:`ablationcam_maps`.
    """
    options = ScoreCamOptions(score=score, channel_softmax=channel_softmax, chunk_size=chunk_size,
                              memory_budget=memory_budget, compute_dtype=compute_dtype).check()
    return scorecam_maps_with(tap, x, targets, options, features)


def scorecam_maps_with(tap: Tap, x: jax.Array, targets: jax.Array, options: ScoreCamOptions,
                       features: jax.Array | None = None) -> jax.Array:
    """:func:`scorecam_maps` with its options already checked: ``(B, S, S)`` in [0, 1]."""
    A = feature_maps(tap, x, features)
    chunk = perturb.items_per_step(_whole_network(tap), tap.variables, x, num_items=A.shape[-1],
                                   chunk_size=options.chunk_size, default=64, memory_budget=options.memory_budget,
                                   compute_dtype=options.compute_dtype)
    W = scorecam_weights(tap.head_fn, tap.tail_fn, tap.variables, x, A, as_targets(targets), chunk=chunk,
                         score=options.score, channel_softmax=options.channel_softmax,
                         compute_dtype=_dtype(options.compute_dtype))
    return heatmap(A, W, x.shape[1:3])


def rise_maps(tap: Tap, x: jax.Array, targets: jax.Array, *, features: jax.Array | None = None,
              num_masks: int = RiseOptions.num_masks, seed: int = RiseOptions.seed, grid: int = RiseOptions.grid,
              keep_prob: float = RiseOptions.keep_prob, score: str = RiseOptions.score,
              chunk_size: int | None = None, memory_budget: int | str | None = None, compute_dtype=None) -> jax.Array:
    """RISE heat maps at the input (the tap's feature maps are not used; head and tail both run); options:
    :class:`~chipjax.options.RiseOptions`.

    Args:
      num_masks: N random masks (the paper used 4000; at most 2²⁴ as for CHIP).
      seed: seed of the mask stream (same seed -> same masks -> same maps, whatever the chunk).
      grid: side of the coarse Bernoulli grid (paper: 7).
      keep_prob: probability a grid cell is kept (paper: 0.5).
      score: ``prob`` (default, as the paper), ``logit`` or ``logprob``.
      chunk_size: full-network evaluations per step (default 64); memory ∝ chunk_size.
      memory_budget, compute_dtype: as :func:`ablationcam_maps`.
      features: ignored (accepted so every method has the same signature).
    Returns:
      ``(B, S, S)`` in [0, 1].
    """
    options = RiseOptions(num_masks=num_masks, seed=seed, grid=grid, keep_prob=keep_prob, score=score,
                          chunk_size=chunk_size, memory_budget=memory_budget, compute_dtype=compute_dtype).check()
    return rise_maps_with(tap, x, targets, options, features)


def rise_maps_with(tap: Tap, x: jax.Array, targets: jax.Array, options: RiseOptions,
                   features: jax.Array | None = None) -> jax.Array:
    """:func:`rise_maps` with its options already checked: ``(B, S, S)`` in [0, 1]."""
    del features
    o = options
    chunk = perturb.items_per_step(_whole_network(tap), tap.variables, x, num_items=o.num_masks,
                                   chunk_size=o.chunk_size, default=64, memory_budget=o.memory_budget,
                                   compute_dtype=o.compute_dtype)
    sal = rise_saliency(tap.head_fn, tap.tail_fn, tap.variables, x, as_targets(targets), jax.random.PRNGKey(o.seed),
                        num_masks=o.num_masks, chunk=chunk, grid=o.grid, keep_prob=o.keep_prob, score=o.score,
                        compute_dtype=_dtype(o.compute_dtype))
    return normalize01(sal)


def _whole_network(tap: Tap) -> Callable:
    """``(variables, x) -> logits``: the site function of the input-masking methods (for memory estimates)."""
    return lambda variables, x: full_logits(tap.head_fn, tap.tail_fn, variables, x)


def _dtype(compute_dtype):
    """A hashable dtype (static jit argument) or None."""
    return None if compute_dtype is None else jnp.dtype(compute_dtype)


# ------------------------------------------------------------------------------------------------
# Argument checks shared by the map functions
# ------------------------------------------------------------------------------------------------


def feature_maps(tap: Tap, x: jax.Array, features: jax.Array | None) -> jax.Array:
    """``tap.head(x)`` unless given; :class:`InputError` unless it is a ``(B, H, W, K)`` feature map."""
    A = tap.head(x) if features is None else features
    if A.ndim != 4:
        raise InputError(f"the tap {tap.layer} gives features of shape {A.shape}, not feature maps (B, H, W, K); "
                         f"tap a convolutional layer, e.g. the last conv stage")
    return A


def as_targets(targets) -> jax.Array:
    """``(B,)`` int32 class per image."""
    return jnp.asarray(targets, jnp.int32).reshape(-1)


#: Baseline name -> map function taking checked options, ``fn(tap, x, targets, options, features)``
#: (``options`` from :data:`chipjax.options.METHOD_OPTIONS`), for :func:`chipjax.explain`.
MAPS_WITH_OPTIONS: dict[str, Callable[..., jax.Array]] = {
    "cam": lambda tap, x, targets, options, features=None: cam_maps(tap, x, targets, features=features),
    "gradcam": lambda tap, x, targets, options, features=None: gradcam_maps(tap, x, targets, features=features),
    "gradcam++": lambda tap, x, targets, options, features=None: gradcampp_maps(tap, x, targets, features=features),
    "ablationcam": ablationcam_maps_with,
    "scorecam": scorecam_maps_with,
    "rise": rise_maps_with,
}

#: Baseline name -> its public map function ``fn(tap, x, targets, *, features=None, **options)``.
MAP_FUNCTIONS: dict[str, Callable[..., jax.Array]] = {
    "cam": cam_maps,
    "gradcam": gradcam_maps,
    "gradcam++": gradcampp_maps,
    "ablationcam": ablationcam_maps,
    "scorecam": scorecam_maps,
    "rise": rise_maps,
}
