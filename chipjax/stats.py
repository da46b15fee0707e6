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
    return _pool(stats, lambda x: lax.psum(x, axis_name))


def gram(stats: Stats) -> jax.Array:
    """``(K, K)`` centred ``MᵀM / N`` (zeros for empty stats)."""
    return _per_count(stats.mask_comoment, stats.count[..., None, None])


def cross(stats: Stats) -> jax.Array:
    """``(K, C)`` centred ``MᵀY / N`` (zeros for empty stats)."""
    return _per_count(stats.cross_comoment, stats.count[..., None, None])


def score_var(stats: Stats) -> jax.Array:
    """``(C,)`` variance of each class score, ``‖Y_c − ȳ_c‖² / N`` (zeros for empty stats)."""
    return _per_count(stats.score_sqdev, stats.count[..., None])


@jax.jit
def _from_batch(masks, scores, weights):
    """:func:`from_batch` of one image's pairs ``(n, K)``, ``(n, C)``, ``(n,)`` or None."""
    dtype = jnp.result_type(masks.dtype, scores.dtype, jnp.float32)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.float32
    masks, scores = masks.astype(dtype), scores.astype(dtype)
    n = masks.shape[0]
    w = jnp.ones((n,), dtype) if weights is None else jnp.asarray(weights, dtype)
    count = jnp.sum(w)
    # Sum, then divide: exact integer sums of 0/1 masks give exact means (a constant channel centres to 0).
    mask_mean = _per_count(jnp.matmul(w, masks, precision=_HIGHEST), count)
    score_mean = _per_count(jnp.matmul(w, scores, precision=_HIGHEST), count)
    dm = masks - mask_mean
    dy = scores - score_mean
    wdm = dm * w[:, None]
    return Stats(
        count=count,
        mask_mean=mask_mean,
        score_mean=score_mean,
        mask_comoment=jnp.matmul(wdm.T, dm, precision=_HIGHEST),
        cross_comoment=jnp.matmul(wdm.T, dy, precision=_HIGHEST),
        score_sqdev=jnp.sum(w[:, None] * dy * dy, axis=0),
    )


@jax.jit
def _from_batch_images(masks, scores, weights):
    """:func:`from_batch` of B images' pairs ``(B, n, K)``, ``(B, n, C)``, ``(B, n)`` or None."""
    return jax.vmap(_from_batch)(masks, scores, weights)


@jax.jit
def _merge_stacked(stacked: Stats) -> Stats:
    return _pool(stacked, lambda x: jnp.sum(x, axis=0))


def _pool(stats: Stats, total: Callable[[jax.Array], jax.Array]) -> Stats:
    """Pool a set of stats, given ``total`` summing an array over the set (axis-0 sum or psum).

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
        mask_comoment=total(stats.mask_comoment + ndm[..., :, None] * dm[..., None, :]),
        cross_comoment=total(stats.cross_comoment + ndm[..., :, None] * dy[..., None, :]),
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
