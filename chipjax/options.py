"""One definition of every user-facing option: its default, type, range and one-line doc, checked once.

Two layers, one mechanism:

* :data:`OPTIONS` — every option's kind and range; :func:`check_option` turns a value (a number,
  or the text given on the command line) into the option's type or raises
  :class:`~chipjax.errors.InputError` naming the option, the value and what is allowed.
* One frozen dataclass per method (:class:`ChipOptions`, :class:`RefinedChipOptions`,
  :class:`AblationCamOptions`, :class:`ScoreCamOptions`, :class:`RiseOptions`,
  :class:`GradientCamOptions`; :data:`METHOD_OPTIONS` by method name): each field carries its
  default and one-line doc, and names its :data:`OPTIONS` entry for the range. ``check()``
  validates all fields at once. ``cj.explain`` builds and checks one per call
  (:func:`for_method`), the map functions take the checked object, the CLI flags of
  ``chipjax explain``/``fit`` are generated from the fields (:func:`add_flags`) and eval's
  ``--option METHOD.KEY=VALUE`` items are read against them (:func:`parse_items`). The defaults
  are written here and nowhere else.

Nothing here imports JAX: checking options costs nothing.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import InputError

__all__ = ["Option", "OPTIONS", "check_option", "check_options", "parse_bytes", "MethodOptions", "EngineOptions",
           "ChipOptions", "RefinedChipOptions", "AblationCamOptions", "ScoreCamOptions", "RiseOptions",
           "GradientCamOptions", "FitOptions", "METHOD_OPTIONS", "for_method", "option_names", "add_flags", "split_items", "parse_items",
           "checked_values"]

#: Largest mask count of one call (exact float32 mask sums; as :data:`chipjax.perturb.MAX_MASKS`).
MAX_MASKS = 2 ** 24
#: Largest seed: ``jax.random.PRNGKey`` takes a signed 64-bit integer.
MAX_SEED = 2 ** 63 - 1
#: Largest memory budget accepted (1 PiB): anything more is a typo, not a machine.
MAX_BYTES = 2 ** 50


@dataclasses.dataclass(frozen=True)
class Option:
    """An option's kind (``int``, ``float``, ``choice`` or ``bytes``) and allowed range.

    ``low``/``high`` bound the value; ``low_open``/``high_open`` exclude the bound itself.
    """

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    flag: str | None = None  # the command-line spelling, when it is not --name-with-dashes
    words: tuple[str, ...] = ()  # text values accepted besides numbers (``"auto"``), compared case-insensitively
    hint: str = ""  # what the value means, appended to a range error

    def range_text(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        what = "an integer" if self.kind == "int" else "a number"
        if self.words:
            return self._number_range_text(what) + " or " + " or ".join(self.words)
        return self._number_range_text(what)

    def _number_range_text(self, what: str) -> str:
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{what} in {left}{_num(self.low)}, {_num(self.high)}{right}"
        if self.low is not None:
            return f"{what} {'>' if self.low_open else '≥'} {_num(self.low)}"
        return what


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


OPTIONS: dict[str, Option] = {
    # CHIP and the perturbation engine
    "num_masks": Option("int", 2, MAX_MASKS, flag="--masks", words=("auto",)),  # auto: image-level CHIP
    "keep_prob": Option("float", 0.0, 1.0, low_open=True, high_open=True,
                        hint="the probability that a channel stays on: 0 or 1 leaves nothing to compare"),
    "lam_ratio": Option("float", 0.0, 1.0, high_open=True,
                        hint="a fraction of λ_max: 1 or more zeroes every weight"),
    "seed": Option("int", 0, MAX_SEED),
    "chunk_size": Option("int", 1, MAX_MASKS),
    "score": Option("choice", choices=("prob", "logit", "logprob")),
    "design": Option("choice", choices=("iid", "balanced")),
    "stability": Option("float", 0.0, 1.0, low_open=True, high_open=True),
    "max_masks": Option("int", 2, MAX_MASKS),
    "fusion": Option("choice", choices=("geometric", "mean", "max")),
    "layer_masks": Option("choice", choices=("equal", "per-channel")),
    "memory_budget": Option("bytes", 1, MAX_BYTES),
    "compute_dtype": Option("choice", choices=("float32", "bfloat16", "float16"), flag="--dtype"),
    # RISE
    "rise_masks": Option("int", 1, MAX_MASKS, flag="--masks"),
    "grid": Option("int", 1, 1024),
    # fit
    "batch_size": Option("int", 1, 4096),
    "num_workers": Option("int", 0, 256, flag="--workers"),
    "classes": Option("choice", choices=("seen", "all")),
    "checkpoint_every": Option("int", 1, 2 ** 31),
    # eval settings
    "box_threshold": Option("float", 0.0, 1.0, flag="--threshold"),
    "iou": Option("float", 0.0, 1.0, low_open=True),
    "pointing_tolerance": Option("float", 0.0, 1e6, flag="--tolerance"),
    "deletion_steps": Option("int", 2, 10_000, flag="--steps"),
    "score_batch": Option("int", 1, 4096),
    "num_examples": Option("int", 0, 1000, flag="--examples"),
    "sanity_top": Option("int", 1, 10_000),
    "num_images": Option("int", 1, 2 ** 31),
    "data_seed": Option("int", 0, MAX_SEED),
    "top": Option("int", 1, 1_000_000),
}

_UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def flag_of(name: str) -> str:
    """How messages name option ``name``: ``"num_masks (--masks)"``, the library and the command-line spelling."""
    spec = OPTIONS.get(name)
    flag = spec.flag if spec is not None and spec.flag else "--" + name.replace("_", "-")
    return f"{name.replace('rise_masks', 'num_masks')} ({flag})"


def parse_bytes(text, name: str = "memory_budget") -> int | None:
    """``"512M"``, ``"2G"``, ``"1.5GiB"`` or a byte count -> bytes (``None`` stays ``None``); finite, > 0."""
    if text is None:
        return None
    if isinstance(text, (int, np.integer)) and not isinstance(text, bool):
        value, unit = float(text), ""
    elif isinstance(text, str):
        raw = text.strip().upper().removesuffix("IB").removesuffix("B")
        unit = raw[-1] if raw and raw[-1] in _UNITS else ""
        try:
            value = float(raw[: len(raw) - len(unit)])
        except ValueError:
            raise InputError(f"{flag_of(name)}: cannot read memory size {text!r}; write e.g. 512M or 2G") from None
    else:
        raise InputError(f"{flag_of(name)} must be a byte count or a size such as '512M', got {type(text).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{flag_of(name)} must be a positive, finite size such as 512M or 2G, got {text!r}")
    size = value * _UNITS[unit]
    if size > MAX_BYTES or size < 1:
        raise InputError(f"{flag_of(name)} must lie between 1 byte and 1P, got {text!r}")
    return int(size)


def check_option(name: str, value: Any) -> Any:
    """``value`` as option ``name``'s type, or :class:`InputError` naming the option and the allowed range.

    Command-line text (``"0.5"``, ``"12"``) is read as the option's type; ``bool`` is never a number;
    an ``int`` option refuses ``1.5`` (and ``"1.5"``); ``float`` options refuse NaN and ±Inf.
    """
    spec = OPTIONS[name]
    flag = flag_of(name)
    hint = f" ({spec.hint})" if spec.hint else ""
    if spec.kind == "bytes":
        return parse_bytes(value, name)
    if spec.kind == "choice":
        if not isinstance(value, str) or value not in spec.choices:
            raise InputError(f"{flag} must be {spec.range_text()}, got {value!r}{hint}")
        return value
    if spec.words and isinstance(value, str) and value.strip().lower() in spec.words:
        return value.strip().lower()
    if isinstance(value, (bool, np.bool_)):
        raise InputError(f"{flag} must be {spec.range_text()}, got the bool {value!r}")
    if spec.kind == "int":
        if isinstance(value, (int, np.integer)):
            number = int(value)
        elif isinstance(value, str) and (parsed := _int_or_none(value)) is not None:
            number = parsed
        elif isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
            number = int(value)
        else:
            raise InputError(f"{flag} must be {spec.range_text()}, got {value!r}{hint}")
    else:
        try:
            number = float(value) if isinstance(value, (int, float, np.integer, np.floating, str)) else None
        except ValueError:
            number = None
        if number is None or not math.isfinite(number):
            raise InputError(f"{flag} must be {spec.range_text()} (finite), got {value!r}{hint}")
    if spec.low is not None and (number < spec.low or (spec.low_open and number == spec.low)):
        raise InputError(f"{flag} must be {spec.range_text()}, got {value!r}{hint}")
    if spec.high is not None and (number > spec.high or (spec.high_open and number == spec.high)):
        raise InputError(f"{flag} must be {spec.range_text()}, got {value!r}{hint}")
    return number


def _int_or_none(text: str):
    """The integer Python's ``int(text)`` reads (as argparse's ``type=int`` does: ``" 3 "``, ``"1_000"``), else None."""
    try:
        return int(text)
    except ValueError:
        return None


def check_options(values: Mapping[str, Any]) -> dict:
    """:func:`check_option` of every ``{name: value}`` whose name is a known option (``None`` values stay)."""
    return {k: (check_option(k, v) if k in OPTIONS and v is not None else v) for k, v in values.items()}


# ------------------------------------------------------------------------------------------------
# One options object per method
# ------------------------------------------------------------------------------------------------


def option_field(default: Any, doc: str, option: str | None = None) -> Any:
    """A dataclass field with its ``default``, one-line ``doc`` and the :data:`OPTIONS` entry that bounds it
    (``option``: the field's own name when None; ``"bool"`` for a flag that is True or False)."""
    return dataclasses.field(default=default, metadata={"doc": doc, "option": option})


def _option_name(field: dataclasses.Field) -> str:
    return field.metadata.get("option") or field.name


def _check_bool(name: str, value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise InputError(f"{name} must be True or False, got {value!r}")


def _check_dtype(value: Any) -> Any:
    """``None``, a dtype name in :data:`OPTIONS` ``compute_dtype``, or a dtype object (e.g. ``jnp.bfloat16``)."""
    if value is None or not isinstance(value, str):
        name = getattr(value, "__name__", None) or getattr(getattr(value, "dtype", None), "name", None)
        if value is None or name in OPTIONS["compute_dtype"].choices:
            return value
        raise InputError(f"compute_dtype must be {OPTIONS['compute_dtype'].range_text()} or None, got {value!r}")
    return check_option("compute_dtype", value)


@dataclasses.dataclass(frozen=True)
class MethodOptions:
    """The options of one method: every field a keyword of ``cj.explain`` for it."""

    def check(self, from_text: bool = False) -> "MethodOptions":
        """A copy with every field validated and typed (:class:`InputError` names the first bad one).

        ``from_text``: the values are command-line text (``"0.5"`` is read as a number); in the library a
        number given as a string is refused.
        """
        values = {}
        for f in dataclasses.fields(self):
            value, option = getattr(self, f.name), _option_name(f)
            spec = OPTIONS.get(option)
            if (not from_text and isinstance(value, str) and spec is not None and spec.kind in ("int", "float")
                    and value.strip().lower() not in spec.words):
                raise InputError(f"{flag_of(option)} must be {spec.range_text()}, got the string {value!r}")
            if option == "bool":
                values[f.name] = _check_bool(f.name, value)
            elif option == "compute_dtype":
                values[f.name] = _check_dtype(value)
            elif value is None or option not in OPTIONS:
                values[f.name] = value
            else:
                values[f.name] = check_option(option, value)
        return dataclasses.replace(self, **values)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def as_kwargs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True)
class GradientCamOptions(MethodOptions):
    """CAM, Grad-CAM and Grad-CAM++: one backward pass, no options."""


@dataclasses.dataclass(frozen=True)
class EngineOptions(MethodOptions):
    """How a perturbation sweep runs (:mod:`chipjax.perturb`): what every perturbation method takes."""

    chunk_size: int | None = option_field(None, "perturbed evaluations per step (default: the method's, or what "
                                                "memory_budget allows); memory grows with it")
    memory_budget: int | str | None = option_field(None, "memory one device may use for the sweep, e.g. 512M or 2G; "
                                                         "picks the chunk size")
    compute_dtype: Any = option_field(None, "dtype the perturbed networks run in, e.g. bfloat16 (statistics stay "
                                            "float32)")


@dataclasses.dataclass(frozen=True)
class ChipOptions(EngineOptions):
    """Image-level CHIP (docs/DESIGN.md §1.2–1.5)."""

    num_masks: int | str = option_field(2048, "perturbed networks per image, or auto (as many as a stable map "
                                              "needs, at most max_masks)")
    keep_prob: float = option_field(0.5, "probability that a channel stays on in a mask")
    lam_ratio: float = option_field(0.05, "lasso λ as a fraction of λ_max of each image's target")
    score: str = option_field("prob", "score of a perturbed network: prob (softmax), logit or logprob")
    nonneg: bool = option_field(False, "constrain the channel weights to be ≥ 0", "bool")
    design: str = option_field("iid", "mask design: iid (the paper's reading) or balanced")
    seed: int = option_field(0, "seed of the mask stream (same seed, same masks, same maps)")
    stability: float = option_field(0.99, "num_masks=auto: the split-half stability to reach")
    max_masks: int = option_field(8192, "num_masks=auto: the most masks drawn")


@dataclasses.dataclass(frozen=True)
class RefinedChipOptions(ChipOptions):
    """Refined CHIP: CHIP at several layers, fused (docs/DESIGN.md §1.6)."""

    fusion: str = option_field("geometric", "how the layers' maps are fused: geometric (mean), mean or max")
    layer_masks: str = option_field("per-channel", "masks per layer: per-channel (num_masks at the widest layer, "
                                                   "the same masks per channel elsewhere) or equal (num_masks at "
                                                   "every layer)")


@dataclasses.dataclass(frozen=True)
class AblationCamOptions(EngineOptions):
    """Ablation-CAM: one tail evaluation per zeroed channel."""

    score: str = option_field("logit", "score of an ablated network: logit (as pytorch-grad-cam), prob or logprob")


@dataclasses.dataclass(frozen=True)
class ScoreCamOptions(EngineOptions):
    """Score-CAM: one full forward pass per channel-masked image (defaults follow pytorch-grad-cam)."""

    score: str = option_field("logit", "score of each masked image: logit, prob or logprob")
    channel_softmax: bool = option_field(True, "softmax the scores over channels (pytorch-grad-cam) or use them "
                                               "raw", "bool")


@dataclasses.dataclass(frozen=True)
class RiseOptions(EngineOptions):
    """RISE: random grid masks at the input (Petsiuk et al. 2018)."""

    num_masks: int = option_field(2000, "random masks (the paper used 4000)", "rise_masks")
    seed: int = option_field(0, "seed of the mask stream")
    grid: int = option_field(7, "side of the coarse Bernoulli grid (paper: 7)")
    keep_prob: float = option_field(0.5, "probability that a grid cell is kept")
    score: str = option_field("prob", "score of a masked image: prob (as the paper), logit or logprob")


@dataclasses.dataclass(frozen=True)
class FitOptions(MethodOptions):
    """Class-level CHIP fitted over a data set (docs/DESIGN.md §1.4): ``chipjax fit``, :func:`chipjax.fit.fit_source`."""

    num_masks: int = option_field(ChipOptions.num_masks, "perturbed networks per image (a number: auto is for "
                                                         "image-level CHIP)")
    keep_prob: float = option_field(ChipOptions.keep_prob, "probability that a channel stays on in a mask")
    lam_ratio: float = option_field(ChipOptions.lam_ratio, "lasso λ as a fraction of λ_max of each class")
    score: str = option_field(ChipOptions.score, "score of a perturbed network: prob (softmax), logit or logprob")
    nonneg: bool = option_field(ChipOptions.nonneg, "constrain the channel weights to be ≥ 0", "bool")
    seed: int = option_field(ChipOptions.seed, "seed of the mask stream")
    chunk_size: int = option_field(256, "perturbed evaluations per step (images × masks)")
    batch_size: int = option_field(8, "images per step")
    checkpoint_every: int = option_field(10, "batches between progress checkpoints")
    num_workers: int = option_field(2, "decode + resize threads (0: the main thread)")
    classes: str = option_field("seen", "solve only the classes that have images (seen) or all of them")

    def check(self, from_text: bool = False) -> "FitOptions":
        if isinstance(self.num_masks, str) and self.num_masks.strip().lower() == "auto":
            raise InputError("num_masks (--masks) auto applies to image-level CHIP (explain) only; a class-level fit "
                             "needs a number of masks, e.g. 2048")
        return super().check(from_text)


#: The options object of every method of ``cj.explain``.
METHOD_OPTIONS: dict[str, type[MethodOptions]] = {
    "chip": ChipOptions, "refined-chip": RefinedChipOptions, "cam": GradientCamOptions,
    "gradcam": GradientCamOptions, "gradcam++": GradientCamOptions, "scorecam": ScoreCamOptions,
    "ablationcam": AblationCamOptions, "rise": RiseOptions,
}


def _options_class(method: str) -> type[MethodOptions]:
    try:
        return METHOD_OPTIONS[method]
    except KeyError:
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHOD_OPTIONS)}") from None


def option_names(method: str) -> tuple[str, ...]:
    """The options ``method`` takes (keywords of ``cj.explain``)."""
    return _options_class(method).names()


def for_method(method: str, **values: Any) -> MethodOptions:
    """``method``'s options object from keyword values, checked (unknown names and bad values raise
    :class:`InputError` naming them and what is allowed)."""
    cls = _options_class(method)
    unknown = sorted(set(values) - set(cls.names()))
    if unknown:
        names = cls.names()
        takes = f"its options are: {', '.join(names)}" if names else "it takes no options"
        raise InputError(f"method {method!r} takes no option {', '.join(unknown)}; {takes}")
    return cls(**values).check()


def add_flags(parser, cls: type[MethodOptions], names: Sequence[str], defaults: bool = False,
              note: str = "") -> None:
    """Add ``--flag`` arguments for fields ``names`` of ``cls`` to an argparse ``parser``.

    The flag is the option's :data:`OPTIONS` spelling (``--masks`` for ``num_masks``); its help is the
    field's doc; ``defaults``: the flag's default is the field's (else None: "the library's default").
    The flag keeps the text given: the command checks it with the options object (:meth:`MethodOptions.check`),
    as the library does, so the two give the same one-line error.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in names:
        f = fields[name]
        option = _option_name(f)
        spec = OPTIONS.get(option)
        flag = spec.flag if spec is not None and spec.flag else "--" + name.replace("_", "-")
        shown = f" (default {f.default})" if f.default is not None else ""
        parser.add_argument(flag, dest=name, default=f.default if defaults else None,
                            help=f"{f.metadata['doc']}{shown}{note}")


def _item_value(text: str):
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def split_items(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["chip.seed=3", "scorecam.chunk_size=32"]`` (``--option METHOD.KEY=VALUE``, VALUE read as JSON,
    else kept as text) -> ``{"chip": {"seed": 3}, "scorecam": {"chunk_size": 32}}``, not yet checked."""
    given: dict[str, dict[str, Any]] = {}
    for item in items:
        target, eq, value = item.partition("=")
        method, dot, key = target.rpartition(".")
        if not eq or not dot or not key:
            raise InputError(f"--option {item!r}: write METHOD.KEY=VALUE, e.g. scorecam.chunk_size=32")
        given.setdefault(method, {})[key] = _item_value(value)
    return given


def parse_items(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """:func:`split_items`, each method's values checked against its options object (:func:`checked_values`)."""
    return {method: checked_values(method, values) for method, values in split_items(items).items()}


def checked_values(method: str, values: Mapping[str, Any], from_text: bool = False) -> dict[str, Any]:
    """``values`` (a subset of ``method``'s options) checked and typed; the unset ones stay unset.
    ``from_text``: command-line text (see :meth:`MethodOptions.check`)."""
    cls = _options_class(method)
    unknown = sorted(set(values) - set(cls.names()))
    if unknown:
        for_method(method, **values)  # raises, naming them
    checked = cls(**values).check(from_text)
    return {k: getattr(checked, k) for k in values}
