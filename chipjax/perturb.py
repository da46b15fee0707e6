"""Network perturbation: channel masks, the scores of the perturbed tails, and their statistics.

Mask ``i`` is drawn from ``fold_in(key, i)``, so the mask set depends only on the seed and
the mask count, never on the chunk size or the device layout. The tail runs on ``A ⊙ m``
under ``vmap`` over the masks of one chunk (images × masks in one batch); chunks run under
``lax.scan`` inside one jit, folding their (mask, score) pairs into on-device sums, so peak
memory is one chunk of tail activations whatever the mask count and nothing goes back to
the host inside the loop.

Shapes: ``A (B, H, W, K)`` feature maps of B images at the tap; masks ``(N, K)``;
scores ``(N, B, C)`` (softmax probabilities or logits of C classes).

How the statistics are streamed (all exact up to float32 rounding):

* Every image sees the same masks, so the mask part of the statistics (count, ``Σ m``,
  ``Σ m mᵀ``) is computed once for all B images. Masks are 0/1, so these sums are integers,
  accumulated *uncentred* and exactly (float32 holds integers below 2²⁴; hence at most 2²⁴
  masks per call) and centred once at the end. The Gram ``Σ m mᵀ`` (N·K² multiply-adds, as
  much as a whole ResNet-50 layer4 tail) depends on the mask stream only: with a concrete key
  it is computed once per stream and cached (:func:`mask_gram`), so a sweep over many images
  with one seed pays it once; under an outer ``jit`` (traced key) it is accumulated in the
  loop. On GPU/TPU it multiplies bfloat16 inputs with float32 accumulation — still exact.
* Scores are accumulated *shifted* by their mean over the first chunk (the shifted-data
  algorithm: ``Σ m (y − c)``, ``Σ (y − c)``, ``Σ (y − c)²``), which keeps the centred
  co-moments accurate without a merge per chunk (a Chan merge of the K × K co-moment per
  chunk cost more than the tail itself on XLA:CPU).
* With several local devices, each runs its own slice of the mask numbers under
  ``shard_map`` over a 1-D :class:`jax.sharding.Mesh` (axis ``"masks"``); the per-device
  statistics are pooled with :func:`chipjax.stats.psum_merge` (one psum per field).

Options for speed and memory: ``compute_dtype=jnp.bfloat16`` runs the tail in bf16 (the
statistics stay float32); ``memory_budget`` (bytes) picks the chunk from a per-evaluation
activation estimate (:func:`tail_memory`) and raises
:class:`~chipjax.errors.ResourceError` before anything runs when even one perturbed
evaluation of the B images cannot fit. Nothing in the sweep is worth donating: the features
stay with the caller (heat maps) and XLA updates the scan's sums in place.

Over 500 lines on purpose: it is the one engine every perturbation method runs on (mask families, sites,
the chunking rule, the memory budget, sharding, the reducers); a method only adds its weighting rule.
"""
from __future__ import annotations

import math
from collections import Counter, OrderedDict
from functools import partial
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import stats as st
from .errors import InputError, ResourceError

SCORES = ("prob", "logit", "logprob")

#: Mask designs of :func:`sample_masks`; ``"iid"`` is the paper's reading and the default.
DESIGNS = ("iid", "balanced")

#: Most masks one call can stream: the exact integer mask sums live in float32 (2²⁴).
MAX_MASKS = 2 ** 24

#: Name of the device-mesh axis the masks are sharded over.
MASK_AXIS = "masks"

#: Axes of a :class:`~chipjax.stats.Stats` of B images in the *shared* layout (see
#: :func:`shared_perturbation_stats`): the mask fields carry no image axis, the score fields do.
SHARED_AXES = st.Stats(count=None, mask_mean=None, score_mean=0, mask_comoment=None, cross_comoment=0,
                       score_sqdev=0)

_HIGHEST = lax.Precision.HIGHEST


# ------------------------------------------------------------------------------------------------
# Checks and chunk sizes
# ------------------------------------------------------------------------------------------------


def check_perturbation_args(num_masks: int, keep_prob: float, chunk_size: int, score: str = "prob") -> None:
    """Raise :class:`InputError` for a mask count, keep probability, chunk size or score that cannot work."""
    if isinstance(num_masks, bool) or not isinstance(num_masks, (int, np.integer)) or num_masks < 2:
        raise InputError(f"num_masks must be an integer ≥ 2 (a lasso needs several perturbed networks), got {num_masks!r}")
    if num_masks > MAX_MASKS:
        raise InputError(f"num_masks must be at most 2**24 = {MAX_MASKS} per call (exact float32 mask sums); "
                         f"got {num_masks}. Use fewer masks, or run several seeds and merge with chipjax.stats.merge")
    if not (0.0 < float(keep_prob) < 1.0):
        raise InputError(f"keep_prob must lie strictly between 0 and 1, got {keep_prob!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise InputError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if score not in SCORES:
        raise InputError(f"score must be one of {', '.join(SCORES)}, got {score!r}")


def check_seed(seed) -> int:
    """A mask seed as int; :class:`InputError` unless it is a whole number in ``[0, 2**63)``."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2 ** 63:
        raise InputError(f"seed must be a whole number in [0, 2**63), got {seed!r}")
    return int(seed)


#: perturbed evaluations per step when neither a chunk nor a memory budget is given (GPU/TPU; CPU: below)
DEFAULT_EVALS_PER_STEP = 256


def default_chunk(num_masks: int, batch: int, evals_per_step: int = DEFAULT_EVALS_PER_STEP) -> int:
    """A chunk of about ``evals_per_step`` perturbed evaluations per step."""
    return max(1, min(num_masks, math.ceil(evals_per_step / max(1, batch))))


#: XLA:CPU runs heavy tails faster in small steps (the step's activations stay in cache): a tail of at least
#: this many FLOPs per evaluation gets small steps on CPU (:func:`cpu_evals_per_step`). Measured at B = 1
#: (ms per evaluation, 16 vs 256 per step): ResNet-50 ``layer3`` (1.5 GFLOP) 11.6 vs 15.9, Lite0
#: ``blocks.15.expand`` (81 MFLOP) 0.57 vs 0.68; at B = 8: 14.8 vs 17.1 and 0.57 vs 0.63. Light tails (ResNet-50
#: ``layer4``, Lite0 ``head``: 3–4 MFLOP, per-step overheads dominate) keep large steps: at B = 8 16 per step
#: cost them 10–30 % against 256 (:data:`LIGHT_TAIL_EVALS_CPU`). On GPU/TPU every tail keeps
#: :data:`DEFAULT_EVALS_PER_STEP`. The baselines' sweeps (:func:`items_per_step`) take the same rule; B = 1,
#: ms per evaluation, 16 vs their old default: Ablation-CAM at ResNet-50 ``layer3`` 13.3 vs 18.7 (256),
#: Score-CAM on Lite0 (whole network) 11.5 vs 13.3 (64), RISE 10.6 vs 11.3 (64).
HEAVY_TAIL_FLOPS = 5e7
#: The smallest step of a heavy tail on CPU. Re-measured on a second instance of the 2-core AVX-512 CPU
#: (2026-12-07, with :func:`~chipjax.models.layers.conv_winograd`), ms per evaluation at 8 / 16 / 32 per
#: step: ResNet-50 ``layer3`` 3.70 / 3.55 / 3.63, ``layer2`` 10.35 / 10.09 / 10.67, ResNet-18 ``layer3``
#: 1.63 / 1.54 / 1.63, Lite0 ``blocks.5.expand`` 2.24 / 2.19 / 2.18, ``blocks.11.expand`` 0.95 / 0.92 /
#: 0.94. (The first instance, 2026-12-03, without Winograd: ResNet-50 ``layer3`` 4.3 at 8 against 5.0 at 16.)
HEAVY_TAIL_EVALS = 16
#: FLOPs per byte of tail weights a heavy step must reach, so that reading the weights once per step is
#: small next to the arithmetic. VGG-16 ``features.28``, whose tail is 0.5 GB of fully connected weights
#: for 0.25 GFLOP per evaluation, gets the default step (measured 2026-12-03: 0.82 ms per evaluation at
#: 128 per step against 1.57 at 16 and 2.3 at 8). 160 (2026-12-07, 64 before): Lite0 ``blocks.15.expand``
#: (79 MFLOP and 8.5 MB of weights, 5 MB of them its classifier, per evaluation) then steps 32, not 16 —
#: explain, 2 048 masks, three alternating processes, ms at 16 / 32 / 64 per step: 479–482 / 448–453 /
#: 457–459; every other tap measured above keeps 16 (their tails need 16 or fewer at 160).
STEP_WEIGHT_INTENSITY = 160.0
#: Evaluations per step of a light tail on CPU. Same CPU and date, ms per 2 048-mask sweep at
#: 32 / 64 / 128 / 256 / 512 masks per step (B = 1): Lite0 ``head`` 39.9 / 34.4 / 31.9 / 42.5 / 38.7,
#: ResNet-50 ``layer4`` 54.4 / 52.6 / 50.5 / 72.2 / 63.6.
LIGHT_TAIL_EVALS_CPU = 128
_TAIL_COSTS: dict = {}


class TailCost(NamedTuple):
    """One tail's cost: ``flops`` per evaluation and ``weight_bytes`` (the variables it reads, once per step)."""

    flops: float
    weight_bytes: float


def tail_cost(tail_fn: Callable, variables: Any, features: jax.Array) -> TailCost | None:
    """:class:`TailCost` of the tail on ``features (B, H, W, K)``'s shape, or None if XLA gives none.

    ``flops``: XLA's cost analysis of the tail lowered at batch 1 (nothing compiled or run).
    ``weight_bytes``: the bytes of the leaves of ``variables`` the traced tail uses (the head's
    weights share the tree but not the tail). Cached per tail and shape.
    """
    leaves, treedef = jax.tree.flatten(variables)
    key = (tail_fn, treedef, tuple((jnp.shape(x), str(getattr(x, "dtype", None) or np.result_type(x))) for x in leaves),
           tuple(features.shape[1:]), str(features.dtype))
    if key not in _TAIL_COSTS:
        if len(_TAIL_COSTS) >= 256:  # taps made on the fly (lambdas): keep the cache bounded
            _TAIL_COSTS.clear()
        _TAIL_COSTS[key] = _lowered_tail_cost(tail_fn, variables, features, num_leaves=len(leaves))
    return _TAIL_COSTS[key]


def _lowered_tail_cost(tail_fn: Callable, variables: Any, features: jax.Array, *, num_leaves: int) -> TailCost | None:
    spec = jax.ShapeDtypeStruct((1, *features.shape[1:]), features.dtype)
    abstract = _abstract(variables, None)
    try:
        traced = jax.jit(tail_fn).trace(abstract, spec)  # one trace: its jaxpr and its lowering
        closed, cost = traced.jaxpr, traced.lower().cost_analysis()
    except Exception:  # a backend without cost analysis: no rule, the default chunk
        return None
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    if not cost or "flops" not in cost:
        return None
    used = {id(v) for eqn in closed.jaxpr.eqns for v in eqn.invars} | {id(v) for v in closed.jaxpr.outvars}
    weights = closed.jaxpr.invars[:num_leaves]  # the variables' leaves, in order, then the features
    weight_bytes = sum(math.prod(v.aval.shape) * v.aval.dtype.itemsize for v in weights if id(v) in used)
    return TailCost(flops=float(cost["flops"]), weight_bytes=float(weight_bytes))


def cpu_evals_per_step(tail_fn: Callable, variables: Any, features: jax.Array, platform: str) -> int:
    """Default perturbed evaluations per step (no chunk, no budget given).

    :data:`DEFAULT_EVALS_PER_STEP` on GPU/TPU (and on CPU when XLA gives no cost). On CPU a light
    tail gets :data:`LIGHT_TAIL_EVALS_CPU`; a heavy one (:data:`HEAVY_TAIL_FLOPS`) gets
    :data:`HEAVY_TAIL_EVALS`, raised to the next power of two that reads its weights at
    :data:`STEP_WEIGHT_INTENSITY` FLOPs per byte, at most :data:`DEFAULT_EVALS_PER_STEP`.
    """
    if platform != "cpu":
        return DEFAULT_EVALS_PER_STEP
    cost = tail_cost(tail_fn, variables, features)
    if cost is None:
        return DEFAULT_EVALS_PER_STEP
    if cost.flops < HEAVY_TAIL_FLOPS:
        return LIGHT_TAIL_EVALS_CPU
    needed = STEP_WEIGHT_INTENSITY * cost.weight_bytes / cost.flops
    evals = HEAVY_TAIL_EVALS
    while evals < needed and evals < DEFAULT_EVALS_PER_STEP:
        evals *= 2
    return evals


def masks_per_step(evals_per_step: int, batch: int) -> int:
    """Masks (or channels) per step so that a step runs about ``evals_per_step`` evaluations of ``batch`` images.

    The user-facing knob (``chunk_size``) counts perturbed *evaluations*; the engine's ``chunk``
    counts masks: this is the one conversion between them.
    """
    return max(1, int(evals_per_step) // max(1, int(batch)))


# ------------------------------------------------------------------------------------------------
# Masks, perturbed tails, scores
# ------------------------------------------------------------------------------------------------


def sample_masks(key: jax.Array, indices: jax.Array, num_channels: int, keep_prob: float = 0.5,
                 design: str = "iid") -> jax.Array:
    """Masks number ``indices`` of the stream defined by ``key``.

    Row ``j`` depends only on ``key`` and ``indices[j]`` (its own ``fold_in(key, i)``), so a
    mask never depends on the chunk or device it is drawn in.

    Args:
      key: PRNG key of the whole mask stream.
      indices: ``(n,)`` int mask numbers.
      num_channels: K.
      keep_prob: probability that a channel stays on.
      design: how the masks are drawn (:data:`DESIGNS`):

        * ``"iid"`` (the paper's reading): independent Bernoulli draws. At ``keep_prob = 0.5``
          (the default) each is one random bit, exactly Bernoulli(0.5) (2 048 × 2 048 masks:
          1 against 9.5 ms on 2 CPU cores — the draws were a fifth of a sweep at light taps);
          otherwise each comes from 16 random bits (``keep_prob`` resolved to 2⁻¹⁶), 3× cheaper
          than ``jax.random.bernoulli``;
        * ``"balanced"``: exactly ``round(keep_prob * K)`` channels on, a uniformly random
          subset drawn by selection sampling (Knuth's Algorithm S).

        Antithetic pairs (each mask with its complement) were tried and dropped: a pair spans
        one direction of mask space, not two, and maps needed about twice the masks for the
        same seed stability (``benchmarks/RESULTS.md``, mask designs).
    Returns:
      ``(n, K)`` float32 of 0/1.
    """
    indices = jnp.asarray(indices)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(indices)
    if design == "iid" and float(keep_prob) == 0.5:
        return jax.vmap(lambda k: _random_bits(k, num_channels))(keys).astype(jnp.float32)
    if design == "iid":
        threshold = jnp.uint32(round(float(keep_prob) * 65536))
        return jax.vmap(lambda k: _uniform16(k, num_channels) < threshold)(keys).astype(jnp.float32)
    if design != "balanced":
        raise InputError(f"unknown mask design {design!r}; choose one of {', '.join(DESIGNS)}")
    u = jax.vmap(lambda k: jax.random.uniform(k, (num_channels,)))(keys)  # (n, K)
    return _selection_sample(u, int(round(keep_prob * num_channels)))


def _random_bits(key: jax.Array, size: int) -> jax.Array:
    """``(size,)`` uint32 of independent fair bits (0 or 1): the 32 bits of ``ceil(size / 32)`` random words."""
    words = jax.random.bits(key, (-(-size // 32),), jnp.uint32)
    return ((words[:, None] >> jnp.arange(32, dtype=jnp.uint32)) & 1).reshape(-1)[:size]


def _uniform16(key: jax.Array, size: int) -> jax.Array:
    """``(size,)`` uint32 uniform on ``0 … 65535``: both 16-bit halves of ``ceil(size / 2)`` random words."""
    words = jax.random.bits(key, ((size + 1) // 2,), jnp.uint32)
    return jnp.stack([words >> 16, words & 0xFFFF], axis=-1).reshape(-1)[:size]


def _selection_sample(u: jax.Array, keep: int) -> jax.Array:
    """Algorithm S over the channels: keep channel j when ``u_j (K − j) < keep − kept so far``.

    ``u (n, K)`` uniforms in [0, 1) -> ``(n, K)`` float32 with exactly ``keep`` ones per row,
    every subset equally likely. One ``lax.scan`` over K vectorised over the n masks (a sort
    per mask is 15–40× slower on CPU).
    """
    num_channels = u.shape[-1]

    def step(kept, xs):
        u_j, j = xs
        take = u_j * (num_channels - j) < (keep - kept)
        return kept + take, take

    remaining = jnp.arange(num_channels, dtype=jnp.float32)
    _, taken = lax.scan(step, jnp.zeros(u.shape[:1], jnp.float32), (u.T, remaining))
    return taken.T.astype(jnp.float32)


def scores_from_logits(logits: jax.Array, score: str) -> jax.Array:
    """``(..., C)`` logits -> the score CHIP regresses: ``prob`` (softmax), ``logit`` or ``logprob``."""
    if score == "prob":
        return jax.nn.softmax(logits, axis=-1)
    if score == "logprob":
        return jax.nn.log_softmax(logits, axis=-1)
    return logits


def perturbed_logits(tail_fn: Callable, variables: Any, features: jax.Array, masks: jax.Array) -> jax.Array:
    """Logits of every image under every mask.

    Args:
      tail_fn: ``(variables, (B, H, W, K)) -> (B, C)``.
      features: ``(B, H, W, K)``.
      masks: ``(n, K)``; a mask scales channels (0 switches one off).
    Returns:
      ``(n, B, C)``.
    """
    return jax.vmap(lambda m: tail_fn(variables, features * m.astype(features.dtype)))(masks)


def select_classes(scores: jax.Array, classes: jax.Array | None) -> jax.Array:
    """``(n, B, C)`` scores -> ``(n, B, C')`` of the classes wanted per image (``classes (B, C')``) or all."""
    if classes is None:
        return scores
    return jnp.take_along_axis(scores, classes[None], axis=-1)


def cast_floating(tree: Any, dtype) -> Any:
    """Every floating leaf of ``tree`` cast to ``dtype`` (integer leaves untouched); ``dtype=None``: as is."""
    if dtype is None:
        return tree
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a, tree)


# ------------------------------------------------------------------------------------------------
# Streamed statistics
# ------------------------------------------------------------------------------------------------


def perturbation_stats(tail_fn: Callable, variables: Any, features: jax.Array, key: jax.Array, *,
                       num_masks: int, chunk: int | None = None, keep_prob: float = 0.5, design: str = "iid",
                       score: str = "prob", classes: jax.Array | None = None, compute_dtype=None,
                       memory_budget: int | None = None, devices: Sequence[jax.Device] | None = None) -> st.Stats:
    """Stream ``num_masks`` perturbed tails into per-image sufficient statistics.

    Args:
      tail_fn: ``(variables, (B, H, W, K)) -> (B, C)`` logits.
      variables: the tail's weights.
      features: ``(B, H, W, K)`` feature maps at the tap (the head ran once per image).
      key: PRNG key of the mask stream.
      num_masks: N perturbed networks (≤ 2²⁴).
      chunk: masks per step, each step running ``chunk · B`` tail evaluations (peak
        memory ≈ ``chunk · B`` tail activations). Default: from ``memory_budget`` if
        given, else :func:`default_chunk` of :func:`cpu_evals_per_step` evaluations. With a budget too,
        the smaller of the two.
      keep_prob, design: see :func:`sample_masks`.
      score: ``prob`` | ``logit`` | ``logprob``.
      classes: optional ``(B, C')`` int classes to keep per image (default: all C).
      compute_dtype: e.g. ``jnp.bfloat16``: the tail (weights, features, masks) runs in
        this dtype; scores and statistics stay float32. ``None``: the features' dtype.
      memory_budget: bytes one device may use for the sweep (see :func:`chunk_for_memory`);
        :class:`~chipjax.errors.ResourceError` if one evaluation of the B images cannot fit.
      devices: devices to shard the masks over (default: every local device; with one
        device nothing is sharded). Same stats whatever the devices, up to rounding.
    Returns:
      :class:`chipjax.stats.Stats` with a leading batch axis B on every field: masks ``(K,)``
      and scores ``(C',)`` per image. The mask fields are the same for every image.
    """
    shared = shared_perturbation_stats(tail_fn, variables, features, key, num_masks=num_masks, chunk=chunk,
                                       keep_prob=keep_prob, design=design, score=score, classes=classes,
                                       compute_dtype=compute_dtype, memory_budget=memory_budget, devices=devices)
    return expand_shared(shared, features.shape[0])


def shared_perturbation_stats(tail_fn: Callable, variables: Any, features: jax.Array, key: jax.Array, *,
                              num_masks: int, chunk: int | None = None, keep_prob: float = 0.5,
                              design: str = "iid", score: str = "prob", classes: jax.Array | None = None,
                              compute_dtype=None, memory_budget: int | None = None,
                              devices: Sequence[jax.Device] | None = None, first: int = 0) -> st.Stats:
    """:func:`perturbation_stats` in the *shared* layout (:data:`SHARED_AXES`).

    ``count ()``, ``mask_mean (K,)``, ``mask_comoment (K, K)`` once for all images;
    ``score_mean (B, C')``, ``cross_comoment (B, K, C')``, ``score_sqdev (B, C')`` per image.
    Saves the ``B`` copies of the ``(K, K)`` mask co-moment; :func:`expand_shared` gives the
    batched layout.

    With a concrete ``key`` (not traced inside an outer ``jit``) the mask Gram comes from
    :func:`mask_gram`'s cache, so a sweep over many images with one seed computes it once.
    ``first``: number of the first mask (default 0): masks ``first … first + num_masks − 1`` of
    the stream, so that rounds of one stream (``num_masks="auto"``) draw disjoint masks.
    """
    batch, num_channels = features.shape[0], features.shape[-1]
    check_perturbation_args(num_masks, keep_prob, 1 if chunk is None else chunk, score)
    devices = tuple(jax.local_devices() if devices is None else devices)
    if not devices:
        raise InputError("devices must name at least one device")
    per_device = -(-int(num_masks) // len(devices))
    if memory_budget is not None:
        fit = chunk_for_memory(tail_fn, variables, features, num_masks=per_device, memory_budget=memory_budget,
                               compute_dtype=compute_dtype, num_classes=None if classes is None else classes.shape[-1])
        chunk = fit if chunk is None else min(int(chunk), fit)
    elif chunk is None:
        chunk = default_chunk(per_device, batch, cpu_evals_per_step(tail_fn, variables, features, devices[0].platform))
    if classes is not None and (classes.ndim != 2 or classes.shape[0] != batch):
        raise InputError(f"classes must have shape (B, C') = ({batch}, C'); got {classes.shape}")
    gram = None
    if _key_identity(key) is not None:  # not traced: the mask Gram can come from the cache
        gram = mask_gram(key, num_masks=int(num_masks), num_channels=num_channels, keep_prob=keep_prob,
                         design=design, first=first)
    if isinstance(first, bool) or not isinstance(first, (int, np.integer)) or not 0 <= first <= MAX_MASKS:
        raise InputError(f"first must be a mask number in [0, 2**24], got {first!r}")
    return _shared_stats_jit(tail_fn, variables, features, key, classes, gram, jnp.int32(first),
                             num_masks=int(num_masks),
                             chunk=min(int(chunk), per_device), keep_prob=float(keep_prob), design=str(design),
                             score=score, compute_dtype=None if compute_dtype is None else jnp.dtype(compute_dtype),
                             devices=devices, gram_mode=mask_gram_mode(devices[0].platform), K=num_channels)


def expand_shared(stats: st.Stats, batch: int) -> st.Stats:
    """Shared-layout stats (:data:`SHARED_AXES`) -> the batched layout: every field with a leading ``(B,)``."""
    return st.Stats(*(field if axis == 0 else jnp.broadcast_to(field, (batch,) + jnp.shape(field))
                      for field, axis in zip(stats, SHARED_AXES)))


def _chunk_sums(masks: jax.Array, scores: jax.Array, valid: jax.Array | None, shift: jax.Array | None,
                gram_mode: str | None) -> st.Sums:
    """:func:`chipjax.stats.chunk_sums` of one chunk, ``valid (n,)`` bool or None (all); ``gram_mode``
    None skips the mask Gram (it comes from the per-stream cache)."""
    weights = None if valid is None else valid.astype(jnp.float32)
    gram = None if gram_mode is None else (lambda weighted, masks: _mask_gram(weighted, masks, gram_mode))
    return st.chunk_sums(masks, scores, weights, shift, gram)


def _stream(chunk_fn: Callable, count: int, chunk: int):
    """Fold ``chunk_fn(offset, size, acc)`` over the items ``0 … count − 1``, ``chunk`` at a time.

    The first call gets ``acc=None`` and returns the accumulator; later calls return the
    updated accumulator. Full chunks run under ``lax.scan``; a shorter last chunk is traced
    separately, so no item is computed twice and none is padded.
    """
    first = min(chunk, count)
    full, rest = divmod(count - first, chunk)
    acc = chunk_fn(0, first, None)
    if full:
        acc, _ = lax.scan(lambda acc, step: (chunk_fn(first + step * chunk, chunk, acc), None), acc,
                          jnp.arange(full))
    if rest:
        acc = chunk_fn(first + full * chunk, rest, acc)
    return acc


def _after(acc: Any, operand: Any) -> Any:
    """``operand``, as a value that exists only once ``acc`` does (None: as is).

    A chunk's tail evaluation reads the chunk's own masks and the shared site input. Two chunks in
    straight-line code (the first chunk and a one-trip scan, which XLA unrolls) then share that
    input, and XLA:CPU ran the pair 3× slower than the two chunks in a loop (Lite0 ``head``, 2 × 128
    masks: 13.6 against 4.2 ms in a scan); read through this barrier they run as in the loop (4.4 ms).
    """
    return operand if acc is None else lax.optimization_barrier((acc, operand))[1]


def _device_sums(tail_fn, variables, features, key, classes, first, start, *, count, num_masks, chunk, keep_prob,
                 design, score, gram_mode, padded) -> st.Sums:
    """Sums over the masks ``first + start … first + start + count − 1`` on one device (``padded``: some
    of them may lie past the call's ``num_masks``; those weigh 0). ``gram_mode None``: no mask Gram."""
    num_channels = features.shape[-1]

    def chunk_fn(offset, size, acc):
        local = start + offset + jnp.arange(size)  # numbers within this call's masks
        masks = sample_masks(key, first + local, num_channels, keep_prob, design)
        logits = perturbed_logits(tail_fn, variables, _after(acc, features), masks)
        y = select_classes(scores_from_logits(logits.astype(jnp.float32), score), classes)  # (n, B, C')
        valid = (local < num_masks) if padded else None
        part = _chunk_sums(masks, y, valid, None if acc is None else acc.shift, gram_mode)
        return part if acc is None else st.add_sums(acc, part)

    return _stream(chunk_fn, count, chunk)


@partial(jax.jit, static_argnames=("tail_fn", "num_masks", "chunk", "keep_prob", "design", "score",
                                   "compute_dtype", "devices", "gram_mode", "K"))
def _shared_stats_jit(tail_fn, variables, features, key, classes, gram, first, *, num_masks, chunk, keep_prob, design,
                      score, compute_dtype, devices, gram_mode, K):
    """The sweep over masks ``first … first + num_masks − 1`` (``first`` traced: rounds share one compilation).

    ``gram``: the cached uncentred mask Gram ``(K, K)``, or None to compute it in the loop."""
    del K  # part of the cache key only
    variables = cast_floating(variables, compute_dtype)
    features = features if compute_dtype is None else features.astype(compute_dtype)
    num_devices = len(devices)
    per_device = -(-num_masks // num_devices)
    options = dict(count=per_device, num_masks=num_masks, chunk=chunk, keep_prob=keep_prob, design=design,
                   score=score, gram_mode=gram_mode if gram is None else None,
                   padded=per_device * num_devices != num_masks)
    if num_devices == 1:
        return st.stats_from_sums(_device_sums(tail_fn, variables, features, key, classes, first, 0, **options), gram)

    def shard(variables, features, key, classes, first):
        start = lax.axis_index(MASK_AXIS) * per_device
        sums = _device_sums(tail_fn, variables, features, key, classes, first, start, **options)
        if gram is not None:  # placeholder: the pooled co-moment is set from the global Gram below
            sums = sums._replace(mask_gram=jnp.zeros((features.shape[-1],) * 2))
        local = st.stats_from_sums(sums)
        return jax.vmap(lambda s: st.psum_merge(s, MASK_AXIS), in_axes=(SHARED_AXES,), out_axes=SHARED_AXES)(local)

    mesh = jax.sharding.Mesh(np.asarray(devices), (MASK_AXIS,))
    replicated = jax.sharding.PartitionSpec()
    pooled = jax.shard_map(shard, mesh=mesh, in_specs=replicated, out_specs=replicated, check_vma=False)(
        variables, features, key, classes, first)
    if gram is None:
        return pooled
    return pooled._replace(mask_comoment=gram - jnp.outer(pooled.mask_mean, pooled.mask_mean * pooled.count))


# ------------------------------------------------------------------------------------------------
# The mask Gram: exact, and cached per mask stream
# ------------------------------------------------------------------------------------------------

_STREAM_CACHE: "OrderedDict[tuple, dict]" = OrderedDict()
#: Mask streams whose quantities are kept, at most, and the most bytes they may hold (the Gram is
#: ``K × K`` float32: 16 MiB at K = 2048; ``num_masks="auto"`` keeps one stream per round of 256 masks,
#: 32 of them at its default cap of 8 192: 512 MiB at K = 2048, which must fit with room to spare — an
#: LRU one entry too small for a loop over images recomputes every round: ResNet-50 ``layer4`` with auto
#: at 1.39 s per image against 1.09 s).
GRAM_CACHE_SIZE = 64
GRAM_CACHE_BYTES = 640 * 2 ** 20
#: How often each per-stream quantity was computed rather than taken from the cache, by name
#: (``"gram"`` here; ``"lipschitz"``, ``"lipschitz/half"``, ``"lipschitz/all"`` in
#: :func:`chipjax.chip.stream_lipschitz`): what tests count.
STREAM_COMPUTATIONS: Counter = Counter()


def stream_identity(key: jax.Array, *, num_masks: int, num_channels: int, keep_prob: float = 0.5,
                    design: str = "iid", first: int = 0) -> tuple | None:
    """Hashable identity of the masks ``first … first + N − 1`` of a stream; None when ``key`` is traced."""
    identity = _key_identity(key)
    if identity is None:
        return None
    return (identity, int(num_masks), int(num_channels), float(keep_prob), str(design), int(first))


def cached_for_stream(identity: tuple, name: str, compute: Callable[[], Any]) -> Any:
    """``compute()`` once per mask stream ``identity`` (:func:`stream_identity`) and ``name``; later calls
    return the kept value. Anything that depends on the masks alone (the Gram, its top eigenvalue)
    lives here, in an LRU of :data:`GRAM_CACHE_SIZE` streams (:func:`clear_mask_cache` empties it)."""
    entry = _STREAM_CACHE.get(identity)
    if entry is None:
        entry = _STREAM_CACHE[identity] = {}
    _STREAM_CACHE.move_to_end(identity)
    if name not in entry:
        entry[name] = compute()
        STREAM_COMPUTATIONS[name] += 1
    while len(_STREAM_CACHE) > 1 and (len(_STREAM_CACHE) > GRAM_CACHE_SIZE or _cache_bytes() > GRAM_CACHE_BYTES):
        _STREAM_CACHE.popitem(last=False)
    return entry[name]


def _cache_bytes() -> int:
    return sum(int(np.prod(np.shape(v))) * 4 for entry in _STREAM_CACHE.values() for v in entry.values())


def mask_gram(key: jax.Array, *, num_masks: int, num_channels: int, keep_prob: float = 0.5,
              design: str = "iid", first: int = 0) -> jax.Array:
    """``(K, K)`` float32 ``Σ_i m_i m_iᵀ`` over the masks ``first … first + N − 1`` of the stream (exact integers).

    It depends only on the mask stream — the same for every image explained with one seed — so
    it is computed once per (key, N, K, keep_prob, design, first), in a pass of its own over the
    masks in large blocks, and kept by :func:`cached_for_stream`. ``key`` must be concrete,
    outside any ``jit`` trace.
    """
    identity = stream_identity(key, num_masks=num_masks, num_channels=num_channels, keep_prob=keep_prob,
                               design=design, first=first)
    if identity is None:
        raise InputError("mask_gram needs a concrete key (call it outside jit)")

    def compute():
        platform = jax.local_devices()[0].platform
        return _mask_gram_jit(key, jnp.int32(first), num_masks=int(num_masks), num_channels=int(num_channels),
                              keep_prob=float(keep_prob), design=str(design),
                              block=gram_block(int(num_masks), int(num_channels)), gram_mode=mask_gram_mode(platform))

    return cached_for_stream(identity, "gram", compute)


def clear_mask_cache() -> None:
    """Forget every cached per-stream quantity."""
    _STREAM_CACHE.clear()


def gram_block(num_masks: int, num_channels: int) -> int:
    """Masks per block of the Gram pass: about 4 Mi mask entries (16 MiB of float32 masks)."""
    return int(max(1, min(num_masks, (1 << 22) // max(1, num_channels))))


@partial(jax.jit, static_argnames=("num_masks", "num_channels", "keep_prob", "design", "block", "gram_mode"))
def _mask_gram_jit(key, first, *, num_masks, num_channels, keep_prob, design, block, gram_mode):
    def block_gram(offset, size, acc):
        masks = sample_masks(key, first + offset + jnp.arange(size), num_channels, keep_prob, design)
        part = _mask_gram(masks, masks, gram_mode)
        return part if acc is None else acc + part

    return _stream(block_gram, num_masks, block)


def _key_identity(key: jax.Array) -> tuple | None:
    """Hashable identity of a PRNG key (implementation and bits); None when traced or under a trace.

    Inside a ``jit`` trace even a concrete (closed-over) key yields a tracer here, so the cache
    is never filled with traced values.
    """
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    data = jax.random.key_data(key) if typed else lax.bitwise_xor(key, jnp.zeros_like(key))  # an op: traced under jit
    if isinstance(data, jax.core.Tracer):
        return None
    return (str(jax.random.key_impl(key)) if typed else "raw", str(data.dtype), np.asarray(data).tobytes())


def mask_gram_mode(platform: str) -> str:
    """How the 0/1 mask Gram ``Σ w m mᵀ`` is multiplied on ``platform`` (exact either way).

    ``"bf16"`` on GPU/TPU: bfloat16 inputs with float32 accumulation (integer sums below 2²⁴
    are exact) at the bf16 matmul rate. ``"f32"`` on CPU: XLA:CPU upcasts bf16 dot operands
    computed inside the jit to float32 anyway (measured: no gain on this repo's AMX CPU).
    """
    return "f32" if platform == "cpu" else "bf16"


def _mask_gram(weighted_masks: jax.Array, masks: jax.Array, mode: str) -> jax.Array:
    """``(K, K)`` float32 ``weighted_masksᵀ @ masks`` of ``(n, K)`` 0/1 arrays, exactly."""
    if mode == "f32":
        return jnp.matmul(weighted_masks.T, masks, precision=_HIGHEST)
    a, b = weighted_masks.astype(jnp.bfloat16), masks.astype(jnp.bfloat16)
    return lax.dot_general(a, b, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)


# ------------------------------------------------------------------------------------------------
# Item sweeps: the engine under the baselines (Ablation-CAM, Score-CAM, RISE)
# ------------------------------------------------------------------------------------------------

REDUCERS = ("stack", "sum")


def chunk_indices(num_items: int, chunk: int) -> jax.Array:
    """``(ceil(N / chunk), chunk)`` item numbers, row-major; numbers ``≥ N`` pad the last chunk."""
    steps = -(-num_items // chunk)
    return jnp.arange(steps * chunk).reshape(steps, chunk)


def sweep(item_fn: Callable[[Any, jax.Array], Any], operands: Any, num_items: int, *, chunk: int,
          reduce: str = "stack", devices: Sequence[jax.Device] | None = None) -> Any:
    """Evaluate ``item_fn`` over the items ``0 … N − 1``, ``chunk`` at a time, sharded over local devices.

    The same rule as CHIP's sweep: item ``i`` (a mask, an ablated channel, a channel's input
    mask) depends only on its number, so the result does not depend on the chunk or on how
    many devices share the items (each device takes a contiguous slice of the numbers, under
    ``shard_map`` over the 1-D mesh :data:`MASK_AXIS`). Traceable: call it inside a jit.

    Args:
      item_fn: ``(operands, indices (n,) int) -> pytree of (n, ...)``: the result of each item,
        pure, items independent. Padding items (past N or past a device's slice, in its last
        chunk) are evaluated as item ``min(i, N − 1)`` and dropped (``stack``) or zeroed (``sum``).
      operands: pytree of arrays ``item_fn`` needs (replicated on every device).
      num_items: N.
      chunk: items per step; peak memory is one chunk of ``item_fn``'s work whatever N.
      reduce: ``"stack"``: every item's result in order, ``(N, ...)``; ``"sum"``: their sum,
        ``(...)`` (RISE's weighted sum of masks).
      devices: devices to shard over (default: every local device).
    """
    if reduce not in REDUCERS:
        raise InputError(f"reduce must be one of {', '.join(REDUCERS)}, got {reduce!r}")
    devices = tuple(jax.local_devices() if devices is None else devices)
    per_device = -(-int(num_items) // len(devices))
    chunk = max(1, min(int(chunk), per_device))

    def local(operands, start):
        idx = start + chunk_indices(per_device, chunk)  # (steps, chunk)
        clamp = lambda i: jnp.minimum(i, num_items - 1)  # noqa: E731
        if reduce == "stack":
            out = lax.map(lambda i: item_fn(operands, clamp(i)), idx)
            return jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:])[:per_device], out)

        def step(total, i):
            terms = item_fn(operands, clamp(i))
            valid = (i < num_items) & (i < start + per_device)  # not past N, nor into the next device's slice
            part = jax.tree.map(lambda t: jnp.sum(jnp.where(valid.reshape((-1,) + (1,) * (t.ndim - 1)), t, 0), 0),
                                terms)
            return jax.tree.map(jnp.add, total, part), None

        shapes = jax.eval_shape(item_fn, operands, idx[0])
        zeros = jax.tree.map(lambda a: jnp.zeros(a.shape[1:], a.dtype), shapes)
        return lax.scan(step, zeros, idx)[0]

    if len(devices) == 1:
        out = local(operands, 0)
        return jax.tree.map(lambda a: a[:num_items], out) if reduce == "stack" else out

    def shard(operands):
        out = local(operands, lax.axis_index(MASK_AXIS) * per_device)
        return out if reduce == "stack" else jax.tree.map(lambda a: lax.psum(a, MASK_AXIS), out)

    mesh = jax.sharding.Mesh(np.asarray(devices), (MASK_AXIS,))
    P = jax.sharding.PartitionSpec
    out = jax.shard_map(shard, mesh=mesh, in_specs=P(), out_specs=P(MASK_AXIS) if reduce == "stack" else P(),
                        check_vma=False)(operands)
    return jax.tree.map(lambda a: a[:num_items], out) if reduce == "stack" else out


def check_chunk_size(chunk_size) -> None:
    """:class:`InputError` unless ``chunk_size`` (perturbed evaluations per step) is None or a positive integer."""
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer))
                                   or chunk_size < 1):
        raise InputError(f"chunk_size must be a positive integer (evaluations per step), got {chunk_size!r}")


def items_per_step(fn: Callable, variables: Any, site_input: jax.Array, *, num_items: int,
                   chunk_size: int | None, default: int, memory_budget: int | None = None,
                   compute_dtype=None, devices: Sequence[jax.Device] | None = None) -> int:
    """The one chunking rule of the item sweeps: items per step from evaluations per step.

    ``chunk_size`` (evaluations per step) over the B images of ``site_input (B, ...)`` gives items
    per step (:func:`masks_per_step`). Without it: ``default`` evaluations per step, or fewer for a
    heavy ``fn`` on CPU (:func:`cpu_evals_per_step`, the rule CHIP's sweep uses). A ``memory_budget``
    (bytes per device) caps it by :func:`chunk_for_memory` of ``fn (variables, site) -> logits``
    on each device's share of the items, raising :class:`~chipjax.errors.ResourceError` when
    one item cannot fit.
    """
    check_chunk_size(chunk_size)
    batch = site_input.shape[0]
    devices = tuple(jax.local_devices() if devices is None else devices)
    if chunk_size is None and memory_budget is None:
        default = min(default, cpu_evals_per_step(fn, variables, site_input, devices[0].platform))
    chunk = masks_per_step(default if chunk_size is None else chunk_size, batch)
    if memory_budget is not None:
        num_devices = len(devices)
        fit = chunk_for_memory(fn, variables, site_input, num_masks=-(-num_items // num_devices),
                               memory_budget=memory_budget, compute_dtype=compute_dtype, num_classes=1)
        chunk = fit if chunk_size is None else min(chunk, fit)
    return int(max(1, min(num_items, chunk)))


# ------------------------------------------------------------------------------------------------
# Memory budget
# ------------------------------------------------------------------------------------------------


#: Safety factor on the jaxpr's live activations: XLA:CPU needed up to 1.36× of them per evaluation
#: (EfficientNet-Lite0's last block, measured by ``benchmarks/memory.py``).
ACTIVATION_MARGIN = 1.5


class TailMemory(NamedTuple):
    """Bytes one perturbation sweep needs on a device (estimates from the tail's jaxpr).

    Attributes:
      per_eval: bytes per perturbed evaluation (one image under one mask): the tail's peak
        live activations, its masked input and its scores.
      fixed: bytes independent of the chunk: features, weights cast to the compute dtype,
        and the statistics (accumulators, one chunk's terms, the result).
      per_mask: bytes per mask, whatever the image count (the mask row, its Gram terms).
    """

    per_eval: int
    fixed: int
    per_mask: int


def tail_memory(tail_fn: Callable, variables: Any, features: jax.Array, *, compute_dtype=None,
                num_classes: int | None = None) -> TailMemory:
    """Estimate the memory of a perturbation sweep without running or compiling anything.

    The tail is traced abstractly (``jax.make_jaxpr`` on shape-only inputs, as
    ``jax.eval_shape`` does) at batch 1 and 2; a liveness walk over its equations gives the
    peak bytes of live intermediates, and the difference of the two the bytes per
    evaluation, times :data:`ACTIVATION_MARGIN`. XLA fuses element-wise chains (less memory)
    but keeps some temporaries the walk cannot see (more); ``benchmarks/memory.py`` measured
    the real sweep at 0.6–1.0× of this estimate.

    Args:
      features: ``(B, H, W, K)`` (an array or ``jax.ShapeDtypeStruct``).
      num_classes: C' scores kept per image (default: all the tail's classes).
    """
    batch, *spatial = features.shape
    dtype = jnp.dtype(compute_dtype) if compute_dtype is not None else jnp.dtype(features.dtype)
    cast_vars = _abstract(variables, compute_dtype)

    def peak(n):
        spec = jax.ShapeDtypeStruct((n, *spatial), dtype)
        closed = jax.make_jaxpr(lambda v, a: tail_fn(v, a))(cast_vars, spec)
        return _peak_live_bytes(closed.jaxpr), closed.out_avals[0].shape[-1]

    peak1, classes_out = peak(1)
    peak2, _ = peak(2)
    num_classes = classes_out if num_classes is None else int(num_classes)
    input_bytes = int(np.prod(spatial)) * dtype.itemsize
    activations = peak2 - peak1 if peak2 > peak1 else peak1
    per_eval = int(ACTIVATION_MARGIN * activations) + input_bytes + 4 * (3 * classes_out)
    K = spatial[-1]
    weights_copy = 0 if compute_dtype is None else _tree_bytes(cast_vars)
    feature_bytes = batch * int(np.prod(spatial)) * (4 + dtype.itemsize)
    # accumulators + one chunk's terms + result: 3 × (K² + K) mask fields, 3 × B K C' score fields,
    # and the batched result of perturbation_stats (B copies of the K × K co-moment).
    stats_bytes = 4 * (3 * (K * K + K) + 3 * batch * (K + 3) * num_classes + batch * (K * K + K))
    return TailMemory(per_eval=int(per_eval), fixed=int(feature_bytes + weights_copy + stats_bytes),
                      per_mask=int(4 * 4 * K))


def chunk_for_memory(tail_fn: Callable, variables: Any, features: jax.Array, *, num_masks: int, memory_budget: int,
                     compute_dtype=None, num_classes: int | None = None) -> int:
    """The largest chunk (masks per step, ≤ ``num_masks``) whose sweep fits ``memory_budget`` bytes.

    Raises:
      ResourceError: when even a chunk of one mask (one evaluation of each of the B
        images) does not fit; raised before anything runs.
    """
    if not (isinstance(memory_budget, (int, np.integer, float)) and memory_budget > 0):
        raise InputError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
    need = tail_memory(tail_fn, variables, features, compute_dtype=compute_dtype, num_classes=num_classes)
    batch = features.shape[0]
    per_mask = batch * need.per_eval + need.per_mask
    room = int(memory_budget) - need.fixed
    if room < per_mask:
        mib = lambda b: f"{b / 2 ** 20:.1f} MiB"  # noqa: E731
        raise ResourceError(
            f"a perturbation sweep of {batch} image(s) with {features.shape[-1]} channels needs at least "
            f"{mib(need.fixed + per_mask)} ({mib(need.fixed)} for features, weights and statistics plus "
            f"{mib(per_mask)} per mask), more than the memory budget of {mib(memory_budget)}. Raise the "
            "budget, explain fewer images at once, tap a later (smaller) layer, or use compute_dtype=bfloat16")
    return int(max(1, min(int(num_masks), room // per_mask)))


def _abstract(tree: Any, compute_dtype) -> Any:
    """Shape-only stand-ins of ``tree``'s leaves, floating ones in ``compute_dtype`` (if given)."""
    def spec(a):
        dtype = jnp.dtype(a.dtype)
        if compute_dtype is not None and jnp.issubdtype(dtype, jnp.floating):
            dtype = jnp.dtype(compute_dtype)
        return jax.ShapeDtypeStruct(np.shape(a), dtype)

    return jax.tree.map(spec, tree)


def _tree_bytes(tree: Any) -> int:
    return int(sum(int(np.prod(a.shape)) * jnp.dtype(a.dtype).itemsize for a in jax.tree.leaves(tree)))


def _aval_bytes(aval) -> int:
    shape, dtype = getattr(aval, "shape", None), getattr(aval, "dtype", None)
    if shape is None or dtype is None:
        return 0
    return int(np.prod(shape)) * jnp.dtype(dtype).itemsize


def _peak_live_bytes(jaxpr) -> int:
    """Peak bytes of intermediates alive at once while running ``jaxpr`` in order (inputs excluded).

    An equation holding sub-jaxprs (a nested jit, a scan body…) peaks at the current live
    bytes plus its own inner peak or its outputs, whichever is larger.
    """
    from jax.extend.core import Var, jaxprs_in_params

    eqns = jaxpr.eqns
    last_use: dict = {}
    for i, eqn in enumerate(eqns):
        for v in eqn.invars:
            if isinstance(v, Var):
                last_use[v] = i
    for v in jaxpr.outvars:
        if isinstance(v, Var):
            last_use[v] = len(eqns)
    live, peak, sizes = 0, 0, {}
    for i, eqn in enumerate(eqns):
        inner = max((_peak_live_bytes(getattr(sub, "jaxpr", sub)) for sub in jaxprs_in_params(eqn.params)),
                    default=0)
        out = 0
        for v in eqn.outvars:
            b = _aval_bytes(v.aval)
            out += b
            if v in last_use:
                sizes[v] = b
        peak = max(peak, live + max(inner, out))
        live += sum(sizes.get(v, 0) for v in eqn.outvars)
        for v in eqn.invars:
            if isinstance(v, Var) and last_use.get(v) == i and v in sizes:
                live -= sizes.pop(v)
    return peak
