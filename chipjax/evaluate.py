"""``chipjax eval``: methods × layers × metrics over a data source, written as a table; resumable.

What is measured (one *run* is a method at a layer, e.g. ``chip@head``; ``refined-chip`` fuses several
layers, ``refined-chip@blocks.11.expand+blocks.15.expand+head``; RISE works on the input, ``rise@input``):

* **Targets.** Every map explains the sample's **ground-truth class** (localisation "GT-known"). A sample
  without a label is explained for the model's top-1 class and counts in no class-dependent metric.
* **Classification**, once per image: the top-5 classes of the model. A prediction is right when it is
  one of the sample's acceptable labels (:func:`chipjax.evalsets.acceptable_labels` for the bundled
  sets, where a photo may count as several ImageNet classes; the label itself for other sources).
* **Boxes** are mapped from the photo to the network's view (``model.view``: the ``S × S`` picture the
  network sees), and every map is compared with them there.
* ``pointing``: pointing game, a hit when the map's maximum lies within ``pointing_tolerance`` pixels
  (15, as Zhang et al.) of a ground-truth box (:func:`chipjax.metrics.pointing_game`).
* ``box_acc``: CAM protocol at ``box_threshold`` (0.2 of the map's maximum): the box of the largest
  blob has IoU ≥ 0.5 with a ground-truth box (:func:`chipjax.metrics.localization_correct`).
* ``max_box_acc``: the same accuracy at the best of the thresholds 0, 0.01, …, 0.99, the threshold
  chosen once for the whole set (:func:`chipjax.metrics.max_box_acc`).
* ``top1_loc``: top-1 localisation error, ``1 − mean(top-1 right AND box right)``.
* ``deletion`` / ``insertion``: AUC of the target's softmax probability as pixels are removed / added
  in the map's order (:func:`chipjax.metrics.deletion_insertion`, blurred baseline, 21 steps).
* ``sanity`` (not by default): Spearman r between each map and the map of the same run on the model
  whose top ``sanity_top`` parameterised units are re-initialised (lower = the map depends on them).

Output folder: ``results.md`` (the table), ``results.csv``, ``records.jsonl`` (one line per
(image, run)), ``run.json`` (the settings), ``timing.csv``, ``deletion.png``/``insertion.png`` (mean
curves) and ``examples.png`` (overlays of the first images).

Resuming: records are buffered and appended to ``records.jsonl`` (then ``fsync``) every
``checkpoint_every`` records, at the end, and on SIGINT/SIGTERM; a line cut short by a crash is dropped
when the file is read back. Rerunning the same command skips the (batch, run) units whose records are
all on disk and computes the rest. Batches are fixed by the image index (``i // batch_size``) and every
random choice has a fixed seed, so a resumed run writes the same table as an uninterrupted one; a
SIGKILL loses at most the records of one interval. Table files are written to a temporary file and
moved into place (:func:`os.replace`).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import hashlib
import inspect
import io
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import uuid
import weakref
from functools import lru_cache
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .errors import ChipjaxError, InputError

log = logging.getLogger("chipjax")

__all__ = [
    "METRICS", "DEFAULT_METRICS", "BUNDLED_SETS", "Settings", "Run", "EvalSource",
    "parse_runs", "load_source", "view_box_transform", "boxes_in_view", "randomized_model",
    "evaluate", "summarize", "results_table", "add_eval_parser", "cmd_eval", "main",
]

METRICS = ("pointing", "box_acc", "max_box_acc", "top1_loc", "deletion", "insertion", "sanity")
DEFAULT_METRICS = METRICS[:-1]
BUNDLED_SETS = ("photos", "composites", "two-object")
ALL_METHODS = "chip,refined-chip,cam,gradcam,gradcam++,scorecam,ablationcam,rise"
MAX_BOX_THRESHOLDS = np.arange(0.0, 1.0, 0.01)

RECORDS_FILE = "records.jsonl"
CONFIG_FILE = "run.json"
EXAMPLES_DIR = "examples"
CONFIG_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Settings:
    """How the metrics are computed (all part of a run's identity).

    Attributes:
      box_threshold: CAM box threshold, a fraction of each map's maximum.
      iou: IoU a box needs to count as right.
      pointing_tolerance: pixels (in the network's view) around a box that still count as a hit.
      deletion_steps: points on the deletion/insertion curves (fractions 0, 1/(T-1), …, 1).
      baseline: what deleted pixels become: ``blur`` or ``constant`` (0 = the mean colour).
      batch_size: images explained together (fixes the units of work; part of the results' identity).
      score_batch: images per forward pass in deletion/insertion.
      num_examples: images drawn in ``examples.png``.
      sanity_top: parameterised units, counted from the output, re-initialised for ``sanity``.
    """

    box_threshold: float = 0.2
    iou: float = 0.5
    pointing_tolerance: float = 15.0
    deletion_steps: int = 21
    baseline: str = "blur"
    batch_size: int = 4
    score_batch: int = 64
    num_examples: int = 4
    sanity_top: int = 2

    def check(self) -> "Settings":
        from .options import check_option

        for name in ("box_threshold", "iou", "pointing_tolerance", "deletion_steps", "batch_size", "score_batch",
                     "num_examples", "sanity_top"):
            check_option(name, getattr(self, name))  # type, range and finiteness (NaN refused) of each
        if not 0.0 <= self.box_threshold <= 1.0:
            raise InputError(f"box threshold must lie in [0, 1] (a fraction of the map's maximum), got {self.box_threshold}")
        if not 0.0 < self.iou <= 1.0:
            raise InputError(f"iou must lie in (0, 1], got {self.iou}")
        if self.pointing_tolerance < 0:
            raise InputError(f"pointing tolerance must be >= 0 pixels, got {self.pointing_tolerance}")
        if self.deletion_steps < 2:
            raise InputError(f"deletion/insertion curves need at least 2 steps, got {self.deletion_steps}")
        if self.baseline not in ("blur", "constant"):
            raise InputError(f"baseline must be 'blur' or 'constant', got {self.baseline!r}")
        for name in ("batch_size", "score_batch"):
            if getattr(self, name) < 1:
                raise InputError(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}")
        if self.num_examples < 0 or self.sanity_top < 1:
            raise InputError(f"need num_examples >= 0 and sanity_top >= 1; got {self.num_examples}, {self.sanity_top}")
        return self


# ----------------------------------------------------------------------------------------- runs
@dataclasses.dataclass(frozen=True)
class Run:
    """One method at one tap (``layers`` has one name), several (Refined CHIP) or none (RISE, at the input)."""

    method: str
    layers: tuple[str, ...]

    @property
    def key(self) -> str:
        """``"chip@head"``, ``"refined-chip@a+b+c"``, ``"rise@input"``."""
        return f"{self.method}@{'+'.join(self.layers) or 'input'}"

    @property
    def layer_arg(self):
        """The ``layer`` argument of :func:`chipjax.explain`."""
        if not self.layers:
            return None
        return list(self.layers) if self.method == "refined-chip" else self.layers[0]


def _split_list(value) -> list[str]:
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(v).strip() for v in items if str(v).strip()]


def parse_runs(methods, layers, model) -> list[Run]:
    """The runs of ``methods`` × ``layers``.

    Args:
      methods: method names or ``method@layer`` entries (a list or a comma-separated string);
        ``refined-chip@a+b`` names its layers, ``rise`` needs none.
      layers: tap names crossed with every entry without ``@`` (default: the model's default layer).
        ``refined-chip`` without ``@`` uses the model's stage layers; ``rise`` runs once at the input.
      model: the zoo model (for its layer names and defaults).
    """
    from .methods import METHODS
    from .tap import resolve_layer

    entries = _split_list(methods)
    if not entries:
        raise InputError(f"no methods given; choose from {', '.join(METHODS)} (optionally method@layer)")
    crossed = _split_list(layers) or [model.default_layer]
    runs: list[Run] = []
    for entry in entries:
        method, at, layer_text = entry.partition("@")
        method = method.strip().lower()
        if method not in METHODS:
            raise InputError(f"unknown method {method!r} in {entry!r}; choose from {', '.join(METHODS)}")
        if method == "rise":
            candidates = [()]
        elif at:
            names = tuple(l.strip() for l in layer_text.split("+") if l.strip())
            if not names:
                raise InputError(f"{entry!r} names no layer after '@'")
            candidates = [names]
        elif method == "refined-chip":
            candidates = [tuple(model.spec.stage_layers)]
        else:
            candidates = [(l,) for l in crossed]
        for names in candidates:
            if method not in ("refined-chip",) and len(names) > 1:
                raise InputError(f"{method} takes one layer, got {'+'.join(names)}; only refined-chip fuses several")
            run = Run(method, tuple(resolve_layer(l, model.layers) for l in names))
            if run not in runs:
                runs.append(run)
    return runs


# ------------------------------------------------------------------------------------- sources
@dataclasses.dataclass(frozen=True)
class EvalSource:
    """Samples to evaluate and which predictions count as right.

    Attributes:
      samples: a sequence of :class:`chipjax.data.Sample` (loaded on access).
      description: what they are, e.g. ``"composites(n=60, seed=0)"``.
      accept: label -> every class index that counts as a right prediction for it.
    """

    samples: Sequence
    description: str
    accept: Callable[[int], tuple[int, ...]]


def _exact_label(label: int) -> tuple[int, ...]:
    return (int(label),)


def _first(samples, n: int | None):
    if n is None:
        return samples
    if int(n) < 1:
        raise InputError(f"the number of images must be at least 1, got {n}")
    return samples[: int(n)]


def load_source(spec, num_images: int | None = None, seed: int = 0, boxes: str | None = None,
                split: str = "validation") -> EvalSource:
    """An :class:`EvalSource` from a name, a path or a sequence of samples.

    ``spec``:
      * ``"photos"``: :func:`chipjax.evalsets.photo_set` (real photos, hand boxes);
      * ``"composites"``: :func:`chipjax.evalsets.composite_set` (``num_images`` of them, default 200,
        from ``seed``);
      * ``"two-object"``: :func:`chipjax.evalsets.two_object_composites` (each canvas gives two samples);
      * ``"tfds:NAME_OR_DIR"``: a prepared tensorflow-datasets ``split``;
      * ``"ilsvrc:IMAGES_DIR"``: ILSVRC images with ``boxes`` (the XML folder or ``LOC_val_solution.csv``);
      * a folder: :func:`chipjax.data.folder_source` (``boxes.json``, class sub-folders or plain images);
      * a sequence of samples.

    ``num_images`` keeps the first ones (composites are made so that a shorter set is a prefix).
    """
    from . import data, evalsets

    if not isinstance(spec, (str, os.PathLike)):
        samples = list(spec)
        return EvalSource(_first(samples, num_images), f"{len(samples)} given samples", _exact_label)
    spec = os.fspath(spec)
    if spec == "photos":
        samples = evalsets.photo_set()
        return EvalSource(_first(samples, num_images), "photos", evalsets.acceptable_labels)
    if spec == "composites":
        n = 200 if num_images is None else int(num_images)
        return EvalSource(_first(evalsets.composite_set(n, seed=seed), n), f"composites(seed={seed})",
                          evalsets.acceptable_labels)
    if spec == "two-object":
        n = 100 if num_images is None else int(num_images)
        canvases = max(1, math.ceil(n / 2))
        return EvalSource(_first(evalsets.two_object_composites(canvases, seed=seed), n),
                          f"two-object(seed={seed})", evalsets.acceptable_labels)
    if spec.startswith("tfds:"):
        source = data.tfds_source(spec[5:], split=split)
        return EvalSource(_first(source, num_images), f"tfds {spec[5:]} {split}", _exact_label)
    if spec.startswith("ilsvrc:"):
        if not boxes:
            raise InputError("an ILSVRC source needs its boxes: --boxes XML_FOLDER or LOC_val_solution.csv")
        source = data.ilsvrc_source(spec[7:], boxes)
        return EvalSource(_first(source, num_images), f"ilsvrc {spec[7:]}", _exact_label)
    if os.path.isdir(spec):
        source = data.folder_source(spec)
        return EvalSource(_first(source, num_images), f"folder {spec}", _exact_label)
    raise InputError(f"unknown data {spec!r}: use {', '.join(BUNDLED_SETS)}, tfds:NAME, ilsvrc:IMAGES_DIR "
                     f"(with --boxes) or an image folder")


# ------------------------------------------------------------------------------ boxes in the view
def view_box_transform(view: Callable, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """How a ``view`` (uint8 ``(H, W, 3)`` -> ``(S_h, S_w, 3)``, a resize and/or crop) moves pixel edges.

    Returns ``scale (2,)``, ``offset (2,)`` (x then y) and the view's ``(S_h, S_w)``: a point at
    continuous coordinate ``u`` (pixel edges, ``0 .. W``) lands at ``scale · u + offset``.

    The views of :mod:`chipjax.models.preprocess` (:func:`~chipjax.models.preprocess.stretch_view`,
    :func:`~chipjax.models.preprocess.resize_crop_view`) are read exactly; any other view is measured by
    viewing two linear ramps (accurate to a small fraction of a pixel).
    """
    h, w = int(hw[0]), int(hw[1])
    exact = _known_view_transform(view, h, w)
    return exact if exact is not None else _probe_view_transform(view, h, w)


def _known_view_transform(view: Callable, h: int, w: int):
    from .models import preprocess as pp

    code = getattr(view, "__code__", None)
    if code is None:
        return None
    params = inspect.getclosurevars(view).nonlocals
    if code is pp.stretch_view(1).__code__:
        s = int(params["size"])
        return np.array([s / w, s / h]), np.zeros(2), (s, s)
    if code is pp.resize_crop_view(1, 1).__code__:
        size, to = int(params["size"]), int(params["resize_to"])
        nh, nw = (to, max(1, int(to * w / h))) if h <= w else (max(1, int(to * h / w)), to)
        top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
        return np.array([nw / w, nh / h]), np.array([-left, -top], dtype=np.float64), (size, size)
    return None


def _probe_axis(profile: np.ndarray, n_src: int) -> tuple[float, float]:
    """Fit ``src_centre(j) = c·j + d`` to a viewed ramp profile; return (scale, offset) for pixel edges."""
    n = len(profile)
    src = profile / 255.0 * (n_src - 1)
    lo, hi = int(0.1 * n), max(int(0.1 * n) + 2, int(0.9 * n))
    j = np.arange(n, dtype=np.float64)[lo:hi]
    c, d = np.polyfit(j, src[lo:hi], 1)
    # source centre (index i ↔ edge coordinate i + 0.5) of view pixel j (edge coordinate j + 0.5)
    scale = 1.0 / c
    return scale, 0.5 - scale * (d + 0.5)


def _probe_view_transform(view: Callable, h: int, w: int):
    xs = np.rint(np.arange(w) * 255.0 / max(1, w - 1)).astype(np.uint8)
    ys = np.rint(np.arange(h) * 255.0 / max(1, h - 1)).astype(np.uint8)
    ramp = np.zeros((h, w, 3), np.uint8)
    ramp[..., 0] = xs[None, :]
    ramp[..., 1] = ys[:, None]
    seen = np.asarray(view(ramp), np.float64)
    sx, ox = _probe_axis(seen[..., 0].mean(axis=0), w)
    sy, oy = _probe_axis(seen[..., 1].mean(axis=1), h)
    return np.array([sx, sy]), np.array([ox, oy]), (seen.shape[0], seen.shape[1])


def boxes_in_view(boxes, hw: tuple[int, int], view: Callable) -> np.ndarray:
    """Boxes ``(G, 4)`` of an ``hw`` photo in the pixels of ``view(photo)``, clipped to it (a box the
    view crops away becomes zero-area and never matches)."""
    scale, offset, (sh, sw) = _cached_transform(view, int(hw[0]), int(hw[1]))
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    moved = b * np.tile(scale, 2) + np.tile(offset, 2)
    return np.clip(moved, 0.0, np.array([sw, sh, sw, sh], np.float64))


@lru_cache(maxsize=256)
def _cached_transform(view: Callable, h: int, w: int):
    return view_box_transform(view, (h, w))


# ------------------------------------------------------------------------------------- models
def randomized_model(model, top: int, seed: int = 0):
    """``model`` with its top ``top`` parameterised units re-initialised from ``seed`` (cascading
    randomisation of Adebayo et al.), via :func:`chipjax.metrics.randomize_top_layers`."""
    import jax
    import jax.numpy as jnp

    from .metrics import randomize_top_layers
    from .models.base import Model

    present = {key for tree in model.variables.values() for key in tree}
    keys, first_unit = [], {}
    for index, unit in enumerate(model.spec.units):
        for key in (unit, unit.replace(".", "_")):
            if key in present and key not in keys:
                keys.append(key)
                first_unit[key] = index
                break
    top = min(int(top), len(keys))
    start = first_unit[keys[len(keys) - top]]
    # initialise only units[start:], on an input shaped like their input: cheap even for a big network
    module, size = model.module, model.input_size
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    inner = jax.eval_shape(lambda v, a: module.apply(v, a, start=0, stop=start), model.variables, x)
    init = jax.jit(lambda key, a: module.init(key, a, start=start, stop=None))
    fresh = init(jax.random.PRNGKey(seed), jnp.zeros(inner.shape, inner.dtype))
    variables = randomize_top_layers(model.variables, fresh, keys, top)
    return Model(model.spec, variables, f"{model.weights}, top {top} units re-initialised (seed {seed})")


_SCORERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def softmax_scorer(model) -> Callable[[np.ndarray], np.ndarray]:
    """``images (n, S, S, 3) -> softmax probabilities (n, C)``, jit-compiled once per model (for deletion/insertion)."""
    import jax
    import jax.numpy as jnp

    if model not in _SCORERS:
        module, variables = model.module, model.variables  # not the model: the cache must not keep it alive
        apply = jax.jit(lambda v, x: jax.nn.softmax(module.apply(v, x), axis=-1))
        _SCORERS[model] = lambda images: np.asarray(apply(variables, jnp.asarray(images, jnp.float32)))
    return _SCORERS[model]


# ----------------------------------------------------------------------------------- the work
@dataclasses.dataclass
class _Batch:
    """One batch of images, prepared once and shared by every run."""

    indices: list[int]
    names: list[str]
    views: list[np.ndarray]       # uint8 (S, S, 3)
    x: Any                        # (B, S, S, 3) float32
    labels: list[int | None]
    targets: np.ndarray           # (B,) int
    top5: np.ndarray              # (B, 5)
    top1_ok: list[bool | None]
    top5_ok: list[bool | None]
    boxes: list[np.ndarray]       # (G, 4) in view pixels


def _load_samples(source: EvalSource, indices: Sequence[int], skip_bad: bool) -> tuple[list, list, dict]:
    """``(indices, samples, {index: reason})``: the samples that load, and (with ``skip_bad``) why the others
    did not; without it the first unreadable sample is an error that says how to skip it."""
    good, samples, bad = [], [], {}
    for i in indices:
        try:
            samples.append(source.samples[i])
            good.append(i)
        except ChipjaxError as e:
            if not skip_bad:
                raise type(e)(f"{e}; rerun with --skip-bad to skip (and list) such samples") from None
            bad[i] = str(e)
    return good, samples, bad


def dropped_reason(boxes_given: np.ndarray, boxes_seen: np.ndarray) -> str | None:
    """Why a sample with boxes counts in no box metric: all its boxes ``(G, 4)`` (in the image) have no area,
    or none is left in the network's view ``boxes_seen (G, 4)``; ``None`` when it counts (or has no boxes)."""
    given = np.asarray(boxes_given, np.float64).reshape(-1, 4)
    if len(given) == 0:
        return None
    if not np.any((given[:, 2] > given[:, 0]) & (given[:, 3] > given[:, 1])):
        return "every box lies outside the image"
    seen = np.asarray(boxes_seen, np.float64).reshape(-1, 4)
    if not np.any((seen[:, 2] > seen[:, 0]) & (seen[:, 3] > seen[:, 1])):
        return "every box lies outside the network's view (cropped away)"
    return None


def _prepare_batch(model, source: EvalSource, indices: Sequence[int], samples=None) -> _Batch:
    import jax.numpy as jnp

    samples = [source.samples[i] for i in indices] if samples is None else samples
    views = [model.view(s.image) for s in samples]
    x = jnp.concatenate([jnp.asarray(model.spec.normalize(v)[None], jnp.float32) for v in views])
    logits = np.asarray(model(x))
    top5 = np.argsort(-logits, axis=1, kind="stable")[:, :5]
    labels = [None if s.label is None else int(s.label) for s in samples]
    targets = np.array([top5[b, 0] if l is None else l for b, l in enumerate(labels)], np.int32)
    ok1, ok5 = [], []
    for b, l in enumerate(labels):
        accepted = set(source.accept(l)) if l is not None else None
        ok1.append(None if accepted is None else bool(int(top5[b, 0]) in accepted))
        ok5.append(None if accepted is None else bool(any(int(c) in accepted for c in top5[b])))
    boxes = [boxes_in_view(s.boxes, s.image.shape[:2], model.spec.view) for s in samples]
    batch = _Batch(list(indices), [str(s.name) for s in samples], views, x, labels, targets, top5, ok1, ok5, boxes)
    batch.dropped = [dropped_reason(s.boxes, b) for s, b in zip(samples, boxes)]
    return batch


def _maps(model, batch: _Batch, run: Run, options: Mapping) -> np.ndarray:
    from .methods import explain

    maps = explain(model, batch.x, method=run.method, layer=run.layer_arg, target=[int(t) for t in batch.targets],
                   **dict(options.get(run.method, {})))
    return np.asarray(maps, np.float32)


def _unit_records(model, batch: _Batch, run: Run, metrics: Sequence[str], options: Mapping, settings: Settings,
                  scorer, random_model) -> tuple[list[dict], np.ndarray]:
    """Records of one (batch, run) unit, and its maps ``(B, S, S)``."""
    from . import metrics as M

    t0 = time.perf_counter()
    maps = _maps(model, batch, run, options)
    records = []
    for b, i in enumerate(batch.indices):
        rec: dict[str, Any] = {"i": int(i), "name": batch.names[b], "run": run.key, "label": batch.labels[b],
                               "target": int(batch.targets[b]), "top5": [int(c) for c in batch.top5[b]],
                               "top1_ok": batch.top1_ok[b], "top5_ok": batch.top5_ok[b]}
        gt = batch.boxes[b]
        has_box = bool(np.any((gt[:, 2] > gt[:, 0]) & (gt[:, 3] > gt[:, 1])))
        if getattr(batch, "dropped", None) and batch.dropped[b]:
            rec["dropped"] = batch.dropped[b]
        if "pointing" in metrics:
            rec["pointing"] = bool(M.pointing_game(maps[b:b + 1], [batch.boxes[b]], settings.pointing_tolerance)[0]) \
                if has_box else None
        if "box_acc" in metrics or "top1_loc" in metrics:
            rec["box_ok"] = M.localization_correct(maps[b], batch.boxes[b], settings.box_threshold, settings.iou) \
                if has_box else None
        if "max_box_acc" in metrics:
            acc = M.max_box_acc(maps[b:b + 1], [batch.boxes[b]], MAX_BOX_THRESHOLDS, settings.iou)["accuracy"]
            rec["box_ok_at"] = "".join("1" if a else "0" for a in acc) if has_box else None
        records.append(rec)
    if "deletion" in metrics or "insertion" in metrics:
        di = M.deletion_insertion(scorer, np.asarray(batch.x), maps, batch.targets, steps=settings.deletion_steps,
                                  baseline=settings.baseline,
                                  batch=min(settings.score_batch, 2 * settings.deletion_steps * settings.batch_size))
        for b, rec in enumerate(records):
            rec["deletion_auc"] = float(di["deletion_auc"][b])
            rec["insertion_auc"] = float(di["insertion_auc"][b])
            rec["deletion_curve"] = [float(v) for v in di["curves"]["deletion"][b]]
            rec["insertion_curve"] = [float(v) for v in di["curves"]["insertion"][b]]
    if "sanity" in metrics:
        r = M.rank_correlations(maps, _maps(random_model, batch, run, options))
        for b, rec in enumerate(records):
            rec["sanity_r"] = float(r[b])
    seconds = (time.perf_counter() - t0) / len(records)
    for rec in records:
        rec["seconds"] = round(seconds, 4)
    return records, maps


# ----------------------------------------------------------------------------------- the store
def _atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and :func:`os.replace`."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def record_checksum(rec: Mapping) -> str:
    """crc32 (8 hex digits) of a record's JSON without its ``crc`` field: written with each record."""
    import zlib

    text = json.dumps({k: v for k, v in rec.items() if k != "crc"}, sort_keys=True)
    return f"{zlib.crc32(text.encode()) & 0xFFFFFFFF:08x}"


def read_records(path: str, damaged: list | None = None) -> list[dict]:
    """The complete records of a ``records.jsonl``, in file order, one per (image, run): a later line
    replaces an earlier one (a sample recomputed after its data changed).

    A line a crash cut short (it does not end in ``}``) is skipped silently; a line that ends like a
    record but does not parse or does not match its ``crc`` is damaged: skipped (so recomputed), and
    its line number appended to ``damaged`` when given. Records come back without their ``crc``.
    """
    if not os.path.isfile(path):
        return []
    out: dict[tuple[int, str], dict] = {}
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            key = (int(rec["i"]), str(rec["run"]))
            if "crc" in rec and rec["crc"] != record_checksum(rec):
                raise ValueError("checksum")
        except (ValueError, KeyError, TypeError):
            if damaged is not None and line.rstrip().endswith(b"}"):
                damaged.append(number)
            continue
        rec.pop("crc", None)
        out.pop(key, None)
        out[key] = rec
    return list(out.values())


class RecordStore:
    """Records of one output folder: those on disk plus a buffer flushed every ``every`` records."""

    def __init__(self, out_dir: str, config: dict, resume: bool, every: int):
        if every < 1:
            raise InputError(f"checkpoint interval must be at least 1 record, got {every}")
        self.path = os.path.join(out_dir, RECORDS_FILE)
        self.every = int(every)
        config_path = os.path.join(out_dir, CONFIG_FILE)
        old = _read_json(config_path)
        if resume and old is not None and old != config:
            differ = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            raise InputError(f"{out_dir} holds results of another evaluation (it differs in: {', '.join(differ)}); "
                             f"use another --out, or --restart to discard them")
        if not resume:
            for name in (RECORDS_FILE,):
                if os.path.exists(os.path.join(out_dir, name)):
                    os.remove(os.path.join(out_dir, name))
            _clear_examples(out_dir)
        if old != config or not resume:
            _atomic_write(config_path, (json.dumps(config, indent=1, sort_keys=True) + "\n").encode())
        damaged: list[int] = []
        self.records = {(int(r["i"]), r["run"]): r for r in read_records(self.path, damaged)}
        if damaged:
            log.warning("chipjax: %d damaged record(s) in %s (line %s) are ignored and computed again", len(damaged),
                        self.path, ", ".join(map(str, damaged[:5])) + (", ..." if len(damaged) > 5 else ""))
        self.damaged = damaged
        self.on_disk = len(self.records)
        self.buffer: list[dict] = []
        self.digests: Sequence[str] | None = None  # per-sample content hashes; records of other content are stale

    def current(self, i: int, run_key: str) -> dict | None:
        """The record of (image ``i``, run), if it was computed from the sample as it is now."""
        rec = self.records.get((int(i), run_key))
        if rec is None or (self.digests is not None and (i >= len(self.digests)
                                                         or rec.get("sample") != self.digests[i])):
            return None
        return rec

    def done(self, indices: Iterable[int], run: Run) -> bool:
        return all(self.current(i, run.key) is not None for i in indices)

    def add(self, records: Sequence[dict]) -> None:
        for rec in records:
            key = (int(rec["i"]), rec["run"])
            if self.current(*key) is None:
                self.records[key] = rec
                self.buffer.append(rec)
        if len(self.buffer) >= self.every:
            self.flush()

    def flush(self) -> None:
        """Append the buffer to the JSONL file and ``fsync`` it."""
        if not self.buffer:
            return
        text = "".join(json.dumps(dict(r, crc=record_checksum(r)), sort_keys=True) + "\n"
                       for r in self.buffer).encode()
        with open(self.path, "ab+") as f:
            f.seek(0, os.SEEK_END)
            if f.tell():
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a line cut short by a crash: end it, so it is skipped alone
                    text = b"\n" + text
            f.seek(0, os.SEEK_END)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        self.on_disk += len(self.buffer)
        self.buffer = []


def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except ValueError:
        return {"unreadable": True}


def _clear_examples(out_dir: str) -> None:
    folder = os.path.join(out_dir, EXAMPLES_DIR)
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.endswith(".npy"):
                os.remove(os.path.join(folder, name))


def _example_path(out_dir: str, index: int, run: Run) -> str:
    slug = "".join(c if c.isalnum() or c in "-." else "_" for c in run.key)
    return os.path.join(out_dir, EXAMPLES_DIR, f"{index:05d}_{slug}.npy")


def _save_example(path: str, heatmap: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.rint(np.clip(heatmap, 0.0, 1.0) * 255).astype(np.uint8))
    _atomic_write(path, buffer.getvalue())


@contextlib.contextmanager
def _flush_on_exit(store: RecordStore):
    """Turn SIGINT/SIGTERM into KeyboardInterrupt while the body runs, and flush the store however it ends."""

    def stop(signum, frame):
        raise KeyboardInterrupt(f"stopped by signal {signum}")

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, stop)
    try:
        yield
    finally:
        try:
            store.flush()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


# ----------------------------------------------------------------------------------- evaluate
def _check_metrics(metrics) -> tuple[str, ...]:
    names = _split_list(metrics) if metrics is not None else list(DEFAULT_METRICS)
    if names == ["all"]:
        return METRICS
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise InputError(f"unknown metric {bad[0] if bad else '(none)'!r}; choose from {', '.join(METRICS)} or 'all'")
    return tuple(m for m in METRICS if m in names)


def _check_options(options, runs: Sequence[Run]) -> dict[str, dict]:
    options = {} if options is None else {str(k): dict(v) for k, v in dict(options).items()}
    methods = {r.method for r in runs}
    for method, opts in options.items():
        if method not in methods:
            raise InputError(f"options given for {method!r}, which is not evaluated (methods: {', '.join(sorted(methods))})")
        try:
            json.dumps(opts)
        except TypeError:
            raise InputError(f"options of {method} must be plain numbers/strings/booleans, got {opts!r}") from None
    return {m: options[m] for m in sorted(options)}


def _fingerprint(source: EvalSource) -> str:
    """A hash of the source's description (what it is); its content is hashed per sample (:func:`sample_digests`)."""
    return hashlib.sha256(f"{source.description}\n".encode()).hexdigest()[:16]


def sample_digests(source: EvalSource) -> list[str]:
    """A content hash per sample: the image bytes, label, boxes and name, so a record computed from a sample
    that has changed since (an edited boxes.json, a replaced photo) is recomputed.

    A :class:`chipjax.data.Source` hashes its files without decoding them
    (:meth:`~chipjax.data.Source.digest`); one that cannot (tensorflow-datasets, whose prepared files do
    not change) is identified by its description and the index. In-memory samples hash their arrays.
    """
    from .data import Source

    samples = source.samples
    if isinstance(samples, Source):
        return [samples.digest(i) or f"{_fingerprint(source)}:{i}" for i in range(len(samples))]
    out = []
    for s in samples:
        h = hashlib.sha256(f"{s.name}|{s.label}|{np.asarray(s.boxes, np.float32).round(3).tolist()}|"
                           f"{np.shape(s.image)}|".encode())
        h.update(np.ascontiguousarray(s.image).tobytes())
        out.append(h.hexdigest()[:16])
    return out


def run_config(model, source: EvalSource, runs, metrics, options, settings: Settings) -> dict:
    """The JSON identity of an evaluation: what ``run.json`` holds and a resumed run must match."""
    return {
        "version": CONFIG_VERSION,
        "model": model.name,
        "weights": str(model.weights),
        "data": source.description,
        "data_fingerprint": _fingerprint(source),
        "runs": [r.key for r in runs],
        "metrics": list(metrics),
        "options": options,
        "settings": {k: v for k, v in dataclasses.asdict(settings).items() if k != "num_examples"},
    }


def evaluate(model="efficientnet_lite0", source="photos", methods=ALL_METHODS, layers=None, metrics=DEFAULT_METRICS,
             options: Mapping[str, Mapping] | None = None, out_dir: str = "chipjax_eval", resume: bool = True,
             progress: bool = True, checkpoint_every: int = 16, *, settings: Settings | None = None,
             num_images: int | None = None, seed: int = 0, skip_bad: bool = False) -> dict:
    """Evaluate ``methods`` × ``layers`` on ``source`` with ``metrics``; write the table and plots to ``out_dir``.

    Args:
      model: a zoo model, or a name loaded with its shipped weights (default EfficientNet-Lite0).
      source: an :class:`EvalSource`, or what :func:`load_source` takes (``"photos"``, ``"composites"``,
        ``"two-object"``, a folder, ``tfds:…``, ``ilsvrc:…``, a list of samples).
      methods, layers: see :func:`parse_runs`.
      metrics: names from :data:`METRICS` (or ``"all"``).
      options: ``{method: {option: value}}`` passed to :func:`chipjax.explain`, e.g.
        ``{"chip": {"num_masks": 1024, "seed": 0}}``.
      out_dir: output folder (created; its parent must exist).
      resume: continue the evaluation already in ``out_dir`` (it must have the same settings); False
        discards it.
      progress: show a progress bar (only on a terminal).
      checkpoint_every: records (image × run) between appends to ``records.jsonl``.
      settings: :class:`Settings`.
      num_images, seed: for a named source (see :func:`load_source`).
      skip_bad: skip (and list) samples that cannot be read instead of stopping at the first.

    Every sample's records carry a content hash (:func:`sample_digests`): a rerun recomputes those of
    samples that changed (or moved to another index) and keeps the rest.

    Returns:
      ``{"summary": {run: {metric: value}}, "classification": {...}, "computed": records computed now,
      "out_dir": out_dir, "skipped": {name: reason}, "dropped": {name: reason}}``; ``dropped`` are samples
      whose boxes all fall outside the image or the view: they count in no box metric.
    """
    from .progress import progress_bar

    settings = (settings or Settings()).check()
    if isinstance(model, str):
        from .models import load_model

        model = load_model(model)
    src = source if isinstance(source, EvalSource) else load_source(source, num_images=num_images, seed=seed)
    if len(src.samples) == 0:
        raise InputError(f"the data source {src.description} holds no images")
    runs = parse_runs(methods, layers, model)
    metric_names = _check_metrics(metrics)
    opts = _check_options(options, runs)
    out_dir = _make_out_dir(out_dir)
    config = run_config(model, src, runs, metric_names, opts, settings)
    store = RecordStore(out_dir, config, resume, checkpoint_every)
    digests = sample_digests(src)
    store.digests = digests

    n = len(src.samples)
    batches = [list(range(s, min(s + settings.batch_size, n))) for s in range(0, n, settings.batch_size)]
    todo = [(b, run) for b in batches for run in runs if not store.done(b, run)]
    total = len(batches) * len(runs)
    log.info("%s: %d of %d units (batch × run) already done in %s", src.description, total - len(todo), total, out_dir)
    needs_scores = any(m in metric_names for m in ("deletion", "insertion"))
    scorer = softmax_scorer(model) if needs_scores and todo else None
    random_model = randomized_model(model, settings.sanity_top) if "sanity" in metric_names and todo else None
    os.makedirs(os.path.join(out_dir, EXAMPLES_DIR), exist_ok=True)
    computed = 0
    units_done = total - len(todo)
    current: _Batch | None = None
    current_indices = None
    with _flush_on_exit(store):
        for indices, run in progress_bar(todo, desc=f"eval {src.description}", total=len(todo), enable=progress):
            if current is None or current_indices != indices:
                current_indices = indices
                good, samples, bad = _load_samples(src, indices, skip_bad)
                current = _prepare_batch(model, src, good, samples) if good else None
            records = [{"i": int(i), "run": run.key, "name": f"sample {i}", "skipped": why} for i, why in bad.items()]
            if current is not None:
                unit, maps = _unit_records(model, current, run, metric_names, opts, settings, scorer, random_model)
                for b, i in enumerate(current.indices):
                    if i < settings.num_examples:
                        _save_example(_example_path(out_dir, i, run), maps[b])
                records += unit
            for rec in records:
                rec["sample"] = digests[rec["i"]]
            store.add(records)
            computed += len(records)
            units_done += 1
            log.info("done %d/%d: images %d-%d %s (%.2f s/image); %d records on disk", units_done, total,
                     indices[0], indices[-1], run.key, records[-1].get("seconds", 0.0), store.on_disk)
    live = [r for r in (store.current(i, run.key) for i in range(n) for run in runs) if r is not None]
    skipped = {f"{r['name']} (#{r['i']})": r["skipped"] for r in live if r.get("skipped")}
    dropped = {f"{r['name']} (#{r['i']})": r["dropped"] for r in live if r.get("dropped")}
    summary, classification = summarize([r for r in live if not r.get("skipped")], runs, metric_names)
    for key, row in summary.items():
        row["dropped"] = sum(1 for r in live if r["run"] == key and r.get("dropped"))
        row["skipped"] = sum(1 for r in live if r["run"] == key and r.get("skipped"))
    store.live = live
    write_outputs(out_dir, model, src, runs, metric_names, settings, opts, store, summary, classification)
    return {"summary": summary, "classification": classification, "computed": computed, "out_dir": out_dir,
            "skipped": skipped, "dropped": dropped}


def _make_out_dir(out_dir: str, create: bool = True) -> str:
    out_dir = os.fspath(out_dir)
    parent = os.path.dirname(os.path.abspath(out_dir))
    if not os.path.isdir(parent):
        raise InputError(f"the folder {parent} (parent of the output folder) does not exist; create it first")
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise InputError(f"--out {out_dir} is a file, not a folder; choose another --out")
    if not create:
        if not os.access(out_dir if os.path.isdir(out_dir) else parent, os.W_OK):
            raise InputError(f"output folder {out_dir} is not writable; choose another --out")
        return out_dir
    os.makedirs(out_dir, exist_ok=True)
    if not os.access(out_dir, os.W_OK):
        raise InputError(f"output folder {out_dir} is not writable; choose another --out")
    return out_dir


# ------------------------------------------------------------------------------------ summaries
def _mean(values) -> float | None:
    values = [float(v) for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarize(records: Iterable[dict], runs: Sequence[Run], metrics: Sequence[str]) -> tuple[dict, dict]:
    """Per-run means of the per-image records, and the classification errors.

    Returns:
      ``({run_key: {"images", "pointing", "box_acc", "max_box_acc", "max_box_threshold", "top1_loc_err",
      "deletion_auc", "insertion_auc", "sanity_r"}}, {"images", "top1_err", "top5_err"})``: the
      metrics asked for, each ``None`` when no image could be scored.
    """
    by_run: dict[str, list[dict]] = {r.key: [] for r in runs}
    for rec in records:
        if rec["run"] in by_run:
            by_run[rec["run"]].append(rec)
    summary = {}
    for key, rows in by_run.items():
        rows.sort(key=lambda r: r["i"])
        row: dict[str, Any] = {"images": len(rows)}
        if "pointing" in metrics:
            row["pointing"] = _mean(r.get("pointing") for r in rows)
        if "box_acc" in metrics:
            row["box_acc"] = _mean(r.get("box_ok") for r in rows)
        if "max_box_acc" in metrics:
            bits = [r["box_ok_at"] for r in rows if r.get("box_ok_at")]
            if bits:
                acc = np.mean([[c == "1" for c in b] for b in bits], axis=0)
                best = int(np.argmax(acc))
                row["max_box_acc"], row["max_box_threshold"] = float(acc[best]), float(MAX_BOX_THRESHOLDS[best])
            else:
                row["max_box_acc"], row["max_box_threshold"] = None, None
        if "top1_loc" in metrics:
            scored = [r for r in rows if r.get("box_ok") is not None and r.get("top1_ok") is not None]
            row["top1_loc_err"] = 1.0 - _mean(r["box_ok"] and r["top1_ok"] for r in scored) if scored else None
        if "deletion" in metrics:
            row["deletion_auc"] = _mean(r.get("deletion_auc") for r in rows)
        if "insertion" in metrics:
            row["insertion_auc"] = _mean(r.get("insertion_auc") for r in rows)
        if "sanity" in metrics:
            row["sanity_r"] = _mean(r.get("sanity_r") for r in rows)
        summary[key] = row
    first = next((rows for rows in by_run.values() if rows), [])
    labelled = [r for r in first if r.get("top1_ok") is not None]
    classification = {
        "images": len(first),
        "top1_err": 1.0 - _mean(r["top1_ok"] for r in labelled) if labelled else None,
        "top5_err": 1.0 - _mean(r["top5_ok"] for r in labelled) if labelled else None,
    }
    return summary, classification


_COLUMNS = (  # (summary key, metric, Markdown header)
    ("pointing", "pointing", "pointing ↑"),
    ("box_acc", "box_acc", "box acc @{thr} ↑"),
    ("max_box_acc", "max_box_acc", "MaxBoxAcc ↑ (thr)"),
    ("top1_loc_err", "top1_loc", "top-1 loc err ↓"),
    ("deletion_auc", "deletion", "deletion AUC ↓"),
    ("insertion_auc", "insertion", "insertion AUC ↑"),
    ("sanity_r", "sanity", "sanity r ↓"),
)


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def results_table(summary: Mapping[str, Mapping], metrics: Sequence[str], settings: Settings) -> str:
    """The Markdown table: a row per run (``method@layer``), a column per metric, 3 decimals."""
    cols = [c for c in _COLUMNS if c[1] in metrics]
    extra = [c for c in ("dropped", "skipped") if any(row.get(c) for row in summary.values())]
    header = (["method @ layer", "images"] + extra
              + [h.format(thr=f"{settings.box_threshold:g}") for _, _, h in cols])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for key, row in summary.items():
        cells = [key, str(row["images"])] + [str(row.get(c, 0)) for c in extra]
        for name, _, _ in cols:
            text = _fmt(row.get(name))
            if name == "max_box_acc" and row.get(name) is not None:
                text += f" ({row['max_box_threshold']:.2f})"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def results_markdown(model, source: EvalSource, metrics, settings: Settings, options, summary, classification,
                     skipped: Mapping[str, str] | None = None, dropped: Mapping[str, str] | None = None) -> str:
    """``results.md``: what was evaluated and the table (deterministic: no dates, no timings)."""
    cls = classification
    cls_text = ("classification top-1 error {:.3f}, top-5 error {:.3f} (a prediction counts when it is one of the "
                "sample's acceptable labels)".format(cls["top1_err"], cls["top5_err"])
                if cls["top1_err"] is not None else "no labels: maps explain the top-1 class")
    opts = "; ".join(f"{m}: {json.dumps(o, sort_keys=True)}" for m, o in options.items()) or "library defaults"
    return (
        f"# chipjax eval: {source.description}\n\n"
        f"Model {model.name} ({model.weights}); {len(source.samples)} images; {cls_text}.\n"
        f"Maps explain the ground-truth class; boxes are compared in the network's {model.input_size}px view. "
        f"Pointing tolerance {settings.pointing_tolerance:g} px; box threshold {settings.box_threshold:g}, "
        f"IoU ≥ {settings.iou:g}; deletion/insertion: {settings.deletion_steps} steps, {settings.baseline} baseline, "
        f"softmax probability. Method options: {opts}.\n\n"
        + results_table(summary, metrics, settings)
        + "".join(f"\n{title}:\n" + "".join(f"- {name}: {why}\n" for name, why in names.items())
                  for title, names in (("Skipped (unreadable; --skip-bad)", skipped or {}),
                                       ("Dropped from the box metrics", dropped or {})) if names)
    )


def _csv_text(summary: Mapping[str, Mapping]) -> str:
    names = ["images", "pointing", "box_acc", "max_box_acc", "max_box_threshold", "top1_loc_err", "deletion_auc",
             "insertion_auc", "sanity_r"]
    present = [n for n in names if any(n in row for row in summary.values())]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["run", "method", "layer"] + present)
    for key, row in summary.items():
        method, _, layer = key.partition("@")
        values = [row.get(n) for n in present]
        writer.writerow([key, method, layer] + ["" if v is None else (v if isinstance(v, int) else f"{v:.6f}")
                                                for v in values])
    return out.getvalue()


def _timing_text(records: Iterable[dict], runs: Sequence[Run]) -> str:
    seconds: dict[str, list[float]] = {r.key: [] for r in runs}
    for rec in records:
        if rec["run"] in seconds and "seconds" in rec:
            seconds[rec["run"]].append(float(rec["seconds"]))
    lines = ["run,seconds_per_image"] + [f"{k},{np.mean(v):.4f}" for k, v in seconds.items() if v]
    return "\n".join(lines) + "\n"


def write_outputs(out_dir, model, source, runs, metrics, settings, options, store: RecordStore, summary,
                  classification) -> None:
    """results.md, results.csv, timing.csv, curve plots and the examples grid."""
    from . import viz

    live = list(getattr(store, "live", []))
    skipped = {f"{r['name']} (#{r['i']})": r["skipped"] for r in live if r.get("skipped")}
    dropped = {f"{r['name']} (#{r['i']})": r["dropped"] for r in live if r.get("dropped")}
    _atomic_write(os.path.join(out_dir, "results.md"),
                  results_markdown(model, source, metrics, settings, options, summary, classification,
                                   skipped, dropped).encode())
    _atomic_write(os.path.join(out_dir, "results.csv"), _csv_text(summary).encode())
    records = list(getattr(store, "live", store.records.values()))  # those of the samples as they are now
    _atomic_write(os.path.join(out_dir, "timing.csv"), _timing_text(records, runs).encode())
    for kind in ("deletion", "insertion"):
        if kind not in metrics:
            continue
        lines, areas = {}, {}
        for run in runs:
            rows = [r[f"{kind}_curve"] for r in records if r["run"] == run.key and f"{kind}_curve" in r]
            if rows:
                mean = np.mean(np.asarray(rows, np.float64), axis=0)
                lines[run.key] = (np.linspace(0.0, 1.0, len(mean)), mean)
                areas[run.key] = summary[run.key][f"{kind}_auc"]
        if lines:
            viz.curves(lines, kind=kind, auc=areas, out=os.path.join(out_dir, f"{kind}.png"))
    _write_examples(out_dir, model, source, runs, settings)


def _write_examples(out_dir, model, source: EvalSource, runs, settings: Settings) -> None:
    from . import viz

    shown = [i for i in range(min(settings.num_examples, len(source.samples)))
             if all(os.path.isfile(_example_path(out_dir, i, r)) for r in runs)]
    if not shown:
        return
    images = [model.view(source.samples[i].image) for i in shown]
    maps = {r.key: np.stack([np.load(_example_path(out_dir, i, r)).astype(np.float32) / 255.0 for i in shown])
            for r in runs}
    titles = [str(source.samples[i].name)[:24] for i in shown]
    viz.method_grid(images, maps, row_titles=titles, out=os.path.join(out_dir, "examples.png"), dpi=60)


# ------------------------------------------------------------------------------------------ CLI
def _option_value(text: str):
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``eval`` sub-command to an argparse ``subparsers`` object; returns its parser."""
    p = subparsers.add_parser(
        "eval", help="evaluate methods × layers × metrics over a data set (table, CSV, plots; resumable)",
        description="Explain every image of a data set for its ground-truth class with each method at each layer, "
                    "score the maps (pointing game, CAM box accuracy, MaxBoxAcc, top-1 localisation error, "
                    "deletion/insertion AUC, sanity check) and write results.md, results.csv and plots to --out. "
                    "A killed run continues where it stopped when the same command is run again.")
    p.add_argument("--data", default="photos",
                   help="photos | composites | two-object | FOLDER | tfds:NAME_OR_DIR | ilsvrc:IMAGES_DIR (default photos)")
    p.add_argument("--num-images", type=int, default=None,
                   help="use the first N images (composites: how many to make; default 200)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the composites (default 0)")
    p.add_argument("--boxes", default=None, help="ILSVRC boxes: XML folder or LOC_val_solution.csv")
    p.add_argument("--split", default="validation", help="tfds split (default validation)")
    p.add_argument("--methods", default=ALL_METHODS,
                   help="comma-separated methods, each optionally @LAYER (refined-chip@A+B+C); default: all")
    p.add_argument("--layers", default=None,
                   help="comma-separated taps crossed with the methods given without @ (default: the model's default)")
    p.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                   help=f"comma-separated from {', '.join(METRICS)}, or 'all' (default: all but sanity)")
    p.add_argument("--masks", type=int, default=None, help="number of masks for chip, refined-chip and rise")
    p.add_argument("--keep-prob", type=float, default=None, help="CHIP channel keep probability")
    p.add_argument("--lam-ratio", type=float, default=None, help="CHIP λ as a fraction of λ_max")
    p.add_argument("--score", default=None, help="CHIP score: prob | logit | logprob")
    p.add_argument("--seed", type=int, default=None, help="mask seed of chip, refined-chip and rise")
    p.add_argument("--option", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="any method option, e.g. scorecam.chunk_size=32 (repeatable; VALUE read as JSON)")
    p.add_argument("--batch-size", type=int, default=Settings.batch_size, help="images explained together")
    p.add_argument("--steps", type=int, default=Settings.deletion_steps, help="deletion/insertion curve points")
    p.add_argument("--baseline", default=Settings.baseline, help="deletion/insertion baseline: blur | constant")
    p.add_argument("--threshold", type=float, default=Settings.box_threshold, help="CAM box threshold (default 0.2)")
    p.add_argument("--tolerance", type=float, default=Settings.pointing_tolerance, help="pointing-game tolerance, px")
    p.add_argument("--examples", type=int, default=Settings.num_examples, help="images in examples.png")
    p.add_argument("--sanity-top", type=int, default=Settings.sanity_top,
                   help="parameterised units re-initialised for the sanity metric (default 2: head and fc)")
    p.add_argument("--checkpoint-every", type=int, default=16, help="records between checkpoints (default 16)")
    p.add_argument("--restart", action="store_true", help="discard the results already in --out and start over")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable samples (listed in results.md and on stderr) instead of stopping at the first")
    p.add_argument("--out", default="chipjax_eval", help="output folder (default chipjax_eval)")
    p.add_argument("--model", default="efficientnet_lite0", help="zoo model name (default: efficientnet_lite0)")
    p.add_argument("--weights", default="pretrained",
                   help="'pretrained' (shipped weights), 'none' (random init) or a checkpoint path")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")
    p.add_argument("-v", "--verbose", action="store_true", help="log every finished unit")
    return p


def eval_options(args, runs: Sequence[Run]) -> dict[str, dict]:
    """``{method: options}`` from the command line: shared flags go to the methods that take them."""
    methods = {r.method for r in runs}
    shared = {"num_masks": (args.masks, ("chip", "refined-chip", "rise")),
              "keep_prob": (args.keep_prob, ("chip", "refined-chip")),
              "lam_ratio": (args.lam_ratio, ("chip", "refined-chip")),
              "score": (args.score, ("chip", "refined-chip")),
              "seed": (args.seed, ("chip", "refined-chip", "rise"))}
    out: dict[str, dict] = {}
    for name, (value, takers) in shared.items():
        if value is None:
            continue
        if not methods & set(takers):
            raise InputError(f"--{name.replace('num_masks', 'masks').replace('_', '-')} applies to "
                             f"{', '.join(takers)}, none of which is evaluated")
        for m in takers:
            if m in methods:
                out.setdefault(m, {})[name] = value
    for method, opts in option_items(args.option).items():
        out.setdefault(method, {}).update(opts)
    return check_eval_options(out)


def option_items(items: Sequence[str]) -> dict[str, dict]:
    """``["chip.seed=3", ...]`` (``--option METHOD.KEY=VALUE``, VALUE read as JSON) -> ``{"chip": {"seed": 3}}``."""
    out: dict[str, dict] = {}
    for item in items:
        target, eq, value = item.partition("=")
        method, dot, key = target.rpartition(".")
        if not eq or not dot or not key:
            raise InputError(f"--option {item!r}: write METHOD.KEY=VALUE, e.g. scorecam.chunk_size=32")
        out.setdefault(method, {})[key] = _option_value(value)
    return out


def check_eval_options(options: Mapping[str, Mapping]) -> dict[str, dict]:
    """Every ``{method: {option: value}}`` checked before any work: a known method, an option it takes,
    and a value of the option's type and range (:mod:`chipjax.options`)."""
    from .methods import METHODS, method_options
    from .options import OPTIONS, check_option

    out: dict[str, dict] = {}
    for method, opts in options.items():
        if method not in METHODS:
            raise InputError(f"options given for unknown method {method!r}; methods: {', '.join(METHODS)}")
        takes = method_options(method)
        for key, value in opts.items():
            if key not in takes:
                raise InputError(f"method {method!r} takes no option {key}; its options are: {', '.join(takes)}")
            name = "rise_masks" if (method, key) == ("rise", "num_masks") else key
            out.setdefault(method, {})[key] = check_option(name, value) if name in OPTIONS else value
    return out


def cmd_eval(args) -> int:
    """The ``eval`` sub-command (see :func:`add_eval_parser`)."""
    from .models import load_model
    from .options import check_option

    settings = Settings(box_threshold=args.threshold, pointing_tolerance=args.tolerance, deletion_steps=args.steps,
                        baseline=args.baseline, batch_size=args.batch_size, num_examples=args.examples,
                        sanity_top=args.sanity_top).check()
    metrics = _check_metrics(args.metrics)
    for name in ("masks", "keep_prob", "lam_ratio", "score", "seed", "num_images", "data_seed", "checkpoint_every"):
        if getattr(args, name) is not None:
            check_option("num_masks" if name == "masks" else name, getattr(args, name))
    check_eval_options(option_items(args.option))
    _make_out_dir(args.out, create=False)  # a file or an unwritable place, before the data and the model load
    source = load_source(args.data, num_images=args.num_images, seed=args.data_seed, boxes=args.boxes,
                         split=args.split)
    weights = None if str(args.weights).lower() == "none" else args.weights
    model = load_model(args.model, weights=weights)
    runs = parse_runs(args.methods, args.layers, model)
    options = eval_options(args, runs)
    try:
        result = evaluate(model, source, methods=[r.key for r in runs], metrics=metrics, options=options,
                          out_dir=args.out, resume=not args.restart, progress=not args.quiet,
                          checkpoint_every=args.checkpoint_every, settings=settings,
                          skip_bad=getattr(args, "skip_bad", False))
    except KeyboardInterrupt:
        done = len(read_records(os.path.join(args.out, RECORDS_FILE)))
        print(f"chipjax: interrupted; {done} results are saved in {args.out}; run the same command to continue",
              file=sys.stderr)
        return 130
    if not args.quiet:
        print(results_table(result["summary"], metrics, settings), end="")
        print(f"wrote {os.path.join(args.out, 'results.md')} ({result['computed']} results computed now)")
    for kind in ("skipped", "dropped"):
        names = result.get(kind) or {}
        if names:
            listed = "; ".join(f"{n}: {why}" for n, why in list(names.items())[:10])
            print(f"chipjax: note: {len(names)} sample(s) {kind}{' from the box metrics' if kind == 'dropped' else ''}"
                  f" ({listed}{'; ...' if len(names) > 10 else ''}); all are listed in "
                  f"{os.path.join(args.out, 'results.md')}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m chipjax.evaluate ARGS`` = ``chipjax eval ARGS`` (one line and exit 2 on a bad input)."""
    parser = argparse.ArgumentParser(prog="chipjax")
    sub = parser.add_subparsers(dest="command")
    add_eval_parser(sub)
    args = parser.parse_args(["eval"] + list(sys.argv[1:] if argv is None else argv))
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("chipjax: %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        return cmd_eval(args)
    except ChipjaxError as e:
        print(f"chipjax: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
