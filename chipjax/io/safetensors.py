"""``.safetensors`` files read by the ``safetensors`` package (safe by construction: no code, fuzzed).

Layout: an 8-byte little-endian header length ``n``, ``n`` bytes of JSON
``{name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}}``,
then the data section; offsets are relative to its start and data is little-endian. The package
checks the header (size, UTF-8, JSON, offsets that tile the data section) and hands back each
tensor's raw bytes (:func:`safetensors.deserialize`, framework-free); this module only turns the bytes
into NumPy arrays, widening BF16 (which NumPy lacks) to float32 exactly.
"""
from __future__ import annotations

import numpy as np
import safetensors

from ..errors import WeightsError
from .binary import bfloat16_to_float32

__all__ = ["SAFETENSORS_DTYPES", "read_safetensors"]

# safetensors dtype -> numpy dtype of the stored (little-endian) bits; BF16 is widened to float32.
SAFETENSORS_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "BF16": "<u2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}

# the package's words for a file that ends too early (the rest mean damaged bytes)
_TRUNCATION_REASONS = ("not fully covered", "header too small", "invalid header length")


def _why_unreadable(exc: Exception) -> str:
    """The package's reason, with what it most likely means for the user's file."""
    reason = str(exc).removeprefix("Error while deserializing: ").strip() or type(exc).__name__
    if any(words in reason for words in _TRUNCATION_REASONS):
        return f"{reason}; the file is truncated or not a safetensors file"
    return f"{reason}; the file is corrupt or not a safetensors file"


def _as_array(name: str, entry: dict) -> np.ndarray:
    """One tensor from its ``{"dtype", "shape", "data"}`` entry: stored dtype, except BF16 -> float32."""
    dtype_name = entry["dtype"]
    if dtype_name not in SAFETENSORS_DTYPES:
        raise WeightsError(f"tensor {name!r} has dtype {dtype_name!r}; chipjax reads {', '.join(SAFETENSORS_DTYPES)}")
    dtype = np.dtype(SAFETENSORS_DTYPES[dtype_name])
    arr = np.frombuffer(entry["data"], dtype=dtype).reshape(tuple(entry["shape"]))
    arr = arr.astype(dtype.newbyteorder("="), copy=False)
    return bfloat16_to_float32(arr) if dtype_name == "BF16" else arr


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """``{name: array}`` of every tensor in the file (writable NumPy arrays that own their memory)."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        entries = safetensors.deserialize(raw)
    except safetensors.SafetensorError as exc:
        raise WeightsError(f"cannot read {path} as safetensors: {_why_unreadable(exc)}") from None
    return {name: _as_array(name, entry) for name, entry in entries}
