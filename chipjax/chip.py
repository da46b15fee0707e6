"""CHIP: Channel-wise disentangled InterPretation (Cui, Wang & Wang, TNNLS 2020), as docs/DESIGN.md §1 reads it.

* Image-level CHIP (:func:`chip_maps`): perturb the channels of one layer with N
  random masks, regress each image's target-class score on the masks with a
  lasso, and weight the feature maps by the fitted channel importances.
* Class-level CHIP (:class:`CHIP`): the same regression pooled over a data set,
  per class, from streamed statistics; saved with orbax and reused, so a new
  image costs one forward pass.
* Refined CHIP (:func:`refined_chip_maps`): maps of several layers fused.

Every perturbed network is the same for all images (mask ``i`` comes from
``fold_in(key, i)``), so the mask Gram matrix ``G`` is shared and the pooled
cross-moment of a set of images is the mean of their per-image cross-moments —
exactly the statistics of one regression over all (mask, image) pairs.

Over 500 lines on purpose: the three readings of CHIP (image-level, class-level, refined) share the
mask stream, the solve and the map; the engine under them is :mod:`chipjax.perturb`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from functools import partial
from typing import Any, Iterable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import perturb, solvers
from . import stats as st
from .errors import InputError, WeightsError
from .heatmaps import heatmap, normalize01
from .options import ChipOptions, FitOptions
from .shapes import FeaturesIn, ImagesIn, Maps, MapsIn, TargetsIn
from .tap import Tap, channel_mask_site

#: CHIP's defaults, as :class:`chipjax.options.ChipOptions` declares them (written there once).
DEFAULTS = {name: getattr(ChipOptions, name) for name in ("num_masks", "keep_prob", "lam_ratio", "score", "nonneg",
                                                          "design", "seed")}

#: Relative duality gap at which CHIP's lasso stops (float32 reaches about 1e-7; 1e-6 gives the same maps, faster).
SOLVER_TOL = 1e-6

#: ``num_masks="auto"``: masks per round, the stability to reach and the most masks drawn.
AUTO = dict(round_masks=256, stability=ChipOptions.stability, max_masks=ChipOptions.max_masks)
#: FISTA iterations and relative duality gap of each stopping check of ``num_masks="auto"`` (warm-started):
#: a check needs the map, not the last digit of W. At 1e-3 the check maps agree with maps solved to 1e-6 to
#: Spearman r ≥ 0.9992 (Lite0 ``head`` and ``blocks.15.expand``, 256 and 512 masks, 6 composites) in 35–45 %
#: fewer iterations than at 1e-4 (benchmarks/RESULTS.md, issue 10).
AUTO_CHECK_ITERS = 300
AUTO_CHECK_TOL = 1e-3

log = logging.getLogger("chipjax")


class ImageFit(NamedTuple):
    """Image-level CHIP weights and how they were obtained.

    Attributes:
      weights: ``(B, K)`` lasso weights of each image's target score on the channel masks.
      num_masks: perturbed networks used (per image; every image sees the same masks).
      stability: ``(B,)`` predicted seed stability of each image's map (Spearman-Brown of the
        split-half rank correlation, see :func:`auto_weights`); NaN for a fixed mask count.
    """

    weights: jax.Array
    num_masks: int
    stability: np.ndarray


def solve_shared(stats: st.Stats, lam_ratio: float, *, nonneg: bool = False, lipschitz: jax.Array | None = None,
                 W0: jax.Array | None = None, max_iter: int = 5000, tol: float = SOLVER_TOL) -> jax.Array:
    """Image-level CHIP weights of B images from shared-layout statistics: ONE multi-output lasso.

    Every image saw the same masks, so they share ``G (K, K)``; image b's target scores give
    column b of ``R (K, B)``, with its own ``λ_b = lam_ratio · λ_max,b`` and score variance.

    Args:
      stats: :data:`chipjax.perturb.SHARED_AXES` layout with one class per image
        (``cross_comoment (B, K, 1)``).
      lipschitz: the top eigenvalue of ``G`` if known (cached per mask stream), else computed.
      W0: ``(B, K)`` warm start; max_iter: most FISTA iterations; tol: relative duality gap to stop at.
    Returns:
      ``(B, K)``.
    """
    G = st.gram(stats)  # (K, K)
    R = st.cross(stats)[..., 0].T  # (K, B)
    y_var = st.score_var(stats)[:, 0]  # (B,)
    lam = float(lam_ratio) * solvers.lambda_max(R, nonneg=nonneg)
    return solvers.lasso(G, R, lam, nonneg=nonneg, tol=tol, y_var=y_var, lipschitz=lipschitz,
                         W0=None if W0 is None else W0.T, max_iter=max_iter).T


def stream_lipschitz(stats: st.Stats, identity: tuple | None, name: str = "lipschitz") -> jax.Array | None:
    """Top eigenvalue of the stats' ``G``, once per mask stream ``identity`` and ``name`` (None under a
    trace: the solver computes it). ``name`` tells apart the mask sets a stream's entry identifies:
    ``"lipschitz"`` its own masks; for ``num_masks="auto"`` (identity: the last round)
    ``"lipschitz/half"`` every other round up to this one, ``"lipschitz/all"`` every round up to it."""
    if identity is None:
        return None
    return perturb.cached_for_stream(identity, name, lambda: solvers.top_eigenvalue(st.gram(stats)))


def image_weights(tap: Tap, features: jax.Array, targets: jax.Array, key: jax.Array, *, num_masks: int,
                  keep_prob: float = DEFAULTS["keep_prob"], design: str = DEFAULTS["design"],
                  score: str = DEFAULTS["score"], lam_ratio: float = DEFAULTS["lam_ratio"],
                  nonneg: bool = DEFAULTS["nonneg"], chunk: int | None = None, memory_budget: int | None = None,
                  first: int = 0, devices=None, compute_dtype=None) -> tuple[jax.Array, st.Stats]:
    """Image-level CHIP channel importances for a fixed number of masks, and the statistics behind them.

    The mask part of the statistics (Gram, centring) and the Lipschitz constant of the lasso
    come from the per-stream cache when ``key`` is concrete (:func:`chipjax.perturb.cached_for_stream`);
    under an outer ``jit`` (traced key) they are computed in place.

    Args:
      features: ``(B, H, W, K)`` at the tap; targets: ``(B,)`` int class per image.
      chunk: masks per step (``chunk · B`` tail evaluations); None: from ``memory_budget``
        (per device) or the default.
      compute_dtype: e.g. ``"bfloat16"``: the perturbed tails run in it (statistics float32).
    Returns:
      ``W (B, K)`` and the shared-layout :class:`~chipjax.stats.Stats`.
    """
    targets = jnp.asarray(targets, jnp.int32)
    tail_fn, variables, site = channel_mask_site(tap, features)
    stats = perturb.shared_perturbation_stats(tail_fn, variables, site, key, num_masks=num_masks,
                                              chunk=chunk, keep_prob=keep_prob, design=design, score=score,
                                              classes=targets[:, None], memory_budget=memory_budget, first=first,
                                              devices=devices, compute_dtype=compute_dtype)
    identity = perturb.stream_identity(key, num_masks=num_masks, num_channels=features.shape[-1],
                                       keep_prob=keep_prob, design=design, first=first)
    return solve_shared(stats, lam_ratio, nonneg=nonneg, lipschitz=stream_lipschitz(stats, identity)), stats


_merge_shared = jax.jit(jax.vmap(st.merge, in_axes=(perturb.SHARED_AXES, perturb.SHARED_AXES),
                                 out_axes=perturb.SHARED_AXES))


def split_half_stability(maps_a: jax.Array, maps_b: jax.Array) -> np.ndarray:
    """Predicted seed stability ``2r / (1 + r)`` (Spearman-Brown) from the rank correlation r of two
    maps ``(B, S, S)`` made from disjoint halves of the masks: ``(B,)``."""
    from .metrics import rank_correlations

    r = np.clip(rank_correlations(np.asarray(maps_a), np.asarray(maps_b)), 0.0, 1.0)
    return 2 * r / (1 + r)


def auto_weights(tap: Tap, features: jax.Array, targets: jax.Array, key: jax.Array, size: tuple[int, int], *,
                 stability: float = AUTO["stability"], max_masks: int = AUTO["max_masks"],
                 round_masks: int = AUTO["round_masks"], **options) -> ImageFit:
    """Image-level CHIP with as many masks as the maps need (``num_masks="auto"``).

    Masks stream in rounds of ``round_masks``, alternately into two halves A and B (disjoint
    mask numbers of one stream). After every pair of rounds both halves are solved and turned
    into maps; the rank correlation r of the two maps of an image predicts the stability of the
    map from all the masks by the Spearman-Brown formula ``2r / (1 + r)`` — an estimate of the
    mean Spearman correlation between the maps of two seeds at this mask count (the measure of
    ``benchmarks/RESULTS.md``). Streaming stops when every image reaches ``stability``, or at
    ``max_masks``; the weights are then solved from A and B merged. The count used is logged
    (logger ``chipjax``) and returned.

    Args:
      size: the map size ``(S, S)``; options: as :func:`image_weights` (not ``num_masks``).

    The halves' checks solve to :data:`AUTO_CHECK_TOL` in at most :data:`AUTO_CHECK_ITERS` FISTA
    iterations, each warm-started from the half's previous solution (a stopping test needs the map,
    not the last digit of W); the final weights are solved to :data:`SOLVER_TOL`. The Lipschitz
    constant of every half and of the union depends on the masks alone, so it is kept per mask
    stream (:func:`stream_lipschitz`): images explained with one seed compute it once.
    """
    if not 0.0 < float(stability) < 1.0:
        raise InputError(f"stability must lie strictly between 0 and 1, got {stability!r}")
    for name, value in (("max_masks", max_masks), ("round_masks", round_masks)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 2:
            raise InputError(f"{name} must be an integer ≥ 2, got {value!r}")
    lam_ratio, nonneg = options.pop("lam_ratio", DEFAULTS["lam_ratio"]), options.pop("nonneg", DEFAULTS["nonneg"])
    targets = jnp.asarray(targets, jnp.int32)
    tail_fn, variables, site = channel_mask_site(tap, features)
    mask_options = {name: options[name] for name in ("keep_prob", "design") if name in options}  # as the sweep's
    halves: list[st.Stats | None] = [None, None]
    checks: list[jax.Array | None] = [None, None]  # each half's weights, warm-starting the next check
    used, predicted = 0, np.zeros(features.shape[0])
    while True:
        for h in (0, 1):
            part = perturb.shared_perturbation_stats(tail_fn, variables, site, key, num_masks=round_masks,
                                                     classes=targets[:, None], first=used, **options)
            halves[h] = part if halves[h] is None else _merge_shared(halves[h], part)
            last = perturb.stream_identity(key, num_masks=round_masks, num_channels=features.shape[-1], first=used,
                                           **mask_options)
            checks[h] = solve_shared(halves[h], lam_ratio, nonneg=nonneg, W0=checks[h], max_iter=AUTO_CHECK_ITERS,
                                     tol=AUTO_CHECK_TOL, lipschitz=stream_lipschitz(halves[h], last, "lipschitz/half"))
            used += round_masks
        predicted = split_half_stability(*(heatmap(features, W, size) for W in checks))
        if predicted.min() >= stability or used + 2 * round_masks > max_masks:
            break
    merged = _merge_shared(*halves)
    W = solve_shared(merged, lam_ratio, nonneg=nonneg, W0=(checks[0] + checks[1]) / 2,
                     lipschitz=stream_lipschitz(merged, last, "lipschitz/all"))
    log.info("CHIP num_masks=auto: %d masks (predicted stability min %.3f, target %.3f)", used, predicted.min(),
             stability)
    return ImageFit(weights=W, num_masks=used, stability=predicted)


def chip_maps(tap: Tap, x: ImagesIn, targets: TargetsIn, *, seed: int = DEFAULTS["seed"],
              num_masks: int | str = DEFAULTS["num_masks"], keep_prob: float = DEFAULTS["keep_prob"],
              lam_ratio: float = DEFAULTS["lam_ratio"], score: str = DEFAULTS["score"],
              nonneg: bool = DEFAULTS["nonneg"], design: str = DEFAULTS["design"], chunk_size: int | None = None,
              features: jax.Array | None = None, memory_budget: int | None = None,
              stability: float = AUTO["stability"], max_masks: int = AUTO["max_masks"],
              compute_dtype=None) -> Maps:
    """Image-level CHIP heat maps.

    Args:
      tap: the network split at the layer to explain.
      x: ``(B, S, S, 3)`` preprocessed images.
      targets: ``(B,)`` int class to explain per image.
      seed: seed of the mask stream (same seed -> same masks -> same maps).
      num_masks: N perturbed networks per image, or ``"auto"``: as many as the maps need to
        reach ``stability`` (at most ``max_masks``; see :func:`auto_weights`).
      keep_prob: probability a channel stays on.
      lam_ratio: λ as a fraction of λ_max of each image's target (0 ≤ lam_ratio < 1).
      score: ``prob`` (softmax), ``logit`` or ``logprob``.
      nonneg: constrain weights ≥ 0.
      design: mask design, ``iid`` (the paper's reading) or ``balanced``
        (:func:`chipjax.perturb.sample_masks`).
      chunk_size: perturbed evaluations per step (default ≈ 256 on GPU/TPU; on CPU 128 for light
        tails, 8 and up for heavy ones, :func:`chipjax.perturb.cpu_evals_per_step`; or what
        ``memory_budget`` allows); memory ∝ chunk.
      features: ``tap.head(x)`` if already computed.
      memory_budget: bytes one device may use for the perturbation sweep; picks the chunk (at
        most ``chunk_size`` when both are given) and raises :class:`~chipjax.errors.ResourceError`
        before anything runs when one perturbed evaluation of the batch cannot fit.
      stability, max_masks: for ``num_masks="auto"``.
      compute_dtype: e.g. ``"bfloat16"``: the perturbed tails run in it (statistics float32).
    Returns:
      ``(B, S, S)`` maps in [0, 1].
    """
    options = ChipOptions(seed=seed, num_masks=num_masks, keep_prob=keep_prob, lam_ratio=lam_ratio, score=score,
                          nonneg=nonneg, design=design, chunk_size=chunk_size, memory_budget=memory_budget,
                          stability=stability, max_masks=max_masks, compute_dtype=compute_dtype).check()
    return chip_maps_with(tap, x, targets, options, features)


def chip_maps_with(tap: Tap, x: ImagesIn, targets: TargetsIn, options: ChipOptions,
                   features: FeaturesIn | None = None) -> Maps:
    """:func:`chip_maps` with its options already checked (``cj.explain`` checks them once, at its entry).

    Args:
      x: ``(B, S, S, 3)``; targets: ``(B,)``; options: a checked :class:`~chipjax.options.ChipOptions`;
      features: ``tap.head(x)`` if already computed.
    Returns:
      ``(B, S, S)`` maps in [0, 1].
    """
    A = tap.head(x) if features is None else features
    o = options
    chunk = None if o.chunk_size is None else perturb.masks_per_step(o.chunk_size, x.shape[0])
    fit_options = dict(keep_prob=o.keep_prob, design=o.design, score=o.score, lam_ratio=o.lam_ratio, nonneg=o.nonneg,
                       chunk=chunk, memory_budget=o.memory_budget, compute_dtype=o.compute_dtype)
    key = jax.random.PRNGKey(o.seed)
    if o.num_masks == "auto":
        W = auto_weights(tap, A, targets, key, x.shape[1:3], stability=o.stability, max_masks=o.max_masks,
                         **fit_options).weights
    else:
        W, _ = image_weights(tap, A, targets, key, num_masks=int(o.num_masks), **fit_options)
    return heatmap(A, W, x.shape[1:3])


def batch_arrays(batch) -> tuple[Any, Any]:
    """``(x, labels or None)`` from a batch: ``x``, ``(x, labels)`` or a :class:`chipjax.pipeline.Batch`."""
    if hasattr(batch, "x") and hasattr(batch, "labels"):
        return batch.x, batch.labels
    if isinstance(batch, tuple):
        x, labels = batch
        return x, labels
    return batch, None


#: Refined CHIP with ``layer_masks="per-channel"`` rounds each layer's mask count up to a multiple of this.
LAYER_MASKS_MULTIPLE = 64


def layer_mask_counts(num_masks: int, channels: Sequence[int], rule: str = "equal") -> list[int]:
    """Masks for each layer of Refined CHIP: ``L`` channel counts -> ``L`` mask counts.

    ``equal``: ``num_masks`` everywhere. ``per-channel``: ``num_masks`` at the widest layer and
    the same number of masks per channel at the others (``⌈num_masks · K_l / K_max⌉``, rounded up
    to a multiple of :data:`LAYER_MASKS_MULTIPLE`, never above ``num_masks``): the lasso's noise
    grows with ``K / N``, so this keeps it about equal across layers while a narrow, shallow
    layer — whose tail is the longest — runs fewer perturbed networks.
    """
    if rule == "equal":
        return [int(num_masks)] * len(channels)
    if rule != "per-channel":
        raise InputError(f"unknown layer_masks {rule!r}; choose equal or per-channel")
    widest, step = max(channels), LAYER_MASKS_MULTIPLE
    counts = []
    for k in channels:
        per_channel = -(-int(num_masks) * int(k) // widest)  # ⌈N · K_l / K_max⌉
        counts.append(min(int(num_masks), -(-per_channel // step) * step))
    return counts


def fuse_maps(maps: Sequence[MapsIn], fusion: str = "geometric") -> Maps:
    """Fuse per-layer maps ``L × (B, S, S)`` in [0, 1] into one ``(B, S, S)`` map in [0, 1].

    ``geometric``: element-wise product, L-th root (geometric mean); ``mean``; ``max``.
    """
    stack = jnp.stack([normalize01(m) for m in maps])
    if fusion == "geometric":
        fused = jnp.exp(jnp.mean(jnp.log(jnp.clip(stack, 1e-6, 1.0)), axis=0))
    elif fusion == "mean":
        fused = stack.mean(axis=0)
    elif fusion == "max":
        fused = stack.max(axis=0)
    else:
        raise InputError(f"unknown fusion {fusion!r}; choose geometric, mean or max")
    return normalize01(fused)


@dataclasses.dataclass
class CHIP:
    """A class-level CHIP model: channel importances ``weights (K, C)`` at one layer of one network.

    Build it with :meth:`fit` over a data set; :meth:`explain` then needs one
    forward pass per image. ``save``/``load`` use orbax-checkpoint.
    """

    weights: jax.Array
    arch: str
    layer: str
    config: dict
    cross_sum: jax.Array | None = None
    class_cross_sum: jax.Array | None = None
    class_counts: jax.Array | None = None
    mask_stats: Any = None
    num_images: int = 0
    fitted_classes: np.ndarray | None = None
    fit_report: dict | None = None

    # --- fitting --------------------------------------------------------------------------
    @classmethod
    def fit(cls, model, layer: str | None, images: Iterable, *, num_masks: int = FitOptions.num_masks,
            keep_prob: float = FitOptions.keep_prob, lam_ratio: float = FitOptions.lam_ratio,
            score: str = FitOptions.score, nonneg: bool = FitOptions.nonneg, seed: int = FitOptions.seed,
            chunk_size: int = FitOptions.chunk_size, progress: bool = False, classes: str = FitOptions.classes,
            compute_dtype=None) -> "CHIP":
        """Fit class-level CHIP over a data set, streaming statistics.

        Args:
          model: a zoo :class:`~chipjax.models.base.Model`.
          layer: tap name (None: the model's default layer).
          images: iterable of ``x (B, S, S, 3)``, ``(x, labels (B,))`` or :class:`chipjax.pipeline.Batch`
            batches. With labels, class c's weights come from the images of class c; without, every
            class is pooled over all images.
          num_masks, keep_prob, lam_ratio, score, nonneg, seed, chunk_size: as for image-level CHIP.
          progress: show a progress bar (images/s and perturbed evaluations/s).
          classes: ``"seen"`` solves only the classes that have images (the other columns of W are 0
            and :meth:`explain` refuses them); ``"all"`` solves every class, those without images from
            the pooled statistics (see :class:`ClassStatsAccumulator`).
          compute_dtype: the tail's dtype (e.g. ``"bfloat16"``); statistics stay float32.
        """
        FitOptions(num_masks=num_masks, keep_prob=keep_prob, lam_ratio=lam_ratio, score=score, nonneg=nonneg,
                   seed=seed, chunk_size=chunk_size, classes=classes).check()
        tap = model.tap(layer)
        fitter = ClassStatsAccumulator(tap, num_masks=num_masks, keep_prob=keep_prob, score=score, seed=seed,
                                       chunk_size=chunk_size, classes=classes, compute_dtype=compute_dtype)
        from .progress import rate_bar

        with rate_bar(f"CHIP fit @ {tap.layer}", evals_per_image=num_masks, enable=progress) as bar:
            for batch in images:
                x, labels = batch_arrays(batch)
                fitter.add(x, labels)
                bar.update(x.shape[0])
        config = dict(num_masks=num_masks, keep_prob=keep_prob, lam_ratio=lam_ratio, score=score, nonneg=nonneg,
                      seed=seed)
        return fitter.to_model(model.name, config)

    def explain(self, model, x: ImagesIn, targets: TargetsIn) -> Maps:
        """``(B, S, S)`` maps of ``targets (B,)`` with one forward pass."""
        self.check_compatible(model)
        return self.explain_features(model.tap(self.layer).head(x), targets, x.shape[1:3])

    def explain_features(self, features: FeaturesIn, targets: TargetsIn, size: tuple[int, int]) -> Maps:
        """``(B, *size)`` maps of ``targets (B,)`` from the layer's ``features (B, H, W, K)`` (no network run)."""
        self.check_fitted(targets)
        w = jnp.take(self.weights, jnp.asarray(targets, jnp.int32), axis=1).T  # (B, K)
        return heatmap(features, w, size)

    def check_fitted(self, targets) -> None:
        """Refuse targets whose class had no images in the fit (their weights were never solved)."""
        if self.fitted_classes is None or isinstance(targets, jax.core.Tracer):
            return
        t = np.asarray(targets).reshape(-1)
        missing = sorted({int(c) for c in t if not self.fitted_classes[int(c)]})
        if missing:
            raise InputError(f"class(es) {missing[:10]} had no images when this CHIP model was fitted, so it has no "
                             f"weights for them; fit on data that has them, or with classes='all' (pooled statistics)")

    def check_compatible(self, model) -> None:
        """Refuse a model this CHIP model was not fitted on: another network, an unknown layer, or a weight
        matrix whose shape ``(K, C)`` is not (channels at the layer, the model's classes)."""
        if model.name != self.arch:
            raise InputError(f"this CHIP model was fitted on {self.arch} at {self.layer}, not on {model.name}; "
                             f"load {self.arch} or fit a new CHIP model")
        if self.layer not in model.layers:
            raise InputError(f"this CHIP model's layer {self.layer} is not a layer of {model.name}")
        channels = _channels_at(model, self.layer) if hasattr(model, "input_size") else None  # zoo models
        want = (channels, len(model.labels) if getattr(model, "labels", None) else None)
        got = tuple(np.shape(self.weights))
        if len(got) != 2 or (want[0] is not None and got[0] != want[0]) or (want[1] is not None and got[1] != want[1]):
            raise InputError(f"this CHIP model's weights have shape {got}, but {model.name} at {self.layer} needs "
                             f"({want[0]}, {want[1]}) (channels, classes); the file was edited or fitted on "
                             f"another network: fit a new CHIP model")

    def top_channels(self, target: int, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Indices and signed weights of the ``k`` channels of class ``target`` with the largest ``|weight|``
        (as :func:`chipjax.viz.channel_bars` ranks them)."""
        w = np.asarray(self.weights[:, target])
        order = np.argsort(-np.abs(w), kind="stable")[:k]
        return order, w[order]

    # --- storage --------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> None:
        """Write the model as an orbax checkpoint (atomically)."""
        from . import io as cjio

        tree = {"weights": np.asarray(self.weights)}
        if self.fitted_classes is not None:
            tree["fitted_classes"] = np.asarray(self.fitted_classes, np.uint8)
        meta = {"kind": "chip-model", "arch": self.arch, "layer": self.layer, "config": self.config,
                "num_images": int(self.num_images)}
        cjio.save_variables(tree, directory, meta)

    @classmethod
    def load(cls, directory: str | os.PathLike, model=None, layer: str | None = None) -> "CHIP":
        """Read a saved model; with ``model``/``layer`` given, refuse one fitted elsewhere."""
        from . import io as cjio

        tree, meta = cjio.load_variables(directory)
        if not isinstance(meta, dict) or meta.get("kind") != "chip-model":
            raise WeightsError(f"{directory} is not a class-level CHIP model (write one with `chipjax fit`)")
        for key, kind in (("arch", str), ("layer", str), ("config", dict), ("num_images", int)):
            if key in ("config", "num_images") and key not in meta:
                continue
            if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
                raise WeightsError(f"{directory}: the CHIP model's header lacks a valid {key!r} (a {kind.__name__}); "
                                   f"the file was edited or damaged: fit the model again")
        weights = tree.get("weights") if isinstance(tree, dict) else None
        if weights is None or np.ndim(weights) != 2 or not np.issubdtype(np.asarray(weights).dtype, np.floating):
            raise WeightsError(f"{directory}: the CHIP model holds no (K, C) float weight matrix; fit the model again")
        fitted = tree.get("fitted_classes")
        if fitted is not None and np.shape(fitted) != (np.shape(weights)[1],):
            raise WeightsError(f"{directory}: the CHIP model's fitted_classes has shape {np.shape(fitted)}, not "
                               f"({np.shape(weights)[1]},) (one flag per class); fit the model again")
        out = cls(weights=jnp.asarray(weights), arch=meta["arch"], layer=meta["layer"],
                  config=meta.get("config", {}), num_images=meta.get("num_images", 0),
                  fitted_classes=None if fitted is None else np.asarray(fitted).astype(bool))
        if layer is not None and layer != out.layer:
            raise InputError(f"this CHIP model was fitted at layer {out.layer}, not {layer}; leave the layer unset to "
                             f"use {out.layer}, or fit a CHIP model at {layer}")
        if model is not None:
            out.check_compatible(model)
        return out


#: Batches a class-level fit may run ahead of the device before it waits (bounds memory; no per-batch sync).
MAX_INFLIGHT = 2


def _channels_at(model, layer: str) -> int:
    """K, the channels of ``model``'s feature map at ``layer`` (shape inference only: nothing runs)."""
    x = jax.ShapeDtypeStruct((1, model.input_size, model.input_size, 3), jnp.float32)
    return int(jax.eval_shape(model.tap(layer).head_fn, model.variables, x).shape[-1])


class ClassStatsAccumulator:
    """Streams per-class CHIP statistics over batches of images (state lives here, the maths in pure functions).

    Every image sees the same mask stream, so the mask statistics (count, mean, the ``K × K``
    co-moment) are computed **once** (:func:`chipjax.perturb.shared_perturbation_stats`, one Gram for
    the whole fit) and only per-image cross moments are summed. The running sums live on the device
    and one jitted update with donated buffers folds each batch in: there is no host round trip per
    batch (the loop waits only for the batch ``MAX_INFLIGHT`` behind, to bound memory).

    Sums (fields of :meth:`state`):
      class_cross_sum ``(K, C)``: column c is ``Σ_{j: y_j = c} R_j[:, c]``, ``R_j = cross moment / N``.
      class_var_sum ``(C,)``, class_counts ``(C,)``: the same for the score variances, and the image counts.
      cross_sum ``(K, C)``, var_sum ``(C,)``: ``Σ_j R_j`` over the images whose every class was scored
        (``classes="all"``, or unlabelled images); ``pooled_images`` counts them.

    Args:
      tap: the network split at the layer.
      num_masks, keep_prob, score, seed: the mask stream and score (as image-level CHIP).
      chunk_size: perturbed evaluations per step (images × masks).
      classes: ``"seen"`` (default): a labelled image is scored for its own class only, and only the
        classes that have images are solved; ``"all"``: every image is scored for every class, and
        classes without images get the pooled statistics (this is the pre-issue-11 behaviour, and
        ``C / 1`` times more cross-moment work).
      compute_dtype: run the tail in this dtype (e.g. ``"bfloat16"``); statistics stay float32.
    """

    def __init__(self, tap: Tap, *, num_masks: int, keep_prob: float, score: str, seed: int, chunk_size: int,
                 classes: str = "seen", compute_dtype=None):
        perturb.check_perturbation_args(num_masks, keep_prob, max(1, chunk_size), score)
        if classes not in ("seen", "all"):
            raise InputError(f"classes must be 'seen' (solve the classes that have images) or 'all', got {classes!r}")
        self.tap = tap
        self.options = dict(num_masks=int(num_masks), keep_prob=float(keep_prob), score=score)
        self.chunk_size = int(chunk_size)
        self.classes = classes
        self.compute_dtype = compute_dtype
        self.key = jax.random.PRNGKey(seed)
        self.mask_stats = None
        self.sums: dict | None = None
        self.num_images = 0
        self._inflight: list = []

    # the sums, by name (read-only views kept for callers of the earlier attributes)
    def _sum(self, name):
        return None if self.sums is None else self.sums[name]

    cross_sum = property(lambda self: self._sum("cross_sum"))
    class_cross_sum = property(lambda self: self._sum("class_cross_sum"))
    var_sum = property(lambda self: self._sum("var_sum"))
    class_var_sum = property(lambda self: self._sum("class_var_sum"))
    class_counts = property(lambda self: self._sum("class_counts"))

    def _init_sums(self, A: jax.Array) -> None:
        K = A.shape[-1]
        C = jax.eval_shape(self.tap.tail_fn, self.tap.variables, A[:1]).shape[-1]
        z = lambda *shape: jnp.zeros(shape, jnp.float32)  # noqa: E731
        self.sums = dict(cross_sum=z(K, C), class_cross_sum=z(K, C), var_sum=z(C), class_var_sum=z(C),
                         class_counts=z(C), pooled_images=z())

    def add(self, x: jax.Array, labels=None) -> None:
        """Fold a batch ``x (B, S, S, 3)`` with optional ``labels (B,)`` (host ints) into the statistics."""
        A = self.tap.head(x)
        batch = A.shape[0]
        if self.sums is None:
            self._init_sums(A)
        C = self.sums["class_counts"].shape[0]
        if labels is not None:
            labels = np.asarray(labels).reshape(-1)
            if labels.shape[0] != batch or labels.min(initial=0) < -1 or labels.max(initial=0) >= C:
                raise InputError(f"labels must be {batch} class indices in 0..{C - 1} (-1: unlabelled), one per "
                                 f"image; got {labels!r}")
            own_class = self.classes == "seen" and labels.min(initial=0) >= 0
            labels = jnp.asarray(labels, jnp.int32)
        else:
            own_class = False
        chunk = min(max(1, self.chunk_size // batch), self.options["num_masks"])
        tail_fn, variables, site = channel_mask_site(self.tap, A)
        s = perturb.shared_perturbation_stats(tail_fn, variables, site, self.key, chunk=chunk,
                                              classes=labels[:, None] if own_class else None,
                                              compute_dtype=self.compute_dtype, **self.options)
        if self.mask_stats is None:
            K = A.shape[-1]
            self.mask_stats = st.Stats(s.count, s.mask_mean, jnp.zeros(1), s.mask_comoment, jnp.zeros((K, 1)),
                                       jnp.zeros(1))
        if own_class:
            self.sums = _add_own_class(self.sums, s.cross_comoment, s.score_sqdev, s.count, labels)
        else:
            self.sums = _add_all_classes(self.sums, s.cross_comoment, s.score_sqdev, s.count,
                                         jnp.full((batch,), -1, jnp.int32) if labels is None else labels)
        self.num_images += batch
        self._inflight.append(s.score_mean)
        if len(self._inflight) > MAX_INFLIGHT:
            self._inflight.pop(0).block_until_ready()

    def block_until_ready(self) -> None:
        """Wait until every batch given so far is folded in."""
        if self.sums is not None:
            jax.block_until_ready(self.sums)
        self._inflight.clear()

    def state(self) -> dict:
        """The running statistics as a tree of host arrays (for checkpoints)."""
        if self.sums is None:
            return {}
        out = {"mask_stats": {k: np.asarray(v) for k, v in self.mask_stats._asdict().items()}}
        out.update({k: np.asarray(v) for k, v in self.sums.items()})
        out["num_images"] = np.asarray(self.num_images)
        return out

    def restore(self, state: dict) -> None:
        """Continue from :meth:`state` of an earlier run with the same options."""
        if not state:
            return
        self.mask_stats = st.Stats(**{k: jnp.asarray(v) for k, v in state["mask_stats"].items()})
        names = ("cross_sum", "class_cross_sum", "var_sum", "class_var_sum", "class_counts", "pooled_images")
        self.sums = {k: jnp.asarray(state[k], jnp.float32) for k in names}
        self.num_images = int(state["num_images"])

    def fitted_classes(self) -> np.ndarray:
        """``(C,)`` bool: the classes :meth:`to_model` solves."""
        counts = np.asarray(self.sums["class_counts"])
        if self.classes == "all" or float(self.sums["pooled_images"]) > 0:
            return np.ones(counts.shape, bool)
        return counts > 0

    def to_model(self, arch: str, config: dict) -> CHIP:
        """Solve the lasso of every fitted class (:meth:`fitted_classes`); the other columns of W are 0."""
        if self.num_images == 0:
            raise InputError("no images were given to fit the CHIP model; check the data source")
        self.block_until_ready()
        G = st.gram(self.mask_stats)
        fitted = self.fitted_classes()
        cols = jnp.asarray(np.flatnonzero(fitted))
        counts = self.sums["class_counts"][cols]
        pooled = jnp.maximum(self.sums["pooled_images"], 1.0)
        has_images = counts > 0
        R = jnp.where(has_images[None], self.sums["class_cross_sum"][:, cols] / jnp.maximum(counts, 1.0),
                      self.sums["cross_sum"][:, cols] / pooled)
        y_var = jnp.where(has_images, self.sums["class_var_sum"][cols] / jnp.maximum(counts, 1.0),
                          self.sums["var_sum"][cols] / pooled)
        lam = config["lam_ratio"] * solvers.lambda_max(R, nonneg=config["nonneg"])
        W_fitted = solvers.lasso(G, R, lam, nonneg=config["nonneg"], tol=SOLVER_TOL, y_var=y_var)
        K, C = self.sums["class_cross_sum"].shape
        W = jnp.zeros((K, C), W_fitted.dtype).at[:, cols].set(W_fitted)
        return CHIP(weights=W, arch=arch, layer=self.tap.layer, config=config, cross_sum=self.sums["cross_sum"],
                    class_cross_sum=self.sums["class_cross_sum"], class_counts=self.sums["class_counts"],
                    mask_stats=self.mask_stats, num_images=self.num_images, fitted_classes=fitted)


@partial(jax.jit, donate_argnums=(0,))
def _add_own_class(sums: dict, cross: jax.Array, sqdev: jax.Array, count: jax.Array, labels: jax.Array) -> dict:
    """Fold ``B`` images scored for their own class: ``cross (B, K, 1)``, ``sqdev (B, 1)``, ``labels (B,)``."""
    R = cross[:, :, 0] / count  # (B, K)
    return dict(sums, class_cross_sum=sums["class_cross_sum"].at[:, labels].add(R.T),
                class_var_sum=sums["class_var_sum"].at[labels].add(sqdev[:, 0] / count),
                class_counts=sums["class_counts"].at[labels].add(1.0))


@partial(jax.jit, donate_argnums=(0,))
def _add_all_classes(sums: dict, cross: jax.Array, sqdev: jax.Array, count: jax.Array, labels: jax.Array) -> dict:
    """Fold ``B`` images scored for every class: ``cross (B, K, C)``, ``sqdev (B, C)``; ``labels (B,)``,
    ``-1`` for an unlabelled image (it adds to the pooled sums only)."""
    R, V = cross / count, sqdev / count
    B = R.shape[0]
    labelled = labels >= 0
    own = jnp.where(labelled, labels, 0)
    w = labelled.astype(R.dtype)
    return dict(cross_sum=sums["cross_sum"] + R.sum(0), var_sum=sums["var_sum"] + V.sum(0),
                pooled_images=sums["pooled_images"] + B,
                class_cross_sum=sums["class_cross_sum"].at[:, own].add((R[jnp.arange(B), :, own] * w[:, None]).T),
                class_var_sum=sums["class_var_sum"].at[own].add(V[jnp.arange(B), own] * w),
                class_counts=sums["class_counts"].at[own].add(w))
