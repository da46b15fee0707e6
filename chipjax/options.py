"""One definition of every user-facing option: its type, range and finiteness, checked before any work.

The command line (``chipjax explain | fit | eval``) and the library's entry points share
:data:`OPTIONS`; :func:`check_option` turns a value (a number, or the text given on the command
line) into the option's type or raises :class:`~chipjax.errors.InputError` naming the option, the
value and what is allowed. Nothing here imports JAX: checking options costs nothing.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np

from .errors import InputError

__all__ = ["Option", "OPTIONS", "check_option", "check_options", "parse_bytes"]

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
    "keep_prob": Option("float", 0.0, 1.0, low_open=True, high_open=True),
    "lam_ratio": Option("float", 0.0, 1.0, high_open=True),
    "seed": Option("int", 0, MAX_SEED),
    "chunk_size": Option("int", 1, MAX_MASKS),
    "score": Option("choice", choices=("prob", "logit", "logprob")),
    "memory_budget": Option("bytes", 1, MAX_BYTES),
    # RISE
    "rise_masks": Option("int", 1, MAX_MASKS, flag="--masks"),
    "cells": Option("int", 1, 1024),
    # fit
    "batch_size": Option("int", 1, 4096),
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
    if spec.kind == "bytes":
        return parse_bytes(value, name)
    if spec.kind == "choice":
        if not isinstance(value, str) or value not in spec.choices:
            raise InputError(f"{flag} must be {spec.range_text()}, got {value!r}")
        return value
    if spec.words and isinstance(value, str) and value.strip().lower() in spec.words:
        return value.strip().lower()
    if isinstance(value, (bool, np.bool_)):
        raise InputError(f"{flag} must be {spec.range_text()}, got the bool {value!r}")
    if spec.kind == "int":
        if isinstance(value, (int, np.integer)):
            number = int(value)
        elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            number = int(value.strip())
        elif isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
            number = int(value)
        else:
            raise InputError(f"{flag} must be {spec.range_text()}, got {value!r}")
    else:
        try:
            number = float(value) if isinstance(value, (int, float, np.integer, np.floating, str)) else None
        except ValueError:
            number = None
        if number is None or not math.isfinite(number):
            raise InputError(f"{flag} must be {spec.range_text()} (finite), got {value!r}")
    if spec.low is not None and (number < spec.low or (spec.low_open and number == spec.low)):
        raise InputError(f"{flag} must be {spec.range_text()}, got {value!r}")
    if spec.high is not None and (number > spec.high or (spec.high_open and number == spec.high)):
        raise InputError(f"{flag} must be {spec.range_text()}, got {value!r}")
    return number


def check_options(values: Mapping[str, Any]) -> dict:
    """:func:`check_option` of every ``{name: value}`` whose name is a known option (``None`` values stay)."""
    return {k: (check_option(k, v) if k in OPTIONS and v is not None else v) for k, v in values.items()}
