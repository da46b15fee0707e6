"""The perturbation engine as it was before the issue-5 speed work, kept only for before/after timing.

``python -m benchmarks.perturb_throughput --baseline benchmarks/perturb_before.py`` times it beside the
current :mod:`chipjax.perturb` on the same cases. Differences to the current engine: a Chan merge of the
full statistics after every chunk (on XLA:CPU the merge of the K × K co-moment costs ~250 ms at K = 2048),
the mask Gram recomputed in every call, ``jax.random.bernoulli`` masks, a permutation per balanced mask,
no sharding, no memory budget, no bf16 option. Imported as a module of the ``chipjax`` package.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from . import stats as st


def sample_masks(key, indices, num_channels, keep_prob=0.5, balanced=False):
    def one(i):
        k = jax.random.fold_in(key, i)
        if balanced:
            keep = int(round(keep_prob * num_channels))
            order = jax.random.permutation(k, num_channels)
            return (order < keep).astype(jnp.float32)
        return jax.random.bernoulli(k, keep_prob, (num_channels,)).astype(jnp.float32)

    return jax.vmap(one)(indices)


def scores_from_logits(logits, score):
    if score == "prob":
        return jax.nn.softmax(logits, axis=-1)
    if score == "logprob":
        return jax.nn.log_softmax(logits, axis=-1)
    return logits


def perturbed_logits(tail_fn, variables, features, masks):
    return jax.vmap(lambda m: tail_fn(variables, features * m.astype(features.dtype)))(masks)


def select_classes(scores, classes):
    if classes is None:
        return scores
    return jnp.take_along_axis(scores, classes[None], axis=-1)


@partial(jax.jit, static_argnames=("tail_fn", "num_masks", "chunk", "keep_prob", "balanced", "score"))
def perturbation_stats(tail_fn, variables, features, key, *, num_masks, chunk, keep_prob=0.5, balanced=False,
                       score="prob", classes=None):
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
