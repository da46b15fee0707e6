"""Sanity-check metrics (Adebayo et al. 2018): rank correlation of maps, layer randomisation of variables,
SSIM / HOG similarity of maps.

Conventions: :mod:`chipjax.metrics`."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..errors import InputError


# --- rank correlation / randomisation sanity check -------------------------------------------------
def _average_ranks(x: np.ndarray) -> np.ndarray:
    """``(B, N)`` -> ``(B, N)`` ranks 1..N along the last axis, ties given their mean rank."""
    order = np.argsort(x, axis=1, kind="stable")
    xs = np.take_along_axis(x, order, axis=1)
    n = x.shape[1]
    ranks_sorted = np.empty(x.shape, dtype=np.float64)
    for row in range(x.shape[0]):
        # start of each run of equal values, and the mean rank of the run
        new = np.concatenate([[True], xs[row, 1:] != xs[row, :-1]])
        starts = np.flatnonzero(new)
        ends = np.concatenate([starts[1:], [n]])
        ranks_sorted[row] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    ranks = np.empty_like(ranks_sorted)
    np.put_along_axis(ranks, order, ranks_sorted, axis=1)
    return ranks


def rank_correlations(a, b) -> np.ndarray:
    """Spearman rank correlation per item: ``a, b (B, ...)`` -> ``(B,)``, each item flattened.

    Ties get their average rank (as ``scipy.stats.spearmanr``). An item where either map is constant has
    no ranking; its correlation is defined as 0 (scipy gives NaN).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim < 1:
        raise InputError(f"rank_correlations needs two arrays of the same shape (B, ...); got {a.shape} and {b.shape}")
    ra = _average_ranks(a.reshape(a.shape[0], -1))
    rb = _average_ranks(b.reshape(b.shape[0], -1))
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    denom = np.sqrt((ra**2).sum(axis=1) * (rb**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(denom > 0, (ra * rb).sum(axis=1) / np.where(denom > 0, denom, 1.0), 0.0)
    return np.clip(r, -1.0, 1.0)


def rank_correlation(a, b) -> float:
    """Spearman rank correlation of two maps, flattened (0 when either is constant)."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise InputError(f"rank_correlation needs two maps of the same shape; got {a.shape} and {b.shape}")
    return float(rank_correlations(a.reshape(1, -1), b.reshape(1, -1))[0])


def sanity_check(maps_trained, maps_randomized: Mapping[str, np.ndarray], absolute: bool = False) -> dict[str, float]:
    """Model-randomisation sanity check (Adebayo et al., 2018): how much do maps survive randomised weights?

    Args:
      maps_trained: ``(B, H, W)`` maps of the trained model.
      maps_randomized: ``{name: (B, H, W)}`` maps of the same images after randomising the weights named
        ``name`` (e.g. cascading from the top layer down).
      absolute: compare ``|maps|`` (the paper reports both).

    Returns:
      ``{name: mean Spearman r over the B images}``; a method that passes has r near 0.
    """
    ref = np.asarray(maps_trained, dtype=np.float64)
    if absolute:
        ref = np.abs(ref)
    out = {}
    for name, maps in maps_randomized.items():
        maps = np.asarray(maps, dtype=np.float64)
        if maps.shape != ref.shape:
            raise InputError(f"maps_randomized[{name!r}] has shape {maps.shape}, the trained maps {ref.shape}")
        out[name] = float(np.mean(rank_correlations(ref, np.abs(maps) if absolute else maps)))
    return out


def randomize_top_layers(variables: Mapping, fresh_variables: Mapping, keys_in_order: Sequence[str], n: int) -> dict:
    """Cascading randomisation: the top ``n`` entries of ``keys_in_order`` take their fresh (random) values.

    Args:
      variables: trained Flax variables ``{collection: {key: subtree}}`` (e.g. ``params``, ``batch_stats``).
      fresh_variables: variables of the same architecture from a random init (e.g.
        ``chipjax.models.init_variables(spec, seed)``).
      keys_in_order: top-level keys of the variable collections, input to output (the module names the
        zoo uses for its units).
      n: how many keys, counted from the output end, to replace.

    Returns:
      a new variables dict (the inputs are not modified); every collection holding a replaced key gets
      the fresh subtree.
    """
    if not 0 <= n <= len(keys_in_order):
        raise InputError(f"n must be in [0, {len(keys_in_order)}]; got {n}")
    return randomize_layers(variables, fresh_variables, list(keys_in_order)[len(keys_in_order) - n:])


def randomize_layers(variables: Mapping, fresh_variables: Mapping, keys: Sequence[str]) -> dict:
    """The ``keys`` (top-level keys of the variable collections) take their fresh (random) values; the
    rest stays trained. One key: Adebayo et al.'s *independent* randomisation of a layer; the top ``n``:
    the *cascading* one (:func:`randomize_top_layers`).

    Returns:
      a new variables dict (the inputs are not modified).
    """
    out = {col: dict(tree) for col, tree in variables.items()}
    for key in keys:
        found = False
        for col, tree in out.items():
            if key in tree:
                if col not in fresh_variables or key not in fresh_variables[col]:
                    raise InputError(f"fresh_variables lacks {col}/{key}; build them from the same architecture")
                tree[key] = fresh_variables[col][key]
                found = True
        if not found:
            raise InputError(f"no variable collection has a top-level key {key!r}; keys are {sorted(out.get('params', {}))}")
    return out



# --- similarity of maps (sanity checks, Adebayo et al. 2018) ----------------------------------------------
def _pairs(a, b, what: str) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 3:
        raise InputError(f"{what} needs two (B, H, W) arrays of the same shape; got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise InputError(f"{what}: the maps contain NaN or Inf")
    return a, b


def ssim_scores(a, b) -> np.ndarray:
    """SSIM (``skimage.metrics.structural_similarity``) of each pair of maps ``(B, H, W)`` -> ``(B,)``, the
    data range being the pair's joint ``max - min`` (as Quantus' ``ssim``). Two identical constant maps
    give 1; maps need ``H, W >= 7`` (the SSIM window)."""
    from skimage.metrics import structural_similarity

    a, b = _pairs(a, b, "ssim_scores")
    out = np.empty(a.shape[0])
    for i in range(a.shape[0]):
        span = float(max(a[i].max(), b[i].max()) - min(a[i].min(), b[i].min()))
        out[i] = 1.0 if span == 0 else structural_similarity(a[i], b[i], data_range=span)
    return out


def _pearson(u: np.ndarray, v: np.ndarray) -> float:
    u, v = u - u.mean(), v - v.mean()
    denom = np.sqrt((u * u).sum() * (v * v).sum())
    return float(np.clip((u * v).sum() / denom, -1.0, 1.0)) if denom > 0 else 0.0


def hog_similarities(a, b, pixels_per_cell: int | None = None, cells_per_block: int = 2) -> np.ndarray:
    """Pearson correlation of the HOG features (``skimage.feature.hog``, 9 orientations) of each pair of
    maps ``(B, H, W)`` -> ``(B,)``, as Adebayo et al.; 0 when either feature vector is constant (e.g. a flat
    map), never NaN. ``pixels_per_cell`` defaults to an eighth of the shorter side (at least 2): 28 px at 224."""
    from skimage.feature import hog

    a, b = _pairs(a, b, "hog_similarities")
    if pixels_per_cell is None:
        pixels_per_cell = max(2, min(a.shape[1:]) // 8)
    cell, block = (int(pixels_per_cell),) * 2, (int(cells_per_block),) * 2
    if min(a.shape[1:]) < pixels_per_cell * cells_per_block:
        raise InputError(f"HOG needs maps of at least {pixels_per_cell * cells_per_block} px a side; got {a.shape[1:]}")
    return np.array([_pearson(hog(x, pixels_per_cell=cell, cells_per_block=block), hog(y, pixels_per_cell=cell,
                                                                                      cells_per_block=block))
                     for x, y in zip(a, b)])


def map_similarities(a, b) -> dict[str, np.ndarray]:
    """Adebayo et al.'s four similarities of each pair of maps ``(B, H, W)``: ``{"spearman", "spearman_abs",
    "ssim", "hog"}``, each ``(B,)`` (:func:`rank_correlations` of the maps and of their absolute values,
    :func:`ssim_scores`, :func:`hog_similarities`). For non-negative maps the two Spearman values agree."""
    a, b = _pairs(a, b, "map_similarities")
    return {"spearman": rank_correlations(a, b), "spearman_abs": rank_correlations(np.abs(a), np.abs(b)),
            "ssim": ssim_scores(a, b), "hog": hog_similarities(a, b)}


