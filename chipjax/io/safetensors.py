"""``.safetensors`` files read with numpy only (the ``safetensors`` package is not needed).

Layout: an 8-byte little-endian header length ``n``, ``n`` bytes of JSON
``{name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}}``,
then the data section; offsets are relative to its start and data is little-endian.
"""
from __future__ import annotations

import json
import os
import struct

import numpy as np

from ..errors import WeightsError
from .binary import bfloat16_to_float32, read_exact

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

_MAX_HEADER_BYTES = 100 * 2**20  # the limit the reference implementation enforces


def _read_header(f, file_size: int) -> tuple[dict, int]:
    """Parse the JSON header; return it and the byte offset where the data section starts."""
    (header_len,) = struct.unpack("<Q", read_exact(f, 8, "safetensors header length"))
    if header_len > min(_MAX_HEADER_BYTES, file_size - 8):
        raise WeightsError(
            f"safetensors header claims {header_len} bytes but the file has {file_size - 8} after the length; "
            f"truncated or not a safetensors file"
        )
    raw = read_exact(f, header_len, "safetensors header")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"safetensors header is not valid JSON ({exc}); the file is corrupt") from None
    if not isinstance(header, dict):
        raise WeightsError("safetensors header is not a JSON object")
    return header, 8 + header_len


def _entry_layout(name: str, entry: object, data_size: int) -> tuple[np.dtype, tuple[int, ...], int, int]:
    """Validate one header entry; return (raw dtype, shape, begin, end) with offsets in the data section."""
    if not isinstance(entry, dict):
        raise WeightsError(f"safetensors entry {name!r} is not an object")
    dtype_name, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype_name not in SAFETENSORS_DTYPES:
        raise WeightsError(
            f"tensor {name!r} has dtype {dtype_name!r}; chipjax reads {', '.join(SAFETENSORS_DTYPES)}"
        )
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise WeightsError(f"tensor {name!r} has a malformed shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        raise WeightsError(f"tensor {name!r} has malformed data_offsets {offsets!r}")
    dtype = np.dtype(SAFETENSORS_DTYPES[dtype_name])
    begin, end = offsets
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if not 0 <= begin <= end or end - begin != nbytes:
        raise WeightsError(f"tensor {name!r}: data_offsets {offsets} do not fit shape {shape} of {dtype_name}")
    if end > data_size:
        raise WeightsError(
            f"tensor {name!r} needs bytes {begin}..{end} of the data section, which has only {data_size}; "
            f"the file is truncated"
        )
    return dtype, tuple(shape), begin, end


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """``{name: array}`` in header order; dtypes as stored except BF16 -> float32 (exact)."""
    file_size = os.path.getsize(path)
    out: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        header, data_start = _read_header(f, file_size)
        data_size = file_size - data_start
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            dtype, shape, begin, end = _entry_layout(name, entry, data_size)
            f.seek(data_start + begin)
            buf = read_exact(f, end - begin, f"tensor {name!r}")
            arr = np.frombuffer(buf, dtype=dtype).reshape(shape)
            arr = arr.astype(dtype.newbyteorder("="), copy=False)
            out[name] = bfloat16_to_float32(arr) if entry["dtype"] == "BF16" else arr
    return out
