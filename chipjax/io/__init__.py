"""Checkpoint input/output with numpy only: no torch, and no code from a file is ever run.

* :func:`read_state_dict` reads a flat ``{name: np.ndarray}`` state dict from a PyTorch
  checkpoint (``torch.save`` zip or legacy format, or a plain pickle of tensors), a
  ``.safetensors`` file or an ``.npz`` archive. The format is told by the file's magic
  bytes; the extension only sharpens the error message of a damaged file. Pickles are
  read by a restricted unpickler (:mod:`chipjax.io.pth`) that knows tensors, storages and
  ``OrderedDict`` and refuses everything else with :class:`~chipjax.errors.UnsafeCheckpointError`.
* :func:`save_variables` / :func:`load_variables` store converted Flax variables with
  orbax, plus a JSON metadata header (:mod:`chipjax.io.orbax_store`).

Submodules are imported on first use: importing :mod:`chipjax.io` costs nothing.
"""
from __future__ import annotations

import importlib
import os
import struct
import zipfile
from typing import Any

import numpy as np

from ..errors import ChipjaxError, WeightsError

__all__ = [
    "SUPPORTED_FORMATS",
    "is_variables_dir",
    "load_variables",
    "read_state_dict",
    "save_variables",
    "sniff_format",
]

SUPPORTED_FORMATS = (
    "PyTorch checkpoints .pth/.pt/.bin/.ckpt (torch.save zip or legacy format), "
    ".safetensors, .npz (arrays only), or a folder written by chipjax.io.save_variables"
)

_EXTENSION_FORMAT = {
    ".pth": "PyTorch",
    ".pt": "PyTorch",
    ".bin": "PyTorch",
    ".ckpt": "PyTorch",
    ".pkl": "PyTorch",
    ".safetensors": "safetensors",
    ".npz": "npz",
}

_LAZY = {
    "save_variables": ("chipjax.io.orbax_store", "save_variables"),
    "load_variables": ("chipjax.io.orbax_store", "load_variables"),
    "is_variables_dir": ("chipjax.io.orbax_store", "is_variables_dir"),
    "pth": ("chipjax.io.pth", None),
    "safetensors": ("chipjax.io.safetensors", None),
    "npz": ("chipjax.io.npz", None),
    "orbax_store": ("chipjax.io.orbax_store", None),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'chipjax.io' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


# ----------------------------------------------------------------------------- shared primitives


# ----------------------------------------------------------------------------- dispatch


def sniff_format(path: str | os.PathLike) -> str | None:
    """Tell a weight file's format from its first bytes.

    Returns ``"zip"`` (torch.save zip or .npz; :func:`read_state_dict` looks inside),
    ``"pickle"`` (legacy torch.save or a plain pickle), ``"safetensors"``, ``"tar"``
    (pre-1.0 torch.save) or ``None`` when no known format matches.
    """
    with open(path, "rb") as f:
        head = f.read(512)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{":
        (header_len,) = struct.unpack("<Q", head[:8])
        if header_len >= 2:
            return "safetensors"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    return None


def _is_torch_zip(names: list[str]) -> bool:
    """A torch.save zip holds ``<prefix>/data.pkl``."""
    return any(n == "data.pkl" or (n.endswith("/data.pkl") and n.count("/") == 1) for n in names)


def _read_by_content(path: str) -> dict[str, np.ndarray]:
    from . import npz, pth
    from . import safetensors as st

    fmt = sniff_format(path)
    if fmt == "zip":
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
        if _is_torch_zip(names):
            return pth.read_torch_zip(path)
        if names and all(n.endswith(".npy") for n in names):
            return npz.read_npz(path)
        raise WeightsError(
            f"{path}: a zip archive that is neither a torch.save checkpoint (no <name>/data.pkl) "
            f"nor an .npz (entries other than .npy); supported: {SUPPORTED_FORMATS}"
        )
    if fmt == "pickle":
        return pth.read_torch_pickle(path)
    if fmt == "safetensors":
        return st.read_safetensors(path)
    if fmt == "tar":
        raise WeightsError(
            f"{path}: a tar-based torch.save checkpoint (PyTorch < 1.0), which chipjax does not read; "
            f"re-save it with a current torch: torch.save(torch.load(path), 'new.pth')"
        )
    expected = _EXTENSION_FORMAT.get(os.path.splitext(path)[1].lower())
    if expected is not None:
        raise WeightsError(
            f"{path}: not a valid {expected} file (unrecognised leading bytes); it is corrupt or not what its "
            f"extension says"
        )
    raise WeightsError(f"{path}: unknown weights format; supported: {SUPPORTED_FORMATS}")


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a checkpoint into a flat state dict ``{name: np.ndarray}`` with numpy only.

    Formats: ``torch.save`` zip and legacy (``_use_new_zipfile_serialization=False``)
    checkpoints and plain pickles of tensors; ``.safetensors``; ``.npz``. A checkpoint
    that wraps its weights (``{"state_dict": ...}``, ``{"model": ...}``) yields the inner
    dict, and a ``module.`` prefix common to every key (DataParallel) is removed.
    Arrays keep their dtype (float32, float16, int64, ...), except bfloat16 which becomes
    float32 (exactly).

    Raises:
      WeightsError: missing, truncated, corrupt or unknown file.
      UnsafeCheckpointError: a pickle asks for anything but tensors, storages and plain
        containers (e.g. ``os.system``); nothing of it is run.
      WeightsError: a float tensor holds NaN or ±Inf (the message names it).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise WeightsError(f"weights file not found: {path}")
    if os.path.isdir(path):
        raise WeightsError(
            f"{path} is a directory; read_state_dict reads one file ({SUPPORTED_FORMATS}); "
            f"for a folder written by save_variables use chipjax.io.load_variables"
        )
    if os.path.getsize(path) == 0:
        raise WeightsError(f"{path}: the file is empty")
    try:
        state = _read_by_content(path)
    except ChipjaxError as exc:
        if path in str(exc):
            raise
        raise type(exc)(f"{path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001  EOFError, struct.error, BadZipFile, UnpicklingError, ... of a damaged file
        raise WeightsError(
            f"{path}: cannot read this checkpoint ({type(exc).__name__}: {exc}); the file is truncated or corrupt"
        ) from None
    from .orbax_store import check_finite

    check_finite(state, path)
    return state
