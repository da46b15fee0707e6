"""The specification of an evaluation: what is measured (metrics, settings), which runs (method @ layers),
and the identity a resumed evaluation must match (``run.json``). See :mod:`chipjax.eval`."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Sequence

import numpy as np

from .. import jobs
from ..errors import InputError

METRICS = ("pointing", "box_acc", "max_box_acc", "max_box_acc_v2", "pxap", "top1_loc", "deletion", "insertion",
           "confidence", "road", "sanity", "sanity_layers")
DEFAULT_METRICS = tuple(m for m in METRICS if m not in ("road", "sanity", "sanity_layers"))  # slow ones: opt in
DELETION_PROTOCOLS = {"rise": "RISE protocol", "chipjax": "chipjax v1 protocol"}
ALL_METHODS = "chip,refined-chip,cam,gradcam,gradcam++,scorecam,ablationcam,rise"
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
        from ..options import check_option

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


def split_list(value) -> list[str]:
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
    from ..methods import METHODS
    from ..tap import resolve_layer

    entries = split_list(methods)
    if not entries:
        raise InputError(f"no methods given; choose from {', '.join(METHODS)} (optionally method@layer)")
    crossed = split_list(layers) or [model.default_layer]
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


def check_metrics(metrics) -> tuple[str, ...]:
    names = split_list(metrics) if metrics is not None else list(DEFAULT_METRICS)
    if names == ["all"]:
        return METRICS
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise InputError(f"unknown metric {bad[0] if bad else '(none)'!r}; choose from {', '.join(METRICS)} or 'all'")
    return tuple(m for m in METRICS if m in names)


def check_options(options, runs: Sequence[Run]) -> dict[str, dict]:
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


def source_fingerprint(source) -> str:
    """A hash of an :class:`~chipjax.data.EvalSource`'s description (what it is); its content is hashed per
    sample (:func:`sample_digests`)."""
    return jobs.fingerprint(f"{source.description}\n")


def sample_digests(source) -> list[str]:
    """A content hash per sample: the image bytes, label, boxes and name, so a record computed from a sample
    that has changed since (an edited boxes.json, a replaced photo) is recomputed.

    A :class:`chipjax.data.Source` hashes its files without decoding them
    (:meth:`~chipjax.data.Source.digest`); one that cannot (tensorflow-datasets, whose prepared files do
    not change) is identified by its description and the index. In-memory samples hash their arrays.
    """
    from ..data import Source

    samples = source.samples
    if isinstance(samples, Source):
        return [samples.digest(i) or f"{source_fingerprint(source)}:{i}" for i in range(len(samples))]
    out = []
    for s in samples:
        h = hashlib.sha256(f"{s.name}|{s.label}|{np.asarray(s.boxes, np.float32).round(3).tolist()}|"
                           f"{np.shape(s.image)}|".encode())
        h.update(np.ascontiguousarray(s.image).tobytes())
        out.append(h.hexdigest()[:16])
    return out


def run_config(model, source, runs, metrics, options, settings: Settings) -> dict:
    """The JSON identity of an evaluation: what ``run.json`` holds and a resumed run must match."""
    return {
        "version": CONFIG_VERSION,
        "model": model.name,
        "weights": str(model.weights),
        "data": source.description,
        "data_fingerprint": source_fingerprint(source),
        "runs": [r.key for r in runs],
        "metrics": list(metrics),
        "options": options,
        "settings": {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("num_examples", "bootstrap")},
    }

