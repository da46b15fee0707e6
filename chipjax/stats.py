"""Sufficient statistics of perturbations: what the CHIP lasso needs, in O(K² + KC) memory.

The CHIP model (docs/DESIGN.md §1.3) is a lasso on *centred* masks ``M (N, K)`` and scores
``Y (N, C)``; it needs only ``G = MᵀM/N`` and ``R = MᵀY/N`` of the centred data (and, for an
exact duality gap, the score variances). :class:`Stats` keeps them as count, means and
*centred co-moment sums* (Welford/Chan), which stay accurate in float32 however many
perturbations stream past; no perturbation is ever stored.

Building and combining::

    s = empty(K, C)
    for masks, scores in chunks:             # masks (n, K) in {0, 1}, scores (n, C)
        s = update(s, masks, scores)         # == merge(s, from_batch(masks, scores))
    G, R = gram(s), cross(s)                 # (K, K), (K, C)

Every function is pure and jit-able and :class:`Stats` is a pytree (a NamedTuple).

Batches of images: stats of B images at once carry a shape prefix ``(B,)`` on every field
(``count (B,)``, ``mask_mean (B, K)``, ``mask_comoment (B, K, K)`` …). :func:`from_batch` and
:func:`update` accept masks ``(B, n, K)`` / scores ``(B, n, C)`` directly (they vmap), and
:func:`merge`, :func:`gram`, :func:`cross`, :func:`score_var` broadcast over the prefix.
``merge_many`` pools a stacked leading axis, so ``merge_many(stats_of_B_images)`` is the
class-level (global) statistic of the whole set.

Shards: merging is *not* a plain sum of the fields (means and co-moments need a mean-shift
correction), but it is a sum of mean-shifted terms, so it takes a ``psum`` per field:
:func:`psum_merge` inside ``jax.shard_map`` (or ``pmap``/named ``vmap``) pools the
per-shard stats exactly. :func:`merge_many` is the same pooling over a stacked axis
(e.g. after an ``all_gather``); both share one implementation (:func:`_pool`).

One accumulator: the perturbation engine (:mod:`chipjax.perturb`) streams a chunk's pairs into
:class:`Sums` (:func:`chunk_sums`, :func:`add_sums`: no merge per chunk) and centres them once
(:func:`stats_from_sums`); :func:`from_batch` is that same accumulator on one batch.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .errors import InputError

_HIGHEST = lax.Precision.HIGHEST


class Stats(NamedTuple):
    """Centred sufficient statistics of ``count`` (mask, score) pairs.

    Fields (shapes without any batch prefix; ``m`` a mask ``(K,)``, ``y`` a score ``(C,)``,
    sums over the pairs seen, weighted if weights were given):
      count: ``()`` number (total weight) of pairs.
      mask_mean: ``(K,)`` m̄.
      score_mean: ``(C,)`` ȳ.
      mask_comoment: ``(K, K)`` Σ (m − m̄)(m − m̄)ᵀ.
      cross_comoment: ``(K, C)`` Σ (m − m̄)(y − ȳ)ᵀ.
      score_sqdev: ``(C,)`` Σ (y − ȳ)² per class.
    """

    count: jax.Array
    mask_mean: jax.Array
    score_mean: jax.Array
    mask_comoment: jax.Array
    cross_comoment: jax.Array
    score_sqdev: jax.Array


def empty(num_channels: int, num_classes: int, dtype=jnp.float32) -> Stats:
    """Statistics of no pairs: the identity of :func:`merge`. ``K = num_channels``, ``C = num_classes``."""
    K, C = int(num_channels), int(num_classes)
    if K < 1 or C < 1:
        raise InputError(f"empty stats need num_channels >= 1 and num_classes >= 1, got K={K}, C={C}")
    z = lambda *shape: jnp.zeros(shape, dtype)  # noqa: E731
    return Stats(z(), z(K), z(C), z(K, K), z(K, C), z(C))


def from_batch(masks: jax.Array, scores: jax.Array, weights: jax.Array | None = None) -> Stats:
    """Statistics of one batch of pairs.

    Args:
      masks: ``(n, K)`` channel masks (bool, int or float; usually 0/1), or ``(B, n, K)``
        for B images at once.
      scores: ``(n, C)`` class scores of the perturbed networks, or ``(B, n, C)``.
      weights: optional ``(n,)`` (or ``(B, n)``) non-negative pair weights, e.g. 0 for the
        padding rows of a last, partial chunk. ``None`` counts every pair once.

    Returns:
      :class:`Stats` in the promoted float dtype of the inputs (at least float32), with the
      batch prefix ``(B,)`` if the inputs had one. A batch of zero pairs (or zero total
      weight) gives :func:`empty` stats.
    """
    masks, scores = jnp.asarray(masks), jnp.asarray(scores)
    weights = None if weights is None else jnp.asarray(weights)
    batched = masks.ndim == 3 or scores.ndim == 3
    _check_pairs(masks, scores, weights, batched)
    return (_from_batch_images if batched else _from_batch)(masks, scores, weights)


def update(stats: Stats, masks: jax.Array, scores: jax.Array, weights: jax.Array | None = None) -> Stats:
    """``merge(stats, from_batch(masks, scores, weights))``: fold one more batch in."""
    return merge(stats, from_batch(masks, scores, weights))


@jax.jit
def merge(a: Stats, b: Stats) -> Stats:
    """Statistics of the union of the pairs behind ``a`` and ``b`` (Chan et al.'s parallel merge).

    Exact up to float rounding: order-free and associative up to rounding, and
    ``merge(a, empty)`` is ``a`` (an empty side contributes exact zeros). Fields may carry a
    common batch prefix ``(B,)``; pairs are merged image by image.
    """
    return _merge_stacked(jax.tree.map(lambda x, y: jnp.stack([x, y]), a, b))


def merge_many(stacked: Stats) -> Stats:
    """Pool stats stacked along a leading axis ``(S, ...)`` into one, exactly (up to rounding).

    E.g. the per-shard stats after an ``all_gather``, or the per-image stats of a data set
    (image-level stats with prefix ``(B,)`` pooled into class-level stats).
    """
    if jnp.ndim(stacked.count) < 1:
        raise InputError(
            "merge_many needs stats stacked along a leading axis (count of shape (S,)); "
            f"got count of shape {jnp.shape(stacked.count)}. Use merge(a, b) for two stats."
        )
    return _merge_stacked(stacked)


def psum_merge(stats: Stats, axis_name) -> Stats:
    """Pool the per-shard stats over the mapped axis ``axis_name``; use inside ``jax.shard_map``.

    Every shard gets the pooled stats (replicated). One ``psum`` per field, in three rounds:
    the count; the count-weighted means; the co-moments shifted to the pooled mean,
    ``M2_i + n_i (m̄_i − m̄)(m̄_i − m̄)ᵀ`` (raw second moments would need one round but lose
    float32 accuracy). Equals :func:`merge_many` of the shards' stats.
    """
    return _pool(stats, lambda x: lax.psum(x, axis_name),
                 lambda M, u, v: lax.psum(M + u[..., :, None] * v[..., None, :], axis_name))


def gram(stats: Stats) -> jax.Array:
    """``(K, K)`` centred ``MᵀM / N`` (zeros for empty stats)."""
    return _per_count(stats.mask_comoment, stats.count[..., None, None])


def cross(stats: Stats) -> jax.Array:
    """``(K, C)`` centred ``MᵀY / N`` (zeros for empty stats)."""
    return _per_count(stats.cross_comoment, stats.count[..., None, None])


def score_var(stats: Stats) -> jax.Array:
    """``(C,)`` variance of each class score, ``‖Y_c − ȳ_c‖² / N`` (zeros for empty stats)."""
    return _per_count(stats.score_sqdev, stats.count[..., None])


class Sums(NamedTuple):
    """Running sums of (mask, score) pairs, the accumulator the perturbation engine streams into.

    B images share one mask stream: the mask part carries no image axis. Mask part (exact integers
    in float32 for 0/1 masks and 0/1 weights): count ``()`` Σw; mask_sum ``(K,)`` Σ w m; mask_gram
    ``(K, K)`` Σ w m mᵀ. Score part, shifted by ``shift (B, C)`` c (the first chunk's mean scores, so
    the sums stay small however far the scores sit from zero): score_sum ``(B, C)`` Σ w (y − c);
    cross_sum ``(B, K, C)`` Σ w m (y − c)ᵀ; score_sq ``(B, C)`` Σ w (y − c)².
    """

    count: jax.Array
    mask_sum: jax.Array
    mask_gram: jax.Array
    shift: jax.Array
    score_sum: jax.Array
    cross_sum: jax.Array
    score_sq: jax.Array


def _plain_gram(weighted: jax.Array, masks: jax.Array) -> jax.Array:
    return jnp.matmul(weighted.T, masks, precision=_HIGHEST)


def chunk_sums(masks: jax.Array, scores: jax.Array, weights: jax.Array | None = None,
               shift: jax.Array | None = None,
               gram: Callable[[jax.Array, jax.Array], jax.Array] | None = _plain_gram) -> Sums:
    """:class:`Sums` of one chunk: ``masks (n, K)``, ``scores (n, B, C)``, ``weights (n,)`` or None (all 1).

    ``shift None``: shift by this chunk's own (weighted) mean scores. ``gram(weighted_masks, masks)``
    computes Σ w m mᵀ ``(K, K)`` (the engine passes its platform's fastest exact form); ``None`` skips it
    (``mask_gram`` is then a placeholder 0: the Gram comes from elsewhere).
    """
    n = masks.shape[0]
    w = jnp.ones((n,), scores.dtype) if weights is None else weights.astype(scores.dtype)
    count = jnp.sum(w)
    if shift is None:
        shift = jnp.einsum("n,nbc->bc", w, scores, precision=_HIGHEST) / jnp.maximum(count, 1.0)
    d = scores - shift
    wd = d if weights is None else d * w[:, None, None]  # zero on zero-weight (padding) rows
    weighted = masks if weights is None else masks * w[:, None]
    return Sums(
        count=count,
        mask_sum=jnp.sum(weighted, axis=0),
        mask_gram=jnp.zeros(()) if gram is None else gram(weighted, masks),
        shift=shift,
        score_sum=jnp.sum(wd, axis=0),
        cross_sum=jnp.einsum("nk,nbc->bkc", masks, wd, precision=_HIGHEST),
        score_sq=jnp.sum(wd * d, axis=0),
    )


def add_sums(a: Sums, b: Sums) -> Sums:
    """Sums of two sets of pairs taken with the same shift (``a``'s)."""
    return jax.tree.map(jnp.add, a, b)._replace(shift=a.shift)


def stats_from_sums(s: Sums, gram: jax.Array | None = None) -> Stats:
    """Centre the sums once: :class:`Stats` whose mask fields are shared and whose score fields carry the
    image axis B (``gram``: Σ w m mᵀ when it is not in ``s``)."""
    gram = s.mask_gram if gram is None else gram
    inv = jnp.where(s.count > 0, 1.0 / jnp.maximum(s.count, 1.0), 0.0)
    mask_mean = s.mask_sum * inv
    score_delta = s.score_sum * inv  # (B, C) mean of y − c
    return Stats(
        count=s.count,
        mask_mean=mask_mean,
        score_mean=s.shift + score_delta,
        mask_comoment=gram - jnp.outer(mask_mean, s.mask_sum),
        cross_comoment=s.cross_sum - mask_mean[None, :, None] * s.score_sum[:, None, :],
        score_sqdev=s.score_sq - score_delta * s.score_sum,
    )


@jax.jit
def _from_batch(masks, scores, weights):
    """:func:`from_batch` of one image's pairs ``(n, K)``, ``(n, C)``, ``(n,)`` or None: the engine's
    accumulator (:func:`chunk_sums`, :func:`stats_from_sums`) on one chunk of one image."""
    dtype = jnp.result_type(masks.dtype, scores.dtype, jnp.float32)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.float32
    masks, scores = masks.astype(dtype), scores.astype(dtype)
    weights = None if weights is None else jnp.asarray(weights, dtype)
    s = stats_from_sums(chunk_sums(masks, scores[:, None, :], weights))
    return s._replace(score_mean=s.score_mean[0], cross_comoment=s.cross_comoment[0], score_sqdev=s.score_sqdev[0])


@jax.jit
def _from_batch_images(masks, scores, weights):
    """:func:`from_batch` of B images' pairs ``(B, n, K)``, ``(B, n, C)``, ``(B, n)`` or None."""
    return jax.vmap(_from_batch)(masks, scores, weights)


@jax.jit
def _merge_stacked(stacked: Stats) -> Stats:
    # The members' outer products as one contraction over the stacked axis: XLA:CPU runs a stacked
    # (S, K, K) product-then-sum 40x slower than the matmul (36.7 vs 0.9 ms at K = 1280, S = 2).
    return _pool(stacked, lambda x: jnp.sum(x, axis=0),
                 lambda M, u, v: jnp.sum(M, axis=0) + jnp.einsum("s...k,s...l->...kl", u, v, precision=_HIGHEST))


def _pool(stats: Stats, total: Callable[[jax.Array], jax.Array],
          total_shifted: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]) -> Stats:
    """Pool a set of stats, given ``total`` summing an array over the set (axis-0 sum or psum) and
    ``total_shifted (M, u, v)`` summing ``M_i + u_i v_iᵀ`` over it (a co-moment and its mean shift).

    Uses shares ``n_i / n`` for the means and mean-shifted co-moments, so an empty member
    contributes exact zeros.
    """
    n_i = stats.count
    n = total(n_i)
    share = _per_count(n_i, n)  # a division, so n/n is exactly 1
    mask_mean = total(share[..., None] * stats.mask_mean)
    score_mean = total(share[..., None] * stats.score_mean)
    dm = stats.mask_mean - mask_mean
    dy = stats.score_mean - score_mean
    ndm = n_i[..., None] * dm
    return Stats(
        count=n,
        mask_mean=mask_mean,
        score_mean=score_mean,
        mask_comoment=total_shifted(stats.mask_comoment, ndm, dm),
        cross_comoment=total_shifted(stats.cross_comoment, ndm, dy),
        score_sqdev=total(stats.score_sqdev + n_i[..., None] * dy * dy),
    )


def _per_count(x: jax.Array, count: jax.Array) -> jax.Array:
    """``x / count`` where ``count > 0``, else 0 (so empty stats give zeros, never NaN)."""
    positive = count > 0
    return jnp.where(positive, x / jnp.where(positive, count, 1), 0).astype(x.dtype)


def _check_pairs(masks: jax.Array, scores: jax.Array, weights, batched: bool) -> None:
    want = 3 if batched else 2
    what = "(B, n, K) and (B, n, C)" if batched else "(n, K) and (n, C)"
    if masks.ndim != want or scores.ndim != want:
        raise InputError(
            f"masks and scores must have shapes {what}; got masks {masks.shape} and scores {scores.shape}"
        )
    if masks.shape[:-1] != scores.shape[:-1]:
        raise InputError(
            f"masks {masks.shape} and scores {scores.shape} must agree on their leading axes "
            "(one score row per mask)"
        )
    if weights is not None and tuple(jnp.shape(weights)) != masks.shape[:-1]:
        raise InputError(
            f"weights must have shape {masks.shape[:-1]} (one per mask); got {tuple(jnp.shape(weights))}"
        )
