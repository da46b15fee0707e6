"""Network perturbation: channel masks and the scores of the perturbed tails.

Mask ``i`` is drawn from ``fold_in(key, i)``, so the mask set depends only on the
seed and the mask count, never on the chunk size or the device layout. The tail
runs on ``A ⊙ m`` under ``vmap`` over the masks of one chunk; chunks run under
``lax.scan`` and fold their (mask, score) pairs into streamed sufficient
statistics (:mod:`chipjax.stats`), so peak memory is one chunk of tail
activations whatever the mask count.

Shapes: ``A (B, H, W, K)`` feature maps of B images at the tap; masks ``(N, K)``;
scores ``(N, B, C)`` (softmax probabilities or logits of C classes).
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp

from . import stats as st
from .errors import InputError

SCORES = ("prob", "logit", "logprob")


def check_perturbation_args(num_masks: int, keep_prob: float, chunk_size: int, score: str = "prob") -> None:
    """Raise :class:`InputError` for a mask count, keep probability, chunk size or score that cannot work."""
    if not isinstance(num_masks, int) or num_masks < 2:
        raise InputError(f"num_masks must be an integer ≥ 2 (a lasso needs several perturbed networks), got {num_masks!r}")
    if not (0.0 < float(keep_prob) < 1.0):
        raise InputError(f"keep_prob must lie strictly between 0 and 1, got {keep_prob!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise InputError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if score not in SCORES:
        raise InputError(f"score must be one of {', '.join(SCORES)}, got {score!r}")


def sample_masks(key: jax.Array, indices: jax.Array, num_channels: int, keep_prob: float = 0.5,
                 balanced: bool = False) -> jax.Array:
    """Masks number ``indices`` of the stream defined by ``key``.

    Args:
      key: PRNG key of the whole mask stream.
      indices: ``(n,)`` int mask numbers.
      num_channels: K.
      keep_prob: probability that a channel stays on (Bernoulli), or the kept
        fraction when ``balanced`` (exactly ``round(keep_prob * K)`` channels on).
    Returns:
      ``(n, K)`` float32 of 0/1.
    """

    def one(i):
        k = jax.random.fold_in(key, i)
        if balanced:
            keep = int(round(keep_prob * num_channels))
            order = jax.random.permutation(k, num_channels)
            return (order < keep).astype(jnp.float32)
        return jax.random.bernoulli(k, keep_prob, (num_channels,)).astype(jnp.float32)

    return jax.vmap(one)(indices)


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


@partial(jax.jit, static_argnames=("tail_fn", "num_masks", "chunk", "keep_prob", "balanced", "score"))
def perturbation_stats(tail_fn: Callable, variables: Any, features: jax.Array, key: jax.Array, *,
                       num_masks: int, chunk: int, keep_prob: float = 0.5, balanced: bool = False,
                       score: str = "prob", classes: jax.Array | None = None) -> st.Stats:
    """Stream ``num_masks`` perturbed tails into per-image sufficient statistics.

    Args:
      tail_fn: ``(variables, (B, H, W, K)) -> (B, C)`` logits.
      variables: the tail's weights.
      features: ``(B, H, W, K)`` feature maps at the tap (the head ran once per image).
      key: PRNG key of the mask stream.
      num_masks: N perturbed networks.
      chunk: masks per step (peak memory ≈ ``chunk · B`` tail activations).
      keep_prob, balanced: see :func:`sample_masks`.
      score: ``prob`` | ``logit`` | ``logprob``.
      classes: optional ``(B, C')`` int classes to keep per image (default: all C).
    Returns:
      :class:`chipjax.stats.Stats` with a leading batch axis B: masks ``(K,)`` and
      scores ``(C',)`` per image.
    """
    num_channels = features.shape[-1]

    def chunk_stats(start, size):
        idx = start + jnp.arange(size)
        masks = sample_masks(key, idx, num_channels, keep_prob, balanced)
        logits = perturbed_logits(tail_fn, variables, features, masks)
        y = select_classes(scores_from_logits(logits.astype(jnp.float32), score), classes)  # (n, B, C')
        return jax.vmap(lambda yb: st.from_batch(masks, yb), in_axes=1)(y)

    full, rest = divmod(num_masks, chunk)
    first = chunk_stats(0, min(chunk, num_masks))
    if full >= 1:
        def body(acc, i):
            return jax.vmap(st.merge)(acc, chunk_stats(i * chunk, chunk)), None

        acc, _ = jax.lax.scan(body, first, jnp.arange(1, full))
    else:
        acc = first
    if rest and full >= 1:
        acc = jax.vmap(st.merge)(acc, chunk_stats(full * chunk, rest))
    return acc


def chunk_for_budget(bytes_per_eval: int, budget_bytes: int, batch: int) -> int:
    """Masks per chunk so that ``chunk · batch · bytes_per_eval ≤ budget_bytes`` (at least 1)."""
    return max(1, int(budget_bytes // max(1, bytes_per_eval * batch)))


def default_chunk(num_masks: int, batch: int, evals_per_step: int = 256) -> int:
    """A chunk of about ``evals_per_step`` perturbed evaluations per step."""
    return max(1, min(num_masks, math.ceil(evals_per_step / max(1, batch))))
