"""CHIP: Channel-wise disentangled InterPretation (Cui, Wang & Wang, TNNLS 2020), as DESIGN.md §1 reads it.

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
"""
from __future__ import annotations

import dataclasses
import os
from functools import partial
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import perturb, solvers
from . import stats as st
from .errors import InputError, WeightsError
from .heatmaps import heatmap, normalize01
from .tap import Tap

DEFAULTS = dict(num_masks=2048, keep_prob=0.5, lam_ratio=0.05, score="prob", nonneg=False, balanced=False)


#: Relative duality gap at which CHIP's lasso stops (float32 reaches about 1e-7; 1e-6 gives the same maps, faster).
SOLVER_TOL = 1e-6


@partial(jax.jit, static_argnames=("tail_fn", "num_masks", "chunk", "keep_prob", "balanced", "score", "nonneg"))
def chip_weights(tail_fn: Callable, variables: Any, features: jax.Array, targets: jax.Array, key: jax.Array, *,
                 num_masks: int, chunk: int, keep_prob: float, balanced: bool, score: str, lam_ratio: float,
                 nonneg: bool) -> jax.Array:
    """Image-level CHIP channel importances.

    Args:
      features: ``(B, H, W, K)`` at the tap; targets: ``(B,)`` int class per image.
    Returns:
      ``(B, K)`` lasso weights of each image's target score on the channel masks.
    """
    stats = perturb.perturbation_stats(tail_fn, variables, features, key, num_masks=num_masks, chunk=chunk,
                                       keep_prob=keep_prob, balanced=balanced, score=score, classes=targets[:, None])
    W = solvers.chip_weights(stats, lam_ratio, nonneg=nonneg, tol=SOLVER_TOL)  # (B, K, 1)
    return W[..., 0]


def chip_maps(tap: Tap, x: jax.Array, targets: jax.Array, *, seed: int = 0, num_masks: int = DEFAULTS["num_masks"],
              keep_prob: float = DEFAULTS["keep_prob"], lam_ratio: float = DEFAULTS["lam_ratio"],
              score: str = DEFAULTS["score"], nonneg: bool = DEFAULTS["nonneg"], balanced: bool = DEFAULTS["balanced"],
              chunk_size: int | None = None, features: jax.Array | None = None,
              memory_budget: int | None = None) -> jax.Array:
    """Image-level CHIP heat maps.

    Args:
      tap: the network split at the layer to explain.
      x: ``(B, S, S, 3)`` preprocessed images.
      targets: ``(B,)`` int class to explain per image.
      seed: seed of the mask stream (same seed -> same masks -> same maps).
      num_masks: N perturbed networks per image.
      keep_prob: probability a channel stays on.
      lam_ratio: λ as a fraction of λ_max of each image's target (0 < lam_ratio < 1).
      score: ``prob`` (softmax), ``logit`` or ``logprob``.
      nonneg: constrain weights ≥ 0.
      chunk_size: perturbed evaluations per step (default ≈ 256); memory ∝ chunk.
      features: ``tap.head(x)`` if already computed.
      memory_budget: bytes the perturbation sweep may use; picks the chunk (at most
        ``chunk_size`` when both are given) and raises :class:`~chipjax.errors.ResourceError`
        before anything runs when one perturbed evaluation of the batch cannot fit.
    Returns:
      ``(B, S, S)`` maps in [0, 1].
    """
    check_lam_ratio(lam_ratio)
    batch = x.shape[0]
    chunk_size = perturb.default_chunk(num_masks, batch) * batch if chunk_size is None else chunk_size
    chunk = max(1, chunk_size // batch)
    perturb.check_perturbation_args(num_masks, keep_prob, chunk, score)
    A = tap.head(x) if features is None else features
    if memory_budget is not None:
        fit = perturb.chunk_for_memory(tap.tail_fn, tap.variables, A, num_masks=num_masks,
                                       memory_budget=memory_budget, num_classes=1)
        chunk = min(chunk, fit) if chunk_size is not None else fit
    W = chip_weights(tap.tail_fn, tap.variables, A, jnp.asarray(targets, jnp.int32), jax.random.PRNGKey(seed),
                     num_masks=num_masks, chunk=min(chunk, num_masks), keep_prob=float(keep_prob), balanced=balanced,
                     score=score, lam_ratio=float(lam_ratio), nonneg=nonneg)
    return heatmap(A, W, x.shape[1:3])


def check_lam_ratio(lam_ratio: float) -> None:
    if not (0.0 <= float(lam_ratio) < 1.0) or not np.isfinite(lam_ratio):
        raise InputError(f"lam_ratio must lie in [0, 1) (a fraction of λ_max; ≥ 1 zeroes every weight), got {lam_ratio!r}")


def fuse_maps(maps: Sequence[jax.Array], fusion: str = "geometric") -> jax.Array:
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

    # --- fitting --------------------------------------------------------------------------
    @classmethod
    def fit(cls, model, layer: str | None, images: Iterable, *, num_masks: int = DEFAULTS["num_masks"],
            keep_prob: float = DEFAULTS["keep_prob"], lam_ratio: float = DEFAULTS["lam_ratio"],
            score: str = DEFAULTS["score"], nonneg: bool = DEFAULTS["nonneg"], seed: int = 0,
            chunk_size: int = 256, progress: bool = False) -> "CHIP":
        """Fit class-level CHIP over a data set, streaming statistics.

        Args:
          model: a zoo :class:`~chipjax.models.base.Model`.
          layer: tap name (None: the model's default layer).
          images: iterable of ``x (B, S, S, 3)`` or ``(x, labels (B,))`` batches. With
            labels, class c's weights come from the images of class c (classes with no
            images fall back to the pooled statistics); without, every class is pooled.
          num_masks, keep_prob, lam_ratio, score, nonneg, seed, chunk_size: as for image-level CHIP.
          progress: show a progress bar.
        """
        tap = model.tap(layer)
        fitter = ClassStatsAccumulator(tap, num_masks=num_masks, keep_prob=keep_prob, score=score, seed=seed,
                                       chunk_size=chunk_size)
        check_lam_ratio(lam_ratio)
        from .progress import progress_bar

        for batch in progress_bar(images, desc=f"CHIP fit @ {tap.layer}", enable=progress):
            x, labels = batch if isinstance(batch, tuple) else (batch, None)
            fitter.add(x, labels)
        config = dict(num_masks=num_masks, keep_prob=keep_prob, lam_ratio=lam_ratio, score=score, nonneg=nonneg,
                      seed=seed)
        return fitter.to_model(model.name, config)

    def explain(self, model, x: jax.Array, targets: jax.Array) -> jax.Array:
        """``(B, S, S)`` maps of ``targets (B,)`` with one forward pass."""
        self.check_compatible(model)
        A = model.tap(self.layer).head(x)
        w = jnp.take(self.weights, jnp.asarray(targets, jnp.int32), axis=1).T  # (B, K)
        return heatmap(A, w, x.shape[1:3])

    def check_compatible(self, model) -> None:
        """Refuse a model this CHIP model was not fitted on: another network, an unknown layer, or a weight
        matrix whose shape ``(K, C)`` is not (channels at the layer, the model's classes)."""
        if model.name != self.arch:
            raise InputError(f"this CHIP model was fitted on {self.arch} at {self.layer}, not on {model.name}; "
                             f"load {self.arch} or fit a new CHIP model")
        if self.layer not in model.layers:
            raise InputError(f"this CHIP model's layer {self.layer} is not a layer of {model.name}")
        want = (_channels_at(model, self.layer), len(model.labels) if getattr(model, "labels", None) else None)
        got = tuple(np.shape(self.weights))
        if len(got) != 2 or got[0] != want[0] or (want[1] is not None and got[1] != want[1]):
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
        out = cls(weights=jnp.asarray(weights), arch=meta["arch"], layer=meta["layer"],
                  config=meta.get("config", {}), num_images=meta.get("num_images", 0))
        if layer is not None and layer != out.layer:
            raise InputError(f"this CHIP model was fitted at layer {out.layer}, not {layer}; leave the layer unset to "
                             f"use {out.layer}, or fit a CHIP model at {layer}")
        if model is not None:
            out.check_compatible(model)
        return out


def _channels_at(model, layer: str) -> int:
    """K, the channels of ``model``'s feature map at ``layer`` (shape inference only: nothing runs)."""
    x = jax.ShapeDtypeStruct((1, model.input_size, model.input_size, 3), jnp.float32)
    return int(jax.eval_shape(model.tap(layer).head_fn, model.variables, x).shape[-1])


class ClassStatsAccumulator:
    """Streams per-class CHIP statistics over batches of images (state lives here, the maths in pure functions).

    Holds the mask statistics (shared by every image), the sum of per-image cross
    moments ``Σ_j R_j (K, C)``, the per-class sums ``Σ_{j: y_j=c} R_j[:, c]`` and counts.
    """

    def __init__(self, tap: Tap, *, num_masks: int, keep_prob: float, score: str, seed: int, chunk_size: int):
        perturb.check_perturbation_args(num_masks, keep_prob, max(1, chunk_size), score)
        self.tap = tap
        self.options = dict(num_masks=num_masks, keep_prob=float(keep_prob), score=score)
        self.chunk_size = chunk_size
        self.key = jax.random.PRNGKey(seed)
        self.mask_stats = None
        self.cross_sum = None
        self.class_cross_sum = None
        self.var_sum = None
        self.class_var_sum = None
        self.class_counts = None
        self.num_images = 0

    def add(self, x: jax.Array, labels=None) -> None:
        """Fold a batch ``x (B, S, S, 3)`` with optional ``labels (B,)`` into the statistics."""
        A = self.tap.head(x)
        batch = A.shape[0]
        chunk = min(max(1, self.chunk_size // batch), self.options["num_masks"])
        s = perturb.perturbation_stats(self.tap.tail_fn, self.tap.variables, A, self.key, chunk=chunk,
                                       balanced=False, **self.options)
        R = st.cross(s)  # (B, K, C)
        V = st.score_var(s)  # (B, C)
        if self.cross_sum is None:
            self.mask_stats = jax.tree_util.tree_map(lambda a: a[0], s)
            self.cross_sum = jnp.zeros(R.shape[1:], jnp.float32)
            self.class_cross_sum = jnp.zeros(R.shape[1:], jnp.float32)
            self.var_sum = jnp.zeros(R.shape[2], jnp.float32)
            self.class_var_sum = jnp.zeros(R.shape[2], jnp.float32)
            self.class_counts = jnp.zeros(R.shape[2], jnp.float32)
        self.cross_sum = self.cross_sum + R.sum(0)
        self.var_sum = self.var_sum + V.sum(0)
        if labels is not None:
            labels = jnp.asarray(labels, jnp.int32)
            onehot = jax.nn.one_hot(labels, R.shape[2], dtype=jnp.float32)  # (B, C)
            self.class_cross_sum = self.class_cross_sum + jnp.einsum("bkc,bc->kc", R, onehot)
            self.class_var_sum = self.class_var_sum + jnp.einsum("bc,bc->c", V, onehot)
            self.class_counts = self.class_counts + onehot.sum(0)
        self.num_images += batch

    def state(self) -> dict:
        """The running statistics as a tree of arrays (for checkpoints)."""
        if self.cross_sum is None:
            return {}
        return {"mask_stats": {k: np.asarray(v) for k, v in self.mask_stats._asdict().items()},
                "cross_sum": np.asarray(self.cross_sum), "class_cross_sum": np.asarray(self.class_cross_sum),
                "var_sum": np.asarray(self.var_sum), "class_var_sum": np.asarray(self.class_var_sum),
                "class_counts": np.asarray(self.class_counts), "num_images": np.asarray(self.num_images)}

    def restore(self, state: dict) -> None:
        """Continue from :meth:`state` of an earlier run with the same options."""
        if not state:
            return
        self.mask_stats = st.Stats(**{k: jnp.asarray(v) for k, v in state["mask_stats"].items()})
        self.cross_sum = jnp.asarray(state["cross_sum"])
        self.class_cross_sum = jnp.asarray(state["class_cross_sum"])
        self.var_sum = jnp.asarray(state["var_sum"])
        self.class_var_sum = jnp.asarray(state["class_var_sum"])
        self.class_counts = jnp.asarray(state["class_counts"])
        self.num_images = int(state["num_images"])

    def to_model(self, arch: str, config: dict) -> CHIP:
        if self.num_images == 0:
            raise InputError("no images were given to fit the CHIP model; check the data source")
        G = st.gram(self.mask_stats)
        counts = self.class_counts
        has_images = counts[None, :] > 0
        R = jnp.where(has_images, self.class_cross_sum / jnp.maximum(counts, 1.0), self.cross_sum / self.num_images)
        y_var = jnp.where(has_images[0], self.class_var_sum / jnp.maximum(counts, 1.0), self.var_sum / self.num_images)
        lam = config["lam_ratio"] * solvers.lambda_max(R, nonneg=config["nonneg"])
        W = solvers.lasso(G, R, lam, nonneg=config["nonneg"], tol=SOLVER_TOL, y_var=y_var)
        return CHIP(weights=W, arch=arch, layer=self.tap.layer, config=config, cross_sum=self.cross_sum,
                    class_cross_sum=self.class_cross_sum, class_counts=counts, mask_stats=self.mask_stats,
                    num_images=self.num_images)
