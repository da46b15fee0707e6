"""Faithfulness metrics: the one AUC, deletion/insertion (RISE and chipjax protocols), confidence change, ROAD.

Conventions: :mod:`chipjax.metrics`."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

from ..errors import InputError

from .localisation import _check_map


# --- curves --------------------------------------------------------------------------------------
def auc(xs, ys) -> np.ndarray:
    """Area under the curve ``ys(xs)`` by the trapezoid rule.

    Args:
      xs: ``(T,)`` abscissae, increasing.
      ys: ``(..., T)`` ordinates; leading axes are batch axes.

    Returns:
      ``(...)`` areas (a 0-d array / float for one curve).
    """
    xs = np.asarray(xs, dtype=np.float64)
    ys = np.asarray(ys, dtype=np.float64)
    if xs.ndim != 1 or ys.shape[-1:] != xs.shape:
        raise InputError(f"auc needs xs (T,) and ys (..., T); got xs {xs.shape} and ys {ys.shape}")
    if xs.size < 2:
        return np.zeros(ys.shape[:-1])
    return np.sum(np.diff(xs) * (ys[..., 1:] + ys[..., :-1]) / 2.0, axis=-1)



# --- deletion / insertion ------------------------------------------------------------------------
def _gaussian_kernel(sigma: float, truncate: float) -> np.ndarray:
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(images, sigma: float = 5.0, truncate: float = 4.0) -> np.ndarray:
    """Gaussian blur of ``images (B, H, W, C)`` over H and W (separable; borders mirrored).

    Matches ``scipy.ndimage.gaussian_filter(images, (0, sigma, sigma, 0), mode="reflect",
    truncate=truncate)``: the kernel has radius ``int(truncate * sigma + 0.5)``.

    Returns:
      float32 ``(B, H, W, C)``.
    """
    x = np.asarray(images, dtype=np.float64)
    if x.ndim != 4:
        raise InputError(f"gaussian_blur needs images (B, H, W, C); got shape {x.shape}")
    if sigma <= 0:
        return x.astype(np.float32)
    k = _gaussian_kernel(float(sigma), float(truncate))
    r = len(k) // 2
    for axis in (1, 2):
        n = x.shape[axis]
        pad = [(0, 0)] * 4
        pad[axis] = (r, r)
        xp = np.pad(x, pad, mode="symmetric")  # (d c b a | a b c d): scipy's "reflect"
        out = np.zeros_like(x)
        lead = (slice(None),) * axis
        for i, wi in enumerate(k):
            out += wi * xp[lead + (slice(i, i + n),)]
        x = out
    return x.astype(np.float32)


def _baseline_images(images: np.ndarray, kind: str, sigma: float, fill: float) -> np.ndarray:
    if kind == "blur":
        return gaussian_blur(images, sigma)
    if kind == "constant":
        return np.full_like(images, fill, dtype=np.float32)
    raise InputError(f"unknown baseline {kind!r}; use 'blur' or 'constant'")


def _ranks_desc(maps: np.ndarray) -> np.ndarray:
    """``(B, H, W)`` -> ``(B, H, W)`` int: position of each pixel in decreasing map order (ties: raster order)."""
    b = maps.shape[0]
    flat = maps.reshape(b, -1)
    order = np.argsort(-flat, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(flat.shape[1])[None, :], axis=1)
    return ranks.reshape(maps.shape)


def rise_kernel(size: int = 11, sigma: float = 5.0) -> np.ndarray:
    """RISE's blur kernel ``gkern(klen=11, nsig=5)``: ``scipy.ndimage.gaussian_filter`` of a centred unit
    impulse on a ``size × size`` grid (so the Gaussian is folded back at the grid's edges): ``(size, size)``."""
    impulse = np.zeros((size, size))
    impulse[size // 2, size // 2] = 1.0
    return ndimage.gaussian_filter(impulse, sigma)


def rise_blur(images) -> np.ndarray:
    """RISE's insertion substrate: every channel of ``images (B, H, W, C)`` convolved with
    :func:`rise_kernel`, zero padding (``conv2d(x, kern, padding=klen // 2)``). float32 ``(B, H, W, C)``."""
    x = np.asarray(images, np.float64)
    if x.ndim != 4:
        raise InputError(f"rise_blur needs images (B, H, W, C); got shape {x.shape}")
    k = rise_kernel()
    r = k.shape[0] // 2
    h, w = x.shape[1:3]
    xp = np.pad(x, ((0, 0), (r, r), (r, r), (0, 0)))
    out = np.zeros_like(x)
    for i in range(k.shape[0]):
        for j in range(k.shape[1]):
            out += k[i, j] * xp[:, i:i + h, j:j + w]
    return out.astype(np.float32)


def _ranks_rise(maps: np.ndarray) -> np.ndarray:
    """As :func:`_ranks_desc` in RISE's order, ``np.flip(np.argsort(map))`` (ties: reverse raster order)."""
    b = maps.shape[0]
    flat = maps.reshape(b, -1)
    order = np.flip(np.argsort(flat, axis=1, kind="stable"), axis=1)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(flat.shape[1])[None, :], axis=1)
    return ranks.reshape(maps.shape)


def _deletion_plan(images, maps, targets, steps: int, baseline, sigma: float, fill: float, protocol: str):
    """What deletion/insertion needs, shared by :func:`deletion_insertion` and :func:`deletion_insertion_batched`:
    images ``(B, H, W, C)``, targets ``(B,)``, bases ``(2, B, H, W, C)`` (deletion's, insertion's), pixel ranks
    ``(B, H, W)``, pixels changed per step ``(T,)``, the curve's fractions ``(T,)`` and the AUC abscissae ``(T,)``."""
    x = np.asarray(images, dtype=np.float32)
    m = _check_map(maps, 3, "maps")
    t = np.asarray(targets).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != m.shape:
        raise InputError(f"images must be (B, H, W, C) with maps (B, H, W) of the same B, H, W; got {x.shape} and {m.shape}")
    if t.shape[0] != x.shape[0]:
        raise InputError(f"got {x.shape[0]} images but {t.shape[0]} targets")
    if steps < 2:
        raise InputError(f"need steps >= 2; got steps={steps}")
    n_img, h, w = m.shape
    if protocol == "rise":
        bases = np.stack([np.zeros_like(x), rise_blur(x)])
        ranks = _ranks_rise(m)
        step = -(-h * w // (steps - 1))
        n_steps = -(-h * w // step)
        counts = np.minimum(np.arange(n_steps + 1) * step, h * w)
        fractions = counts / float(h * w)
        xs = np.linspace(0.0, 1.0, n_steps + 1)  # RISE's AUC: uniform in the step index
    elif protocol == "chipjax":
        kinds = (baseline, baseline) if isinstance(baseline, str) else tuple(baseline)
        made = {kind: _baseline_images(x, kind, sigma, fill) for kind in set(kinds)}
        bases = np.stack([made[kind] for kind in kinds])
        ranks = _ranks_desc(m)
        fractions = np.linspace(0.0, 1.0, steps)
        counts = np.rint(fractions * h * w).astype(np.int64)
        xs = fractions
    else:
        raise InputError(f"unknown deletion/insertion protocol {protocol!r}; use 'rise' or 'chipjax'")
    return x, t, bases, ranks, counts, fractions, xs


def _curves_result(curves: np.ndarray, fractions: np.ndarray, xs: np.ndarray) -> dict:
    """``curves (B, 2, T)`` -> :func:`deletion_insertion`'s dict."""
    return {
        "deletion_auc": auc(xs, curves[:, 0]),
        "insertion_auc": auc(xs, curves[:, 1]),
        "curves": {"fractions": fractions, "deletion": curves[:, 0], "insertion": curves[:, 1]},
    }


def deletion_insertion(
    score_fn: Callable,
    images,
    maps,
    targets,
    steps: int = 21,
    baseline: str | tuple[str, str] = "blur",
    batch: int = 64,
    sigma: float = 5.0,
    fill: float = 0.0,
    protocol: str = "chipjax",
) -> dict:
    """Deletion and insertion curves and their AUCs (Petsiuk et al., RISE, 2018).

    ``protocol="rise"`` follows RISE's reference (``evaluation.py``, ``CausalMetric``) exactly: deletion
    to a zero substrate (0 = the mean colour of mean/std-normalised images), insertion from
    :func:`rise_blur` of the image, pixels in the order of ``np.flip(np.argsort(map))``, ``step =
    ceil(H*W / (steps - 1))`` pixels per step (the last step may be partial), and the AUC
    ``(Σ y - y_0/2 - y_n/2) / n`` over the ``n + 1`` points (``baseline``, ``sigma`` and ``fill`` are
    ignored). ``protocol="chipjax"`` (the first variant) is what follows.

    Pixels are taken in decreasing map order. At fraction ``f`` of the pixels (``round(f * H * W)``
    pixels, all channels):

    * deletion: those pixels of the image are replaced by the baseline image's (lower AUC = better map);
    * insertion: those pixels of the baseline image are replaced by the image's (higher AUC = better).

    Each curve is the target class's score at ``steps`` evenly spaced fractions from 0 to 1; the AUC is
    the trapezoid rule over ``[0, 1]``.

    Args:
      score_fn: images ``(n, H, W, 3)`` -> class probabilities ``(n, C)`` (numpy or jax). It always
        receives exactly ``batch`` images (the last chunk is padded), so a jitted function compiles once.
      images: ``(B, H, W, 3)`` float images as ``score_fn`` takes them (usually preprocessed).
      maps: ``(B, H, W)`` saliency maps at the images' resolution.
      targets: ``(B,)`` class scored for each image.
      steps: number of fractions ``>= 2`` (``0, 1/(steps-1), …, 1``).
      baseline: ``"blur"`` (Gaussian blur of the image, ``sigma`` pixels) or ``"constant"`` (every value
        ``fill``, e.g. 0 = the mean colour of mean/std-normalised images); a pair
        ``(deletion_baseline, insertion_baseline)`` sets them apart (RISE: ``("constant", "blur")``).
      batch: images per ``score_fn`` call.

    Returns:
      ``{"deletion_auc": (B,), "insertion_auc": (B,),
      "curves": {"fractions": (T,), "deletion": (B, T), "insertion": (B, T)}}``.
    """
    if batch < 1:
        raise InputError(f"need batch >= 1; got batch={batch}")
    x, t, bases, ranks, counts, fractions, xs = _deletion_plan(images, maps, targets, steps, baseline, sigma, fill,
                                                               protocol)
    n_img, steps = x.shape[0], len(counts)

    # one job per (image, mode, step); mode 0 deletion, 1 insertion
    img_idx, mode_idx, step_idx = (a.ravel() for a in np.meshgrid(np.arange(n_img), [0, 1], np.arange(steps), indexing="ij"))
    scores = np.empty(img_idx.size, dtype=np.float64)
    for start in range(0, img_idx.size, batch):
        sel = np.arange(start, min(start + batch, img_idx.size))
        i, mode, k = img_idx[sel], mode_idx[sel], counts[step_idx[sel]]
        changed = ranks[i] < k[:, None, None]  # (n, H, W)
        take_base = (changed != (mode == 1)[:, None, None])[..., None]
        chunk = np.where(take_base, bases[mode, i], x[i])
        if len(sel) < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(sel), axis=0)])
        probs = np.asarray(score_fn(chunk))
        if probs.ndim != 2 or probs.shape[0] != batch:
            raise InputError(f"score_fn must return probabilities (n, C) for n={batch} images; got shape {probs.shape}")
        scores[sel] = probs[np.arange(len(sel)), t[i]]
    return _curves_result(scores.reshape(n_img, 2, steps), fractions, xs)


def _device_curves(prob_fn, images, bases, ranks, counts, targets):
    """Jitted body of :func:`deletion_insertion_batched`: ``(B, 2, T)`` target scores, one ``prob_fn`` call per
    (mode, step) on all B images, looped by ``lax.map`` inside one compiled program."""
    import jax
    import jax.numpy as jnp

    b = images.shape[0]
    modes = jnp.repeat(jnp.arange(2), counts.shape[0])
    ks = jnp.tile(counts, 2)

    def one(args):
        mode, k = args
        take_base = (ranks < k) != (mode == 1)  # deletion: the first k from the base; insertion: the rest
        mixed = jnp.where(take_base[..., None], bases[mode], images)
        return prob_fn(mixed)[jnp.arange(b), targets]

    scores = jax.lax.map(one, (modes, ks))  # (2T, B)
    return scores.reshape(2, counts.shape[0], b).transpose(2, 0, 1)


def deletion_insertion_batched(prob_fn: Callable, images, maps, targets, steps: int = 21,
                               baseline: str | tuple[str, str] = "blur", sigma: float = 5.0, fill: float = 0.0,
                               protocol: str = "chipjax") -> dict:
    """:func:`deletion_insertion` with the whole ``B`` images × ``T`` steps × 2 modes as one jitted call on
    the device.

    Args:
      prob_fn: a **jax-traceable** function images ``(B, H, W, C)`` -> probabilities ``(B, C)`` (e.g. a
        model's softmax); it is a static argument of the jit, so pass the same function object every time
        to reuse the compiled program. The other arguments are as :func:`deletion_insertion`.

    Returns:
      the same dict as :func:`deletion_insertion` (equal to it up to float32 rounding).
    """
    import jax.numpy as jnp

    x, t, bases, ranks, counts, fractions, xs = _deletion_plan(images, maps, targets, steps, baseline, sigma, fill,
                                                               protocol)
    run = _jitted_device_curves()
    curves = run(prob_fn, jnp.asarray(x), jnp.asarray(bases), jnp.asarray(ranks, jnp.int32),
                 jnp.asarray(counts, jnp.int32), jnp.asarray(t, jnp.int32))
    return _curves_result(np.asarray(curves, np.float64), fractions, xs)


_JITTED = {}


def _jitted_device_curves():
    if "curves" not in _JITTED:
        import jax

        _JITTED["curves"] = jax.jit(_device_curves, static_argnums=0)
    return _JITTED["curves"]



# --- scoring masked copies ---------------------------------------------------------------------------
def target_scores(score_fn: Callable, images, targets, batch: int = 64) -> np.ndarray:
    """``score_fn`` on ``images (n, H, W, C)`` in chunks of exactly ``batch`` (the last one padded):
    ``(n,)`` float64, the score of ``targets[i]`` for image ``i``."""
    x = np.asarray(images, np.float32)
    t = np.asarray(targets).reshape(-1)
    if t.shape[0] != x.shape[0]:
        raise InputError(f"got {x.shape[0]} images but {t.shape[0]} targets")
    out = np.empty(x.shape[0], np.float64)
    for start in range(0, x.shape[0], batch):
        chunk = x[start:start + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
        probs = np.asarray(score_fn(chunk))
        if probs.ndim != 2 or probs.shape[0] != batch:
            raise InputError(f"score_fn must return probabilities (n, C) for n={batch} images; got shape {probs.shape}")
        out[start:start + n] = probs[np.arange(n), t[start:start + n]]
    return out


def confidence_change(score_fn: Callable, images, maps, targets, batch: int = 64) -> dict:
    """Average drop and increase in confidence (Chattopadhyay et al., Grad-CAM++, WACV 2018).

    The image is multiplied by its map (``images * maps[..., None]``; for mean/std-normalised images 0 is
    the mean colour, as pytorch-grad-cam's ``CamMultImageConfidenceChange``), and the target's score ``O``
    on it is compared with the score ``Y`` on the image:

    * ``drop = max(0, Y - O) / Y`` per image (0 when ``Y == 0``); *average drop* is its mean (lower = better);
    * ``increase = O > Y`` per image; *increase in confidence* is its mean (higher = better).

    Args:
      score_fn, batch: as :func:`deletion_insertion`.
      images: ``(B, H, W, C)``; maps: ``(B, H, W)`` in ``[0, 1]``; targets: ``(B,)``.

    Returns:
      ``{"score": (B,) Y, "masked_score": (B,) O, "drop": (B,), "increase": (B,) bool}``.
    """
    x = np.asarray(images, np.float32)
    m = _check_map(maps, 3, "maps")
    if x.ndim != 4 or x.shape[:3] != m.shape:
        raise InputError(f"images must be (B, H, W, C) with maps (B, H, W) of the same B, H, W; got {x.shape} and {m.shape}")
    t = np.asarray(targets).reshape(-1)
    y = target_scores(score_fn, x, t, batch)
    o = target_scores(score_fn, x * m[..., None].astype(np.float32), t, batch)
    drop = np.where(y > 0, np.maximum(y - o, 0.0) / np.where(y > 0, y, 1.0), 0.0)
    return {"score": y, "masked_score": o, "drop": drop, "increase": o > y}


# --- ROAD (Rong et al., ICML 2022) -------------------------------------------------------------------
# neighbour offsets (row, column) and weights of the noisy linear imputation: 1/6 sideways, 1/12 diagonal
_ROAD_NEIGHBOURS = tuple(((dr, dc), (1 / 12 if dr and dc else 1 / 6))
                         for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc)
ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


def noisy_linear_impute(image, removed, noise: float = 0.01, rng=None) -> np.ndarray:
    """Fill the ``removed`` pixels of ``image`` by noisy linear imputation (ROAD, Rong et al. 2022).

    Every removed pixel becomes the weighted mean of its 8 neighbours inside the image (weights 1/6
    sideways, 1/12 diagonally, renormalised at the border), removed neighbours being unknowns of the same
    sparse linear system; then Gaussian noise of standard deviation ``noise`` is added to the filled pixels.
    When every pixel is removed there is nothing to interpolate from: they take the image's channel means.

    Args:
      image: ``(H, W, C)`` float.
      removed: ``(H, W)`` booleans, True where the pixel is removed.
      noise: absolute noise level (0: none).
      rng: a ``numpy.random.Generator`` for the noise (default: seed 0).

    Returns:
      ``(H, W, C)`` float32, equal to ``image`` where nothing was removed.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    x = np.asarray(image, np.float64)
    r = np.asarray(removed, bool)
    if x.ndim != 3 or r.shape != x.shape[:2]:
        raise InputError(f"noisy_linear_impute needs image (H, W, C) and removed (H, W); got {x.shape} and {r.shape}")
    h, w, c = x.shape
    out = x.copy()
    n = int(r.sum())
    if n == 0:
        return out.astype(np.float32)
    if n == h * w:
        out[:] = x.reshape(-1, c).mean(axis=0)
    else:
        rows, cols = np.nonzero(r)
        var = -np.ones((h, w), np.int64)
        var[rows, cols] = np.arange(n)
        eq_i, eq_j, eq_v = [np.arange(n)], [np.arange(n)], []
        diag = np.zeros(n)
        rhs = np.zeros((n, c))
        for (dr, dc), wt in _ROAD_NEIGHBOURS:
            rr, cc = rows + dr, cols + dc
            ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
            diag[ok] += wt
            idx = np.flatnonzero(ok)
            known = ~r[rr[ok], cc[ok]]
            rhs[idx[known]] -= wt * x[rr[ok][known], cc[ok][known]]
            eq_i.append(idx[~known])
            eq_j.append(var[rr[ok][~known], cc[ok][~known]])
            eq_v.append(np.full(int((~known).sum()), wt))
        values = np.concatenate([-diag] + eq_v)
        a = coo_matrix((values, (np.concatenate(eq_i), np.concatenate(eq_j))), shape=(n, n)).tocsc()
        solved = spsolve(a, rhs)
        out[rows, cols] = np.asarray(solved).reshape(n, c)
    if noise:
        rng = np.random.default_rng(0) if rng is None else rng
        out[r] += noise * rng.standard_normal((n, c))
    return out.astype(np.float32)


def road_removed(heatmap, percentile: float, order: str) -> np.ndarray:
    """Pixels ROAD removes from ``heatmap (H, W)`` at ``percentile`` (as pytorch-grad-cam's
    ``RemoveMostRelevantFirst``): ``order="morf"`` removes ``map >= P_p(map)`` (the top ``100 - p`` %),
    ``"lerf"`` removes ``1 - map >= P_p(1 - map)`` (the bottom ``100 - p`` %). ``(H, W)`` booleans."""
    m = np.asarray(heatmap, np.float32)
    if order == "lerf":
        m = 1 - m
    elif order != "morf":
        raise InputError(f"ROAD order must be 'morf' or 'lerf', got {order!r}")
    return ~(m < np.percentile(m, percentile))


def road(score_fn: Callable, images, maps, targets, percentiles: Sequence[float] = ROAD_PERCENTILES,
         noise: float = 0.01, seed: int = 0, batch: int = 64) -> dict:
    """ROAD: RemOve And Debias (Rong et al., ICML 2022), at pytorch-grad-cam's percentiles.

    For every percentile ``p`` the pixels of :func:`road_removed` (most relevant first, MoRF, and least
    relevant first, LeRF) are filled by :func:`noisy_linear_impute` and the target is scored again.
    MoRF: lower = better map; LeRF: higher = better. The combined score is pytorch-grad-cam's
    ``ROADCombined``: ``(mean LeRF - mean MoRF) / 2`` over the percentiles (higher = better; the original
    score cancels).

    Args:
      score_fn, batch: as :func:`deletion_insertion`; images ``(B, H, W, C)``; maps ``(B, H, W)`` in
        ``[0, 1]``; targets ``(B,)``.
      percentiles: ``(P,)``; pytorch-grad-cam's 10, 20, …, 90.
      noise: imputation noise (pytorch-grad-cam and the paper: 0.01).
      seed: noise seed (image ``i``, order ``o``, percentile ``k`` draw from ``(seed, i, o, k)``).

    Returns:
      ``{"percentiles": (P,), "morf": (B, P), "lerf": (B, P), "score": (B,), "morf_mean": (B,),
      "lerf_mean": (B,), "combined": (B,)}`` (scores after imputation; ``score`` on the image).
    """
    x = np.asarray(images, np.float32)
    m = _check_map(maps, 3, "maps")
    if x.ndim != 4 or x.shape[:3] != m.shape:
        raise InputError(f"images must be (B, H, W, C) with maps (B, H, W) of the same B, H, W; got {x.shape} and {m.shape}")
    t = np.asarray(targets).reshape(-1)
    ps = np.asarray(percentiles, np.float64).reshape(-1)
    if ps.size == 0 or (ps < 0).any() or (ps > 100).any():
        raise InputError(f"ROAD percentiles must lie in [0, 100]; got {list(ps)}")
    b = x.shape[0]
    filled = np.empty((b, 2, ps.size) + x.shape[1:], np.float32)
    for i in range(b):
        for o, order in enumerate(("morf", "lerf")):
            for k, p in enumerate(ps):
                rng = np.random.default_rng([seed, i, o, k])
                filled[i, o, k] = noisy_linear_impute(x[i], road_removed(m[i], p, order), noise, rng)
    after = target_scores(score_fn, filled.reshape((-1,) + x.shape[1:]), np.repeat(t, 2 * ps.size), batch)
    after = after.reshape(b, 2, ps.size)
    morf_mean, lerf_mean = after[:, 0].mean(axis=1), after[:, 1].mean(axis=1)
    return {"percentiles": ps, "morf": after[:, 0], "lerf": after[:, 1], "score": target_scores(score_fn, x, t, batch),
            "morf_mean": morf_mean, "lerf_mean": lerf_mean, "combined": (lerf_mean - morf_mean) / 2}


