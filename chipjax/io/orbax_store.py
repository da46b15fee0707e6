"""Flax variables on disk: an orbax checkpoint plus a JSON header, written atomically.

Layout of a chipjax variables directory::

    DIR/chipjax.json   {"format": "chipjax.variables", "format_version": 2,
                        "chipjax_version": "...", "metadata": {...caller's JSON...},
                        "checksums": {"files": {"variables/<path>": [bytes, "sha256"], ...},
                                      "arrays": "sha256 of every array's path, dtype, shape and bytes",
                                      "metadata": "sha256 of the metadata's JSON"}}
    DIR/variables/     orbax StandardCheckpointer checkpoint of the nested dict of arrays

Loading validates the header (format, version, metadata), then every file orbax wrote against its
size and sha256 *before* orbax reads anything (so a deleted, truncated or flipped file is one
:class:`~chipjax.errors.WeightsError` line naming the folder and the file, not a TensorStore dump),
then the restored arrays against their checksum, and refuses NaN/Inf in a float array, naming it.
Version-1 folders (no checksums) still load, with the header checks and the NaN/Inf check only.

The header is written last, so a directory with it is complete. :func:`save_variables`
builds the whole directory in a hidden sibling ``.DIR.tmp-*`` and renames it into place;
an existing checkpoint at ``DIR`` is moved aside only once the new one is complete, and
is put back if the final rename fails. (Between the two renames, which take
microseconds, ``DIR`` is briefly absent.) Single-process only: under
``jax.distributed`` call it from one process.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import InputError, WeightsError
from ..jobs import atomic_write, fingerprint

__all__ = ["ARRAYS_DIR", "FORMAT", "HEADER_FILE", "is_variables_dir", "load_variables", "save_variables"]

FORMAT = "chipjax.variables"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
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


def _flat_arrays(tree: Any, path: str = "") -> list[tuple[str, np.ndarray]]:
    """``[(path, array)]`` of a nested dict/list of arrays, sorted by path."""
    if isinstance(tree, Mapping):
        return sorted((item for k, v in tree.items() for item in _flat_arrays(v, f"{path}/{k}")), key=lambda t: t[0])
    if isinstance(tree, (list, tuple)):
        return [item for i, v in enumerate(tree) for item in _flat_arrays(v, f"{path}/{i}")]
    return [(path or "/", np.asarray(tree))]


def arrays_digest(tree: Any) -> str:
    """sha256 of every array's path, dtype, shape and bytes (nested dicts/lists of arrays)."""
    h = hashlib.sha256()
    for path, a in _flat_arrays(tree):
        a = np.ascontiguousarray(a)
        h.update(f"{path}|{a.dtype.str}|{a.shape}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def check_finite(tree: Any, where: str) -> None:
    """Refuse NaN or ±Inf in any float array of ``tree``, naming the first such array (``where``: the file)."""
    for path, a in _flat_arrays(tree):
        if np.issubdtype(a.dtype, np.inexact) and not np.isfinite(a).all():
            bad = int(np.size(a) - np.isfinite(a).sum())
            raise WeightsError(f"{where}: array {path.lstrip('/')} holds {bad} NaN or Inf value(s); the weights are "
                               f"damaged or diverged: use another checkpoint")


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files_manifest(directory: str) -> dict[str, list]:
    """``{relative path: [size, sha256]}`` of every file under ``directory/variables``."""
    out = {}
    root = os.path.join(directory, ARRAYS_DIR)
    for folder, _, names in os.walk(root):
        for name in names:
            full = os.path.join(folder, name)
            out[os.path.relpath(full, directory)] = [os.path.getsize(full), _file_digest(full)]
    return dict(sorted(out.items()))


def _header(metadata: dict, checksums: dict | None = None) -> str:
    from .._version import __version__

    if not isinstance(metadata, Mapping):
        raise InputError(f"metadata must be a dict, got {type(metadata).__name__}")
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "chipjax_version": __version__,
        "metadata": dict(metadata),
    }
    if checksums is not None:
        header["checksums"] = checksums
    try:
        return json.dumps(header, indent=2, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise InputError(f"metadata must be JSON-serialisable (str, numbers, lists, dicts): {exc}") from None


def _write_header(directory: str, text: str) -> None:
    atomic_write(os.path.join(directory, HEADER_FILE), text.encode("utf-8"))


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
    version = header.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise WeightsError(
            f"{directory} was written by chipjax {header.get('chipjax_version')} in format version "
            f"{version}; this chipjax reads versions {', '.join(map(str, READABLE_VERSIONS))}: upgrade chipjax"
        )
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise WeightsError(f"{path}: format_version {version!r} is not one chipjax wrote "
                           f"({', '.join(map(str, READABLE_VERSIONS))}); the header was edited or damaged: "
                           f"write the folder again")
    if not isinstance(header.get("metadata", {}), dict):
        raise WeightsError(f"{path}: metadata is a {type(header['metadata']).__name__}, not a JSON object; "
                           f"the header was edited or damaged: write the folder again")
    if version >= 2:
        sums = header.get("checksums")
        files = sums.get("files") if isinstance(sums, dict) else None
        if (not isinstance(files, dict) or not files or not isinstance(sums.get("arrays"), str)
                or not all(isinstance(v, list) and len(v) == 2 and isinstance(v[0], int) and isinstance(v[1], str)
                           for v in files.values())):
            raise WeightsError(f"{path}: the checksums of the arrays are missing or malformed; the header was "
                               f"edited or damaged: write the folder again")
    return header


def _metadata_digest(metadata: dict) -> str:
    return fingerprint(metadata, digits=None)


def _verify_files(directory: str, header: dict) -> None:
    """Every file the header lists is there with its size and sha256 (before orbax reads any of them)."""
    if header["format_version"] < 2:
        return
    if header["checksums"].get("metadata") != _metadata_digest(header.get("metadata", {})):
        raise WeightsError(f"{directory}: the metadata in {HEADER_FILE} does not match its checksum; the header was "
                           f"edited or damaged: write the folder again")
    for rel, (size, digest) in header["checksums"]["files"].items():
        full = os.path.normpath(os.path.join(directory, rel))
        if os.path.commonpath([full, directory]) != directory:
            raise WeightsError(f"{directory}: the checksums name a file outside the folder ({rel}); refusing it")
        if not os.path.isfile(full):
            raise WeightsError(f"{directory}: data file {rel} is missing; the checkpoint is incomplete: "
                               f"write it again")
        got = os.path.getsize(full)
        if got != size:
            raise WeightsError(f"{directory}: data file {rel} has {got} bytes, {size} were written; it is truncated "
                               f"or damaged: write the checkpoint again")
        if _file_digest(full) != digest:
            raise WeightsError(f"{directory}: data file {rel} does not match its checksum; it is corrupt: "
                               f"write the checkpoint again")


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
    _header({} if metadata is None else metadata)  # refuse bad metadata before anything is written
    tree = _plain_tree(variables)
    if not isinstance(tree, dict) or not tree:
        raise InputError("variables must be a non-empty dict of arrays")
    array_sum = arrays_digest(_to_numpy(tree))
    _check_replaceable(target)
    parent = _make_parent(target)
    tmp = os.path.join(parent, f".{os.path.basename(target)}.tmp-{uuid.uuid4().hex[:12]}")
    os.mkdir(tmp)
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(os.path.join(tmp, ARRAYS_DIR), tree)
            checkpointer.wait_until_finished()
        text = _header({} if metadata is None else metadata,
                       {"files": _files_manifest(tmp), "arrays": array_sum,
                        "metadata": _metadata_digest({} if metadata is None else dict(metadata))})
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
    _verify_files(path, header)
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            tree = checkpointer.restore(arrays)
    except Exception as exc:  # noqa: BLE001  orbax/tensorstore errors of a damaged checkpoint
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise WeightsError(f"{path}: orbax cannot restore the arrays ({type(exc).__name__}: {first}); the "
                           f"checkpoint is damaged: write it again") from None
    tree = _to_numpy(tree)
    if header["format_version"] >= 2 and arrays_digest(tree) != header["checksums"]["arrays"]:
        raise WeightsError(f"{path}: the restored arrays do not match their checksum; the checkpoint is corrupt: "
                           f"write it again")
    check_finite(tree, path)
    return tree, header.get("metadata", {})
