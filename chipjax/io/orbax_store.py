"""Flax variables on disk: an orbax checkpoint plus a JSON header, written atomically.

Layout of a chipjax variables directory::

    DIR/chipjax.json   {"format": "chipjax.variables", "format_version": 1,
                        "chipjax_version": "...", "metadata": {...caller's JSON...}}
    DIR/variables/     orbax StandardCheckpointer checkpoint of the nested dict of arrays

The header is written last, so a directory with it is complete. :func:`save_variables`
builds the whole directory in a hidden sibling ``.DIR.tmp-*`` and renames it into place;
an existing checkpoint at ``DIR`` is moved aside only once the new one is complete, and
is put back if the final rename fails. (Between the two renames, which take
microseconds, ``DIR`` is briefly absent.) Single-process only: under
``jax.distributed`` call it from one process.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import InputError, WeightsError

__all__ = ["ARRAYS_DIR", "FORMAT", "HEADER_FILE", "is_variables_dir", "load_variables", "save_variables"]

FORMAT = "chipjax.variables"
FORMAT_VERSION = 1
HEADER_FILE = "chipjax.json"
ARRAYS_DIR = "variables"


def _plain_tree(tree: Any, path: str = "") -> Any:
    """Mappings (FrozenDict included) -> dicts with str keys; leaves -> arrays orbax can store."""
    if isinstance(tree, Mapping):
        out = {}
        for key, value in tree.items():
            if not isinstance(key, str):
                raise InputError(
                    f"variables key {path}/{key!r} is not a string; variables are nested dicts with str keys"
                )
            out[key] = _plain_tree(value, f"{path}/{key}")
        return out
    if isinstance(tree, (list, tuple)):
        return [_plain_tree(v, f"{path}/{i}") for i, v in enumerate(tree)]
    if hasattr(tree, "shape") and hasattr(tree, "dtype") and not isinstance(tree, np.generic):
        return tree  # np.ndarray or jax.Array: orbax stores both
    if isinstance(tree, (bool, int, float, np.generic)):
        return np.asarray(tree)
    raise InputError(f"variables leaf {path or '/'} is a {type(tree).__name__}, not an array")


def _to_numpy(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _to_numpy(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_to_numpy(v) for v in tree]
    return np.asarray(tree)


def _header(metadata: dict) -> str:
    from .. import __version__

    if not isinstance(metadata, Mapping):
        raise InputError(f"metadata must be a dict, got {type(metadata).__name__}")
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "chipjax_version": __version__,
        "metadata": dict(metadata),
    }
    try:
        return json.dumps(header, indent=2, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise InputError(f"metadata must be JSON-serialisable (str, numbers, lists, dicts): {exc}") from None


def _write_header(directory: str, text: str) -> None:
    with open(os.path.join(directory, HEADER_FILE), "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _read_header(directory: str) -> dict:
    path = os.path.join(directory, HEADER_FILE)
    if not os.path.isfile(path):
        raise WeightsError(
            f"{directory} is not a chipjax variables checkpoint (no {HEADER_FILE}); write one with "
            f"chipjax.io.save_variables or `chipjax convert`"
        )
    try:
        with open(path, encoding="utf-8") as f:
            header = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path} is unreadable or not JSON ({exc}); the checkpoint is corrupt") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise WeightsError(f"{path} is not a chipjax variables header (format != {FORMAT!r})")
    if header.get("format_version", 0) > FORMAT_VERSION:
        raise WeightsError(
            f"{directory} was written by chipjax {header.get('chipjax_version')} in format version "
            f"{header.get('format_version')}; this chipjax reads version {FORMAT_VERSION}: upgrade chipjax"
        )
    return header


def is_variables_dir(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a complete chipjax variables checkpoint (cheap: reads the header)."""
    try:
        _read_header(os.fspath(directory))
    except WeightsError:
        return False
    return True


def _check_replaceable(target: str) -> None:
    """An existing ``target`` may be replaced only if it is an empty dir or a chipjax checkpoint."""
    if not os.path.lexists(target):
        return
    if not os.path.isdir(target) or os.path.islink(target):
        raise WeightsError(f"{target} exists and is not a directory; refusing to replace it")
    if os.listdir(target) and not os.path.isfile(os.path.join(target, HEADER_FILE)):
        raise WeightsError(
            f"{target} exists and is not a chipjax variables checkpoint; refusing to replace it (choose a new path)"
        )


def _make_parent(target: str) -> str:
    """Create ``target``'s missing parent folders; :class:`InputError` if they cannot be written to.

    Checked on the nearest existing ancestor before anything is created, so a read-only or
    non-folder ancestor leaves the file system untouched.
    """
    parent = os.path.dirname(target)
    existing = parent
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise InputError(f"cannot write {target}: {existing} is a file, not a folder; choose another output path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {target}: the folder {existing} is not writable; choose another output path")
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {parent} ({exc}); choose another output path") from None
    return parent


def _swap_into_place(new: str, target: str) -> None:
    """Rename ``new`` to ``target``; an existing ``target`` is removed only after that succeeded."""
    if not os.path.lexists(target):
        os.rename(new, target)
        return
    old = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.old-{uuid.uuid4().hex[:12]}")
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def save_variables(variables: Any, directory: str | os.PathLike, metadata: dict | None = None) -> str:
    """Store ``variables`` (nested dicts of arrays, e.g. Flax ``{"params": ..., "batch_stats": ...}``).

    Args:
      variables: nested mappings of ``np.ndarray``/``jax.Array`` (scalars become 0-d arrays).
      directory: the checkpoint folder; replaced atomically if it is already a chipjax checkpoint.
        Missing parent folders are created (like orbax); a read-only one raises :class:`InputError`
        before anything is written.
      metadata: JSON-serialisable dict, e.g. ``{"arch": "resnet50", "source": "x.pth"}``.

    Returns:
      The absolute path of the written directory.

    Raises:
      InputError: a leaf is not an array, a key is not a string, metadata is not JSON, or the
        folder cannot be written to.
      WeightsError: ``directory`` exists and is something else than a chipjax checkpoint.
    """
    import orbax.checkpoint as ocp

    target = os.path.abspath(os.fspath(directory))
    text = _header({} if metadata is None else metadata)
    tree = _plain_tree(variables)
    if not isinstance(tree, dict) or not tree:
        raise InputError("variables must be a non-empty dict of arrays")
    _check_replaceable(target)
    parent = _make_parent(target)
    tmp = os.path.join(parent, f".{os.path.basename(target)}.tmp-{uuid.uuid4().hex[:12]}")
    os.mkdir(tmp)
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(os.path.join(tmp, ARRAYS_DIR), tree)
            checkpointer.wait_until_finished()
        _write_header(tmp, text)
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_variables(directory: str | os.PathLike) -> tuple[dict, dict]:
    """Read a folder written by :func:`save_variables`.

    Returns:
      ``(variables, metadata)``: the nested dict with ``np.ndarray`` leaves (tuples come
      back as lists) and the metadata dict as saved. No template is needed.

    Raises:
      WeightsError: missing folder, not a chipjax checkpoint, or unreadable arrays.
    """
    import orbax.checkpoint as ocp

    path = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(path):
        raise WeightsError(f"variables checkpoint not found: {path}")
    header = _read_header(path)
    arrays = os.path.join(path, ARRAYS_DIR)
    if not os.path.isdir(arrays):
        raise WeightsError(f"{path} has a header but no {ARRAYS_DIR}/ folder; the checkpoint is incomplete")
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            tree = checkpointer.restore(arrays)
    except Exception as exc:  # noqa: BLE001  orbax/tensorstore errors of a damaged checkpoint
        raise WeightsError(f"{path}: orbax cannot restore the arrays ({type(exc).__name__}: {exc})") from None
    metadata = header.get("metadata", {})
    return _to_numpy(tree), metadata if isinstance(metadata, dict) else {}
