"""``chipjax eval``: methods × layers × metrics over a data source, written as a table; resumable.

What is measured (one *run* is a method at a layer, e.g. ``chip@head``; ``refined-chip`` fuses several
layers, ``refined-chip@blocks.11.expand+blocks.15.expand+head``; RISE works on the input, ``rise@input``):

* **Class-level CHIP** (``chip-class@LAYER``): one model per layer fitted on ``fit_data`` / ``--fit-data``, never
  the evaluated images (refused), then one forward pass per image; see :func:`class_chip_models`.
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
* ``max_box_acc_v2``: MaxBoxAccV2 (Choe et al. 2020): min-max normalised maps, the best box among all
  connected components, IoU 0.3, 0.5 and 0.7 each at its best threshold, averaged
  (:func:`chipjax.metrics.max_box_acc_v2`).
* ``pxap``: pixel average precision (Choe et al. 2020) where the source has pixel masks: the composites,
  whose mask is the pasted rectangle (:func:`chipjax.metrics.pxap`); ``–`` elsewhere.
* ``confidence``: average drop (↓) and increase in confidence (↑) of the target's softmax on image × map
  (Grad-CAM++; :func:`chipjax.metrics.confidence_change`).
* ``road`` (not by default): ROAD (Rong et al. 2022) at percentiles 10 … 90: MoRF (↓), LeRF (↑) and
  pytorch-grad-cam's combined ``(LeRF − MoRF)/2`` (↑) (:func:`chipjax.metrics.road`).
* ``top1_loc``: top-1 localisation error, ``1 − mean(top-1 right AND box right)``.
* ``deletion`` / ``insertion``: AUC of the target's softmax probability as pixels are removed / added
  in the map's order (:func:`chipjax.metrics.deletion_insertion`, 21 steps); by default RISE's protocol
  (deletion to zero = the mean colour, insertion from RISE's blur), ``deletion_protocol="chipjax"`` the first
  variant (both from the blurred ``baseline``). The table header names the protocol.
* ``sanity_layers`` (not by default): Adebayo et al.'s sanity check as a curve: every parameterised unit
  re-initialised from the logits down, cascading and independently; Spearman (of the maps and of their
  absolute values), SSIM and HOG similarity per unit (``sanity_layers.csv``, a table in ``results.md``).
* ``sanity`` (not by default): Spearman r between each map and the map of the same run on the model
  whose top ``sanity_top`` parameterised units are re-initialised (lower = the map depends on them).

Every table entry comes with a percentile-bootstrap 95 % interval over the images (``bootstrap``
resamples, seed 0; set-level metrics such as MaxBoxAcc and PxAP are recomputed on every resample).

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

METRICS = ("pointing", "box_acc", "max_box_acc", "max_box_acc_v2", "pxap", "top1_loc", "deletion", "insertion",
           "confidence", "road", "sanity", "sanity_layers")
DEFAULT_METRICS = tuple(m for m in METRICS if m not in ("road", "sanity", "sanity_layers"))  # slow ones: opt in
DELETION_PROTOCOLS = {"rise": "RISE protocol", "chipjax": "chipjax v1 protocol"}
BUNDLED_SETS = ("photos", "composites", "two-object")
ALL_METHODS = "chip,refined-chip,cam,gradcam,gradcam++,scorecam,ablationcam,rise"
MAX_BOX_THRESHOLDS = np.arange(0.0, 1.0, 0.01)
#: Class-level CHIP (``chip-class@LAYER``): fitted once on ``fit_data`` (disjoint from the evaluated images),
#: then each image's map costs one forward pass. See :func:`class_chip_models`.
CLASS_CHIP = "chip-class"
CLASS_CHIP_DIR = "chip-class"

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
      score_batch: images per forward pass of ``confidence`` and ``road`` (deletion/insertion scores the
        batch's images at every step in one jitted call).
      num_examples: images drawn in ``examples.png``.
      sanity_top: parameterised units, counted from the output, re-initialised for ``sanity``.
      deletion_protocol: ``rise`` (RISE's reference) or ``chipjax`` (the first variant, ``baseline`` both ways).
      bootstrap: resamples of the 95 % intervals (0: no intervals).
      sanity_depth: units, from the logits down, that ``sanity_layers`` randomises one after another (0: all).
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
    deletion_protocol: str = "rise"
    bootstrap: int = 1000
    sanity_depth: int = 0

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
        if self.deletion_protocol not in DELETION_PROTOCOLS:
            raise InputError(f"deletion protocol must be one of {', '.join(DELETION_PROTOCOLS)}, got {self.deletion_protocol!r}")
        if self.sanity_depth < 0:
            raise InputError(f"sanity depth must be >= 0 units (0: all), got {self.sanity_depth}")
        if self.bootstrap < 0:
            raise InputError(f"bootstrap resamples must be >= 0 (0: no intervals), got {self.bootstrap}")
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
        if method not in METHODS and method != CLASS_CHIP:
            raise InputError(f"unknown method {method!r} in {entry!r}; choose from {', '.join(METHODS)}, {CLASS_CHIP}")
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
      boxes_are_masks: the boxes are the objects' exact pixel regions (composites: the pasted rectangles),
        so ``pxap`` can be measured.
    """

    samples: Sequence
    description: str
    accept: Callable[[int], tuple[int, ...]]
    boxes_are_masks: bool = False


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
                          evalsets.acceptable_labels, boxes_are_masks=True)
    if spec == "two-object":
        n = 100 if num_images is None else int(num_images)
        canvases = max(1, math.ceil(n / 2))
        return EvalSource(_first(evalsets.two_object_composites(canvases, seed=seed), n),
                          f"two-object(seed={seed})", evalsets.acceptable_labels, boxes_are_masks=True)
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
def parameterised_units(model) -> tuple[list[str], dict[str, int]]:
    """The variable keys of ``model``'s parameterised units, input to output, and each key's unit index."""
    present = {key for tree in model.variables.values() for key in tree}
    keys, first_unit = [], {}
    for index, unit in enumerate(model.spec.units):
        for key in (unit, unit.replace(".", "_")):
            if key in present and key not in keys:
                keys.append(key)
                first_unit[key] = index
                break
    return keys, first_unit


def randomized_model(model, top: int, seed: int = 0, independent: bool = False):
    """``model`` with its top ``top`` parameterised units re-initialised from ``seed`` (cascading
    randomisation of Adebayo et al.), via :func:`chipjax.metrics.randomize_top_layers`; with
    ``independent`` only the ``top``-th unit from the output (independent randomisation,
    :func:`chipjax.metrics.randomize_layers`)."""
    import jax
    import jax.numpy as jnp

    from .metrics import randomize_layers, randomize_top_layers
    from .models.base import Model

    keys, first_unit = parameterised_units(model)
    top = min(int(top), len(keys))
    start = first_unit[keys[len(keys) - top]]
    # initialise only units[start:], on an input shaped like their input: cheap even for a big network
    module, size = model.module, model.input_size
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    inner = jax.eval_shape(lambda v, a: module.apply(v, a, start=0, stop=start), model.variables, x)
    init = jax.jit(lambda key, a: module.init(key, a, start=start, stop=None))
    fresh = init(jax.random.PRNGKey(seed), jnp.zeros(inner.shape, inner.dtype))
    if independent:
        variables = randomize_layers(model.variables, fresh, [keys[len(keys) - top]])
        return Model(model.spec, variables, f"{model.weights}, unit {keys[len(keys) - top]} re-initialised (seed {seed})")
    variables = randomize_top_layers(model.variables, fresh, keys, top)
    return Model(model.spec, variables, f"{model.weights}, top {top} units re-initialised (seed {seed})")


SANITY_MODES = ("cascading", "independent")
SANITY_SIMILARITIES = ("spearman", "spearman_abs", "ssim", "hog")


class SanityModels:
    """Randomised copies of a model for the per-layer sanity check, made once each when first asked for:
    ``get(mode, n)`` is the model with its top ``n`` units (cascading) or its ``n``-th unit from the output
    (independent) re-initialised (seed 0)."""

    def __init__(self, model, depth: int = 0):
        self.model = model
        self.keys = parameterised_units(model)[0][::-1]  # from the logits down
        self.keys = self.keys[:depth] if depth else self.keys
        self._made: dict = {}

    def get(self, mode: str, n: int):
        if (mode, n) not in self._made:
            self._made[(mode, n)] = randomized_model(self.model, n, independent=(mode == "independent"))
        return self._made[(mode, n)]


def _sanity_layer_records(model_maps: np.ndarray, batch, run, options, sanity: "SanityModels") -> list[dict]:
    """Per image: ``{mode: [[unit key, [spearman, spearman_abs, ssim, hog]], ...]}``, units from the logits down
    (a list, so the order survives the JSON records)."""
    from . import metrics as M

    out = [{mode: [] for mode in SANITY_MODES} for _ in range(len(model_maps))]
    for mode in SANITY_MODES:
        for n, key in enumerate(sanity.keys, start=1):
            sims = M.map_similarities(model_maps, _maps(sanity.get(mode, n), batch, run, options))
            for b in range(len(model_maps)):
                out[b][mode].append([key, [round(float(sims[k][b]), 6) for k in SANITY_SIMILARITIES]])
    return out


def sanity_layer_table(records: Iterable[dict], runs: Sequence[Run]) -> tuple[str, str]:
    """The per-layer sanity check as (Markdown, CSV): for every run and mode, the mean of each similarity
    over the images at every randomised unit, from the logits down (a curve: left = only the top changed)."""
    rows = []
    for run in runs:
        recs = [r["sanity_layers"] for r in records if r["run"] == run.key and r.get("sanity_layers")]
        if not recs:
            continue
        for mode in SANITY_MODES:
            units = [u for u, _ in recs[0][mode]]
            means = np.mean([[v for _, v in rec[mode]] for rec in recs], axis=0)  # (units, 4)
            rows.append((run.key, mode, units, means, len(recs)))
    if not rows:
        return "", ""
    csv_lines = ["run,mode,depth,unit,images," + ",".join(SANITY_SIMILARITIES)]
    md = []
    for key, mode, units, means, n in rows:
        for depth, (u, m) in enumerate(zip(units, means), start=1):
            csv_lines.append(f"{key},{mode},{depth},{u},{n}," + ",".join(f"{v:.6f}" for v in m))
    units = rows[0][2]
    md.append("| method @ layer | randomisation | " + " | ".join(units) + " |")
    md.append("|---|---|" + "---:|" * len(units))
    for key, mode, u, means, n in rows:
        md.append(f"| {key} | {mode} | " + " | ".join(f"{a:.2f} / {b:.2f}" for a, b in zip(means[:, 0], means[:, 2])) + " |")
    text = ("\n## Sanity check by layer (Adebayo et al.)\n\nSpearman r / SSIM between each map and the map of the "
            "model whose units are re-initialised from the logits down (cascading: every unit up to this one; "
            "independent: this unit alone); near 0 = the map depends on those weights. All four similarities "
            "(Spearman, Spearman of |maps|, SSIM, HOG) are in sanity_layers.csv.\n\n" + "\n".join(md) + "\n")
    return text, "\n".join(csv_lines) + "\n"


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


_PROB_FNS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def softmax_fn(model) -> Callable:
    """The jax-traceable ``images (n, S, S, 3) -> softmax (n, C)`` of ``model``, one function object per model
    (so :func:`chipjax.metrics.deletion_insertion_batched` reuses its compiled program)."""
    import jax

    if model not in _PROB_FNS:
        module, variables = model.module, model.variables
        _PROB_FNS[model] = lambda images: jax.nn.softmax(module.apply(variables, images), axis=-1)
    return _PROB_FNS[model]


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
    masks: list | None = None     # (S, S) bool object pixels, where the source has them


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

    from . import metrics as M

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
    masks = [M.boxes_to_mask(b, v.shape[:2]) for b, v in zip(boxes, views)] if source.boxes_are_masks else None
    batch = _Batch(list(indices), [str(s.name) for s in samples], views, x, labels, targets, top5, ok1, ok5, boxes,
                   masks)
    batch.dropped = [dropped_reason(s.boxes, b) for s, b in zip(samples, boxes)]
    return batch


def _maps(model, batch: _Batch, run: Run, options: Mapping, class_models: Mapping | None = None) -> np.ndarray:
    from .methods import explain

    if run.method == CLASS_CHIP:
        return np.asarray(class_models[run.layers[0]].explain(model, batch.x, batch.targets), np.float32)
    maps = explain(model, batch.x, method=run.method, layer=run.layer_arg, target=[int(t) for t in batch.targets],
                   **dict(options.get(run.method, {})))
    return np.asarray(maps, np.float32)


def _bit_string(bits) -> str:
    return "".join("1" if a else "0" for a in np.asarray(bits).reshape(-1))


def _sparse_histogram(hist: np.ndarray) -> list[list[int]]:
    """``(2, nbins)`` PxAP counts -> ``[[bin, object count, background count], ...]`` of the non-empty bins."""
    nonzero = np.flatnonzero(hist.sum(axis=0))
    return [[int(k), int(hist[0, k]), int(hist[1, k])] for k in nonzero]


def _dense_histograms(rows: Sequence[dict]) -> np.ndarray:
    """The records' sparse PxAP histograms as ``(n, 2, nbins)`` (bin width 0.001, as :func:`~chipjax.metrics.pxap`)."""
    nbins = 1002
    out = np.zeros((len(rows), 2, nbins), np.int64)
    for i, r in enumerate(rows):
        for k, pos, neg in r["pxap_hist"]:
            out[i, 0, k], out[i, 1, k] = pos, neg
    return out


def _unit_records(model, batch: _Batch, run: Run, metrics: Sequence[str], options: Mapping, settings: Settings,
                  scorer, random_model, sanity: "SanityModels | None" = None,
                  class_models: Mapping | None = None) -> tuple[list[dict], np.ndarray]:
    """Records of one (batch, run) unit, and its maps ``(B, S, S)``."""
    from . import metrics as M

    t0 = time.perf_counter()
    maps = _maps(model, batch, run, options, class_models)
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
        if "max_box_acc_v2" in metrics:
            best = M.best_ious_all_components(maps[b], batch.boxes[b], MAX_BOX_THRESHOLDS)
            rec["box_v2_ok_at"] = [_bit_string(best >= iou) for iou in M.V2_IOUS] if has_box else None
        if "pxap" in metrics and batch.masks is not None and batch.masks[b].any():
            rec["pxap_hist"] = _sparse_histogram(M.pxap_histograms(maps[b:b + 1], batch.masks[b][None])[0])
        records.append(rec)
    if "deletion" in metrics or "insertion" in metrics:
        # B images x steps x 2 modes in one jitted call on the device
        di = M.deletion_insertion_batched(softmax_fn(model), np.asarray(batch.x), maps, batch.targets,
                                          steps=settings.deletion_steps, baseline=settings.baseline,
                                          protocol=settings.deletion_protocol)
        for b, rec in enumerate(records):
            rec["deletion_auc"] = float(di["deletion_auc"][b])
            rec["insertion_auc"] = float(di["insertion_auc"][b])
            rec["deletion_curve"] = [float(v) for v in di["curves"]["deletion"][b]]
            rec["insertion_curve"] = [float(v) for v in di["curves"]["insertion"][b]]
    if "confidence" in metrics:
        cc = M.confidence_change(scorer, np.asarray(batch.x), maps, batch.targets,
                                 batch=min(settings.score_batch, len(records)))
        for b, rec in enumerate(records):
            rec["avg_drop"], rec["conf_increase"] = float(cc["drop"][b]), bool(cc["increase"][b])
    if "road" in metrics:
        rd = M.road(scorer, np.asarray(batch.x), maps, batch.targets,
                    batch=min(settings.score_batch, 2 * len(M.ROAD_PERCENTILES) * len(records)),
                    seed=int(batch.indices[0]))
        for b, rec in enumerate(records):
            rec["road_morf"], rec["road_lerf"] = float(rd["morf_mean"][b]), float(rd["lerf_mean"][b])
            rec["road_combined"] = float(rd["combined"][b])
    if "sanity" in metrics:
        r = M.rank_correlations(maps, _maps(random_model, batch, run, options, class_models))
        for b, rec in enumerate(records):
            rec["sanity_r"] = float(r[b])
    if "sanity_layers" in metrics:
        for rec, layers in zip(records, _sanity_layer_records(maps, batch, run, options, sanity)):
            rec["sanity_layers"] = layers
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
        "settings": {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("num_examples", "bootstrap")},
    }


def evaluate(model="efficientnet_lite0", source="photos", methods=ALL_METHODS, layers=None, metrics=DEFAULT_METRICS,
             options: Mapping[str, Mapping] | None = None, out_dir: str = "chipjax_eval", resume: bool = True,
             progress: bool = True, checkpoint_every: int = 16, *, settings: Settings | None = None,
             num_images: int | None = None, seed: int = 0, tune_source=None, fit_data=None,
             skip_bad: bool = False) -> dict:
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
      tune_source: a separate split (what ``source`` takes) on which each run's box threshold is tuned
        (its MaxBoxAcc threshold, evaluated in ``out_dir/tune``); the table then adds the box accuracy
        at that threshold on ``source`` (``box_acc_tuned``), as Choe et al. require.
      fit_data: for ``chip-class`` runs, the samples the class-level models are fitted on: an
        :class:`EvalSource`, a sequence of samples, or what :func:`load_source` takes (composites: use
        another data seed, ``load_source("composites", seed=1)``). Must not be the evaluated images.
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
    class_models, fit_description = class_chip_models(model, runs, opts.get(CLASS_CHIP, {}), fit_data, src, out_dir,
                                                      progress=progress)
    if fit_description is not None:
        opts = {**opts, CLASS_CHIP: {**opts.get(CLASS_CHIP, {}), "fit_data": fit_description}}
    tuned = None
    if tune_source is not None:  # tune each run's box threshold on the other split first
        tsrc = tune_source if isinstance(tune_source, EvalSource) else load_source(tune_source, num_images=num_images,
                                                                                   seed=seed + 1)
        if tsrc.description == src.description and len(tsrc.samples) == len(src.samples):
            raise InputError(f"the tuning split is the evaluated one ({src.description}); tune on another split "
                             f"(e.g. composites with another --data-seed)")
        tune = evaluate(model, tsrc, [r.key for r in runs], None, ("max_box_acc",), opts,
                        os.path.join(out_dir, "tune"), resume, progress, checkpoint_every,
                        settings=dataclasses.replace(settings, bootstrap=0, num_examples=0), fit_data=fit_data,
                        skip_bad=skip_bad)
        tuned = ({k: row["max_box_threshold"] for k, row in tune["summary"].items()}, tsrc.description)
        metric_names = _check_metrics(sorted(set(metric_names) | {"max_box_acc"}))
    config = run_config(model, src, runs, metric_names, opts, settings)
    store = RecordStore(out_dir, config, resume, checkpoint_every)
    digests = sample_digests(src)
    store.digests = digests

    n = len(src.samples)
    batches = [list(range(s, min(s + settings.batch_size, n))) for s in range(0, n, settings.batch_size)]
    todo = [(b, run) for b in batches for run in runs if not store.done(b, run)]
    total = len(batches) * len(runs)
    log.info("%s: %d of %d units (batch × run) already done in %s", src.description, total - len(todo), total, out_dir)
    needs_scores = any(m in metric_names for m in ("deletion", "insertion", "confidence", "road"))
    scorer = softmax_scorer(model) if needs_scores and todo else None
    random_model = randomized_model(model, settings.sanity_top) if "sanity" in metric_names and todo else None
    sanity = SanityModels(model, settings.sanity_depth) if "sanity_layers" in metric_names and todo else None
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
                unit, maps = _unit_records(model, current, run, metric_names, opts, settings, scorer, random_model,
                                           sanity, class_models)
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
    measured = [r for r in live if not r.get("skipped")]
    summary, classification = summarize(measured, runs, metric_names, settings.bootstrap)
    if tuned is not None:
        add_tuned_box_accuracy(summary, measured, *tuned, bootstrap=settings.bootstrap)
    for key, row in summary.items():
        row["dropped"] = sum(1 for r in live if r["run"] == key and r.get("dropped"))
        row["skipped"] = sum(1 for r in live if r["run"] == key and r.get("skipped"))
    store.live = live
    write_outputs(out_dir, model, src, runs, metric_names, settings, opts, store, summary, classification)
    return {"summary": summary, "classification": classification, "computed": computed, "out_dir": out_dir,
            "skipped": skipped, "dropped": dropped}


#: Options of a ``chip-class`` run that go to the fit (the rest are refused).
CLASS_CHIP_FIT_OPTIONS = ("num_masks", "keep_prob", "lam_ratio", "score", "nonneg", "seed", "batch_size",
                          "chunk_size", "classes", "num_workers")


def _fit_samples(fit_data):
    if isinstance(fit_data, EvalSource):
        return fit_data
    return load_source(fit_data)


def _check_disjoint(fit: EvalSource, evaluated: EvalSource) -> None:
    """Refuse a fit on the evaluated images (same description, or a shared sample name when both are in memory)."""
    from .data import Source

    if fit.description == evaluated.description:
        raise InputError(f"class-level CHIP would be fitted on the evaluated images ({fit.description}); fit on a "
                         f"disjoint split (composites: another --fit-data-seed)")
    if not isinstance(fit.samples, Source) and not isinstance(evaluated.samples, Source):
        shared = {str(s.name) for s in fit.samples} & {str(s.name) for s in evaluated.samples}
        if shared:
            raise InputError(f"the fit data and the evaluated data share {len(shared)} images (e.g. {sorted(shared)[0]}); "
                             f"fit on a disjoint split")


def class_chip_models(model, runs: Sequence[Run], options: Mapping, fit_data, evaluated: EvalSource, out_dir: str,
                      progress: bool = False) -> tuple[dict, str | None]:
    """Fit (or reload) the class-level CHIP model of every ``chip-class@LAYER`` run.

    Protocol: the model of a layer is fitted on ``fit_data`` (never the evaluated images: the same
    description or a shared sample name is refused) with :func:`chipjax.fit.fit_source` and ``options``
    (:data:`CLASS_CHIP_FIT_OPTIONS`), saved under ``OUT/chip-class/`` (with a resumable ``.partial``
    checkpoint) and reloaded by a resumed evaluation with the same settings.

    Returns ``({layer: CHIP}, description of the fit data)``, or ``({}, None)`` without such runs.
    """
    from .chip import CHIP
    from .fit import fit_source, remove_checkpoint

    layers = [r.layers[0] for r in runs if r.method == CLASS_CHIP]
    if not layers:
        return {}, None
    if fit_data is None:
        raise InputError(f"{CLASS_CHIP} needs data to fit on, disjoint from the evaluated images: --fit-data SOURCE "
                         f"(e.g. --data composites --fit-data composites --fit-data-seed 1)")
    unknown = sorted(set(options) - set(CLASS_CHIP_FIT_OPTIONS) - {"fit_data"})
    if unknown:
        raise InputError(f"{CLASS_CHIP} options {unknown} are not fit options; use {', '.join(CLASS_CHIP_FIT_OPTIONS)}")
    fit = _fit_samples(fit_data)
    _check_disjoint(fit, evaluated)
    fit_opts = {k: v for k, v in options.items() if k != "fit_data"}
    models = {}
    for layer in layers:
        ident = json.dumps({"layer": layer, "data": fit.description, "n": len(fit.samples), **fit_opts}, sort_keys=True)
        folder = os.path.join(out_dir, CLASS_CHIP_DIR, f"{layer}-{hashlib.sha256(ident.encode()).hexdigest()[:10]}")
        from . import io as cjio

        if cjio.is_variables_dir(folder):
            models[layer] = CHIP.load(folder, model=model, layer=layer)
            continue
        cm = fit_source(model, fit.samples, data_id=fit.description, layer=layer, progress=progress,
                        checkpoint_dir=folder + ".partial", **fit_opts)
        cm.save(folder)
        remove_checkpoint(folder + ".partial")
        log.info("chip-class@%s fitted on %s: %d images, %.1f images/s", layer, fit.description, cm.num_images,
                 cm.fit_report["images_per_s"])
        models[layer] = cm
    _check_fitted_labels(models, evaluated)
    return models, fit.description


def _check_fitted_labels(models: Mapping, evaluated: EvalSource) -> None:
    """Before anything is evaluated: every evaluated class must have had fit images (in-memory sources only;
    a lazily read source is checked image by image as it is explained)."""
    from .data import Source

    if isinstance(evaluated.samples, Source):
        return
    labels = {int(s.label) for s in evaluated.samples if s.label is not None}
    for layer, cm in models.items():
        if cm.fitted_classes is not None:
            missing = sorted(c for c in labels if not cm.fitted_classes[c])
            if missing:
                raise InputError(f"{CLASS_CHIP}@{layer}: the evaluated classes {missing[:10]} have no images in the fit "
                                 f"data; fit on more images (--fit-num-images) or with --option {CLASS_CHIP}.classes=all")


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


def add_tuned_box_accuracy(summary: dict, records: Iterable[dict], thresholds: Mapping[str, float | None],
                           tuned_on: str, bootstrap: int = 1000) -> None:
    """Add ``box_acc_tuned`` (with ``_ci``), ``tuned_threshold`` and ``tuned_on`` to every run of ``summary``:
    the CAM box accuracy of each run's ``max_box_acc`` records at the threshold tuned on another split."""
    from .metrics import bootstrap_interval

    records = list(records)
    for key, row in summary.items():
        t = thresholds.get(key)
        data = _v1_data([r for r in records if r["run"] == key])
        row["tuned_threshold"], row["tuned_on"] = t, tuned_on
        if t is None or not len(data):
            row["box_acc_tuned"] = None
            continue
        j = int(np.argmin(np.abs(MAX_BOX_THRESHOLDS - t)))
        row["box_acc_tuned"] = float(data[:, j].mean())
        if bootstrap:
            row["box_acc_tuned_ci"] = bootstrap_interval(data[:, j].astype(float), n_resamples=bootstrap)


def _mean_of(field: str, transform: Callable = float):
    def data(rows):
        return np.array([transform(r[field]) for r in rows if r.get(field) is not None], np.float64)
    return data, lambda d: float(np.mean(d))


def _v2_data(rows):
    return np.array([[[c == "1" for c in bits] for bits in r["box_v2_ok_at"]] for r in rows if r.get("box_v2_ok_at")],
                    bool).reshape(-1, 3, len(MAX_BOX_THRESHOLDS))


def _top1_loc_data(rows):
    return np.array([1.0 - float(r["box_ok"] and r["top1_ok"]) for r in rows
                     if r.get("box_ok") is not None and r.get("top1_ok") is not None], np.float64)


def _v1_data(rows):
    return np.array([[c == "1" for c in r["box_ok_at"]] for r in rows if r.get("box_ok_at")],
                    bool).reshape(-1, len(MAX_BOX_THRESHOLDS))


# summary entry: (metric, per-image data of the rows (n, ...), statistic of such data -> float). One mechanism gives
# both the table's value and its bootstrap interval (set-level statistics are recomputed on every resample).
_SUMMARY_ENTRIES: dict[str, tuple[str, Callable, Callable]] = {
    "pointing": ("pointing",) + _mean_of("pointing"),
    "box_acc": ("box_acc",) + _mean_of("box_ok"),
    "max_box_acc": ("max_box_acc", _v1_data, lambda d: float(d.mean(axis=0).max())),
    "max_box_acc_v2": ("max_box_acc_v2", _v2_data, lambda d: float(d.mean(axis=0).max(axis=1).mean())),
    "pxap": ("pxap", lambda rows: _dense_histograms([r for r in rows if r.get("pxap_hist")]),
             lambda d: _pxap_of_histograms(d)),
    "top1_loc_err": ("top1_loc", _top1_loc_data, lambda d: float(np.mean(d))),
    "deletion_auc": ("deletion",) + _mean_of("deletion_auc"),
    "insertion_auc": ("insertion",) + _mean_of("insertion_auc"),
    "avg_drop": ("confidence",) + _mean_of("avg_drop"),
    "conf_increase": ("confidence",) + _mean_of("conf_increase"),
    "road_morf": ("road",) + _mean_of("road_morf"),
    "road_lerf": ("road",) + _mean_of("road_lerf"),
    "road_combined": ("road",) + _mean_of("road_combined"),
    "sanity_r": ("sanity",) + _mean_of("sanity_r"),
}


def _pxap_of_histograms(hists: np.ndarray) -> float:
    from .metrics import pxap_from_histograms

    return pxap_from_histograms(hists)["pxap"]


def summary_intervals(rows: Sequence[dict], metrics: Sequence[str], resamples: int = 1000, seed: int = 0) -> dict:
    """``{entry_ci: (low, high)}``: percentile-bootstrap 95 % intervals over the images of one run's records,
    for every summary entry of ``metrics`` that has data (:func:`chipjax.metrics.bootstrap_interval`)."""
    from .metrics import bootstrap_interval

    out = {}
    if resamples < 1:
        return out
    for name, (metric, data_fn, stat) in _SUMMARY_ENTRIES.items():
        if metric in metrics:
            data = data_fn(rows)
            if len(data):
                out[f"{name}_ci"] = bootstrap_interval(data, stat, n_resamples=resamples, seed=seed)
    return out


def summarize(records: Iterable[dict], runs: Sequence[Run], metrics: Sequence[str],
              bootstrap: int = 1000) -> tuple[dict, dict]:
    """Per-run means of the per-image records, and the classification errors.

    Returns:
      ``({run_key: {"images", "pointing", "box_acc", "max_box_acc", "max_box_threshold", "top1_loc_err",
      "deletion_auc", "insertion_auc", "sanity_r", "max_box_acc_v2", "pxap", "avg_drop", "conf_increase",
      "road_*"}}, {"images", "top1_err", "top5_err"})``: the metrics asked for, each ``None`` when no image
      could be scored, and ``NAME_ci`` ``(low, high)`` 95 % intervals (``bootstrap`` resamples; 0: none).
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
        for name, (metric, data_fn, stat) in _SUMMARY_ENTRIES.items():
            if metric in metrics and name not in row:
                data = data_fn(rows)
                row[name] = stat(data) if len(data) else None
        row.update(summary_intervals(rows, metrics, bootstrap))
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
    ("box_acc_tuned", "max_box_acc", "box acc @tuned thr ↑ (thr)"),
    ("max_box_acc_v2", "max_box_acc_v2", "MaxBoxAccV2 ↑"),
    ("pxap", "pxap", "PxAP ↑"),
    ("top1_loc_err", "top1_loc", "top-1 loc err ↓"),
    ("deletion_auc", "deletion", "deletion AUC ↓ ({protocol})"),
    ("insertion_auc", "insertion", "insertion AUC ↑ ({protocol})"),
    ("avg_drop", "confidence", "avg drop ↓"),
    ("conf_increase", "confidence", "increase in conf. ↑"),
    ("road_morf", "road", "ROAD MoRF ↓"),
    ("road_lerf", "road", "ROAD LeRF ↑"),
    ("road_combined", "road", "ROAD combined ↑"),
    ("sanity_r", "sanity", "sanity r ↓"),
)


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def results_table(summary: Mapping[str, Mapping], metrics: Sequence[str], settings: Settings) -> str:
    """The Markdown table: a row per run (``method@layer``), a column per metric, 3 decimals, and the 95 %
    bootstrap interval in brackets where the summary has one; ``dropped`` / ``skipped`` sample counts
    after ``images`` when any run has some."""
    cols = [c for c in _COLUMNS if c[1] in metrics
            and (c[0] != "box_acc_tuned" or any("box_acc_tuned" in row for row in summary.values()))]
    protocol = DELETION_PROTOCOLS[settings.deletion_protocol]
    extra = [c for c in ("dropped", "skipped") if any(row.get(c) for row in summary.values())]
    header = (["method @ layer", "images"] + extra
              + [h.format(thr=f"{settings.box_threshold:g}", protocol=protocol) for _, _, h in cols])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for key, row in summary.items():
        cells = [key, str(row["images"])] + [str(row.get(c, 0)) for c in extra]
        for name, _, _ in cols:
            text = _fmt(row.get(name))
            if name == "max_box_acc" and row.get(name) is not None:
                text += f" ({row['max_box_threshold']:.2f})"
            if name == "box_acc_tuned" and row.get(name) is not None:
                text += f" ({row['tuned_threshold']:.2f})"
            if row.get(f"{name}_ci") is not None:
                text += " [{:.2f}, {:.2f}]".format(*row[f"{name}_ci"])
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
        f"IoU ≥ {settings.iou:g}; deletion/insertion: {settings.deletion_steps} steps, {_protocol_text(settings)}, "
        f"softmax probability; [low, high]: 95 % bootstrap intervals over images "
        f"({settings.bootstrap} resamples, seed 0). Method options: {opts}.{_tuned_text(summary)}\n\n"
        + results_table(summary, metrics, settings)
        + "".join(f"\n{title}:\n" + "".join(f"- {name}: {why}\n" for name, why in names.items())
                  for title, names in (("Skipped (unreadable; --skip-bad)", skipped or {}),
                                       ("Dropped from the box metrics", dropped or {})) if names)
    )


def _tuned_text(summary: Mapping) -> str:
    tuned_on = next((row["tuned_on"] for row in summary.values() if row.get("tuned_on")), None)
    return (f" Tuning: each run's box threshold was chosen on {tuned_on} (its MaxBoxAcc threshold there) and "
            f"applied here ('box acc @tuned thr')." if tuned_on else "")


def _protocol_text(settings: Settings) -> str:
    if settings.deletion_protocol == "rise":
        return "RISE protocol (deletion to zero, insertion from RISE's blur)"
    return f"chipjax v1 protocol ({settings.baseline} baseline both ways)"


def _csv_value(row: Mapping, name: str):
    for end, side in (("_ci_low", 0), ("_ci_high", 1)):
        if name.endswith(end):
            ci = row.get(name[: -len(end)] + "_ci")
            return None if ci is None else ci[side]
    return row.get(name)


def _csv_text(summary: Mapping[str, Mapping]) -> str:
    names = ["images", "pointing", "box_acc", "max_box_acc", "max_box_threshold", "top1_loc_err", "deletion_auc",
             "insertion_auc", "sanity_r", "box_acc_tuned", "tuned_threshold"] + [n for n in _SUMMARY_ENTRIES if n not in (
                 "pointing", "box_acc", "max_box_acc", "top1_loc_err", "deletion_auc", "insertion_auc", "sanity_r")]
    present = [n for n in names if any(n in row for row in summary.values())]
    for n in list(present):  # the intervals after the values, as NAME_ci_low, NAME_ci_high
        if any(f"{n}_ci" in row for row in summary.values()):
            present += [f"{n}_ci_low", f"{n}_ci_high"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["run", "method", "layer"] + present)
    for key, row in summary.items():
        method, _, layer = key.partition("@")
        values = [_csv_value(row, n) for n in present]
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
    measured = [r for r in getattr(store, "live", store.records.values()) if not r.get("skipped")]
    sanity_md, sanity_csv = sanity_layer_table(measured, runs) if "sanity_layers" in metrics else ("", "")
    _atomic_write(os.path.join(out_dir, "results.md"),
                  (results_markdown(model, source, metrics, settings, options, summary, classification,
                                    skipped, dropped) + sanity_md).encode())
    if sanity_csv:
        _atomic_write(os.path.join(out_dir, "sanity_layers.csv"), sanity_csv.encode())
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
                   help="comma-separated methods, each optionally @LAYER (refined-chip@A+B+C); default: all. "
                        "chip-class@LAYER: class-level CHIP fitted on --fit-data (one forward pass per image)")
    p.add_argument("--layers", default=None,
                   help="comma-separated taps crossed with the methods given without @ (default: the model's default)")
    p.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                   help=f"comma-separated from {', '.join(METRICS)}, or 'all' (default: all but sanity)")
    p.add_argument("--fit-data", default=None,
                   help="chip-class@LAYER: the data its class-level model is fitted on, disjoint from --data "
                        "(FOLDER | ilsvrc:DIR | tfds:NAME | composites, with --fit-data-seed)")
    p.add_argument("--fit-data-seed", type=int, default=1, help="seed of --fit-data composites (default 1)")
    p.add_argument("--fit-num-images", type=int, default=None,
                   help="fit on N images spread evenly over --fit-data (composites: how many to make)")
    p.add_argument("--fit-split", default="train", help="tfds split of --fit-data (default train)")
    p.add_argument("--fit-labels", default=None, help="labels file for a --fit-data FOLDER")
    p.add_argument("--fit-boxes", default=None, help="ILSVRC boxes of an ilsvrc: --fit-data")
    p.add_argument("--masks", type=int, default=None, help="number of masks for chip, refined-chip and rise")
    p.add_argument("--keep-prob", type=float, default=None, help="CHIP channel keep probability")
    p.add_argument("--lam-ratio", type=float, default=None, help="CHIP λ as a fraction of λ_max")
    p.add_argument("--score", default=None, help="CHIP score: prob | logit | logprob")
    p.add_argument("--seed", type=int, default=None, help="mask seed of chip, refined-chip and rise")
    p.add_argument("--option", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="any method option, e.g. scorecam.chunk_size=32 (repeatable; VALUE read as JSON)")
    p.add_argument("--batch-size", type=int, default=Settings.batch_size, help="images explained together")
    p.add_argument("--steps", type=int, default=Settings.deletion_steps, help="deletion/insertion curve points")
    p.add_argument("--baseline", default=Settings.baseline,
                   help="baseline of the chipjax deletion/insertion protocol: blur | constant")
    p.add_argument("--deletion-protocol", default=Settings.deletion_protocol,
                   help="deletion/insertion: rise (RISE's reference: deletion to zero, insertion from a blur; default) "
                        "| chipjax (the first variant: --baseline both ways)")
    p.add_argument("--bootstrap", type=int, default=Settings.bootstrap,
                   help="bootstrap resamples of the 95%% intervals in the table (default 1000; 0: none)")
    p.add_argument("--threshold", type=float, default=Settings.box_threshold, help="CAM box threshold (default 0.2)")
    p.add_argument("--tolerance", type=float, default=Settings.pointing_tolerance, help="pointing-game tolerance, px")
    p.add_argument("--examples", type=int, default=Settings.num_examples, help="images in examples.png")
    p.add_argument("--sanity-top", type=int, default=Settings.sanity_top,
                   help="parameterised units re-initialised for the sanity metric (default 2: head and fc)")
    p.add_argument("--tune", default=None, metavar="DATA",
                   help="tune each run's box threshold on this separate split (same forms as --data; 'composites' "
                        "uses --data-seed + 1) and report the box accuracy at it on --data")
    p.add_argument("--sanity-depth", type=int, default=Settings.sanity_depth,
                   help="units from the logits down that the sanity_layers metric randomises (default 0: all)")
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
    shared = {"num_masks": (args.masks, ("chip", "refined-chip", "rise", CLASS_CHIP)),
              "keep_prob": (args.keep_prob, ("chip", "refined-chip", CLASS_CHIP)),
              "lam_ratio": (args.lam_ratio, ("chip", "refined-chip", CLASS_CHIP)),
              "score": (args.score, ("chip", "refined-chip", CLASS_CHIP)),
              "seed": (args.seed, ("chip", "refined-chip", "rise", CLASS_CHIP))}
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
                        baseline=args.baseline, deletion_protocol=args.deletion_protocol, bootstrap=args.bootstrap,
                        batch_size=args.batch_size, num_examples=args.examples,
                        sanity_top=args.sanity_top, sanity_depth=args.sanity_depth).check()
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
    fit_data = None
    if args.fit_data is not None:
        from .fit import fit_data_source

        samples, data_id = fit_data_source(args.fit_data, labels_file=args.fit_labels, boxes=args.fit_boxes,
                                           split=args.fit_split, num_images=args.fit_num_images,
                                           seed=args.fit_data_seed)
        fit_data = EvalSource(samples, data_id, _exact_label)
    try:
        result = evaluate(model, source, methods=[r.key for r in runs], metrics=metrics, options=options,
                          out_dir=args.out, resume=not args.restart, progress=not args.quiet,
                          checkpoint_every=args.checkpoint_every, settings=settings, fit_data=fit_data,
                          tune_source=None if args.tune is None else
                          load_source(args.tune, num_images=args.num_images, seed=args.data_seed + 1,
                                      boxes=args.boxes, split=args.split),
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
