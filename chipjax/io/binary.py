"""Byte-level helpers of the weight readers (:mod:`chipjax.io.pth`, :mod:`chipjax.io.safetensors`)."""
from __future__ import annotations

from typing import BinaryIO

import numpy as np

from ..errors import WeightsError


def read_exact(f: BinaryIO, nbytes: int, what: str) -> bytearray:
    """Read exactly ``nbytes`` from ``f`` into a writable buffer.

    Raises :class:`WeightsError` (without a path; callers add it) when the file ends first.
    """
    if nbytes < 0:
        raise WeightsError(f"{what}: negative size {nbytes}")
    buf = bytearray(nbytes)
    view = memoryview(buf)
    got = 0
    while got < nbytes:
        n = f.readinto(view[got:])
        if not n:
            raise WeightsError(f"{what}: needs {nbytes} bytes but the file ends after {got}; the file is truncated")
        got += n
    return buf


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 values stored as ``uint16`` bit patterns (any shape) -> exactly equal float32, same shape."""
    return (np.asarray(bits, np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)
