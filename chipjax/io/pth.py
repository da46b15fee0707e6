"""PyTorch checkpoints read with numpy only, by a restricted unpickler that runs nothing.

A ``torch.save`` file is a pickle whose tensors are calls of
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` and whose storages
are *persistent ids* ``("storage", torch.FloatStorage, key, location, numel[, view])``
resolved outside the pickle:

* **zip format** (the default since PyTorch 1.6): ``<prefix>/data.pkl`` holds the pickle,
  ``<prefix>/data/<key>`` the raw bytes of each storage, ``<prefix>/byteorder`` their
  byte order.
* **legacy format** (``_use_new_zipfile_serialization=False``): five pickles back to back
  -- magic number, protocol version 1001, ``sys_info``, the object, the list of storage
  keys -- then for each key an 8-byte little-endian element count and the little-endian
  storage bytes.
* **plain pickle** (``pickle.dump`` of tensors): each storage is
  ``torch.storage._load_from_bytes(b)`` with ``b`` a legacy file of that one storage.

:class:`_RestrictedUnpickler` resolves every global the pickle names through
:func:`_stand_in_for`: ``collections.OrderedDict``, the tensor/parameter rebuild functions,
the storage types and dtypes map to pure-numpy stand-ins; any other name (``os.system``,
``builtins.eval``, ``functools.partial``, a model class, ...) raises
:class:`~chipjax.errors.UnsafeCheckpointError` when the unpickler first meets it, so the
pickle can never call it. The stand-ins only build inert records (:class:`_Storage`,
:class:`_TensorRef`); they refuse pickle's BUILD (``__setstate__``) and are not classes,
so NEWOBJ cannot instantiate them either. Tensors become numpy arrays only after the
whole file is parsed (:func:`_materialize`), through ``as_strided`` views of their
storage that are bounds-checked and copied.

Over 500 lines on purpose: the three file formats share one unpickler and one set of stand-ins, and
the safety argument above only holds when it can be read in one file.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

import numpy as np

from ..errors import UnsafeCheckpointError, WeightsError
from .binary import bfloat16_to_float32, read_exact

__all__ = ["MAGIC_NUMBER", "PROTOCOL_VERSION", "read_torch_pickle", "read_torch_zip", "select_state_dict"]

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # first pickle of a legacy torch.save file
PROTOCOL_VERSION = 1001  # second pickle

# Keys under which training scripts nest the state dict, tried in this order.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")

# torch storage type name -> (numpy dtype of the stored bits, torch dtype name)
_STORAGE_TYPES: dict[str, tuple[str, str]] = {
    "FloatStorage": ("float32", "float32"),
    "DoubleStorage": ("float64", "float64"),
    "HalfStorage": ("float16", "float16"),
    "BFloat16Storage": ("uint16", "bfloat16"),
    "LongStorage": ("int64", "int64"),
    "IntStorage": ("int32", "int32"),
    "ShortStorage": ("int16", "int16"),
    "CharStorage": ("int8", "int8"),
    "ByteStorage": ("uint8", "uint8"),
    "BoolStorage": ("bool", "bool"),
    "UntypedStorage": ("uint8", "uint8"),
}

_TORCH_DTYPE_NAMES = frozenset(
    "float32 float float64 double float16 half bfloat16 int64 long int32 int int16 short int8 uint8 bool".split()
)


# ----------------------------------------------------------------------------- inert records


class _Inert:
    """Base of everything the unpickler may put on its stack: refuses pickle's BUILD opcode."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise UnsafeCheckpointError(
            f"the pickle tries to set the state of {self!r} (BUILD opcode), which a tensor state dict never does; "
            f"refusing to load it"
        )


class _StorageType(_Inert):
    """Stand-in for ``torch.FloatStorage`` & co: the element type of a storage."""

    __slots__ = ("name", "raw_dtype", "torch_dtype")

    def __init__(self, name: str):
        raw, torch_dtype = _STORAGE_TYPES[name]
        self.name = name
        self.raw_dtype = np.dtype(raw)
        self.torch_dtype = torch_dtype

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _TorchDtype(_Inert):
    """Stand-in for a ``torch.float32``-style dtype attribute (carried, never used)."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _Storage(_Inert):
    """A storage: ``numel`` elements of ``stype``; ``data`` (1-D raw array) once read.

    A legacy *view* storage has ``base`` (the root storage) and ``base_offset`` (elements).
    """

    __slots__ = ("base", "base_offset", "data", "key", "numel", "stype")

    def __init__(self, key: str, stype: _StorageType, numel: int, base: _Storage | None = None, base_offset: int = 0):
        self.key = key
        self.stype = stype
        self.numel = numel
        self.data: np.ndarray | None = None
        self.base = base
        self.base_offset = base_offset

    def __repr__(self) -> str:
        return f"<{self.stype!r} {self.key}>"

    def array(self) -> np.ndarray:
        """The storage's elements, 1-D, raw dtype in native byte order."""
        if self.base is not None:
            return self.base.array()[self.base_offset : self.base_offset + self.numel]
        if self.data is None:
            raise WeightsError(f"storage {self.key} is referenced by a tensor but its data is not in the file")
        return self.data


class _TensorRef(_Inert):
    """A tensor as the pickle describes it: a strided window on a storage (in elements)."""

    __slots__ = ("offset", "size", "storage", "stride")

    def __init__(self, storage: Any, offset: Any, size: Any, stride: Any):
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride

    def __repr__(self) -> str:
        return f"<tensor {self.size} on {self.storage!r}>"


class _StandIn(_Inert):
    """What ``find_class`` returns for an allowed function: a callable instance, not a class."""

    __slots__ = ("fn", "qualname")

    def __init__(self, qualname: str, fn: Callable[..., Any]):
        self.qualname = qualname
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    def __repr__(self) -> str:
        return f"<stand-in for {self.qualname}>"


# ----------------------------------------------------------------------------- stand-in functions


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> _TensorRef:
    if not isinstance(storage, _Storage):
        raise WeightsError(f"a tensor is rebuilt from {type(storage).__name__}, not from a storage")
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(
    storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False,
    backward_hooks: Any = None, metadata: Any = None,
) -> _TensorRef:
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any, state: Any = None) -> _TensorRef:
    if not isinstance(data, _TensorRef):
        raise WeightsError(f"a parameter is rebuilt from {type(data).__name__}, not from a tensor")
    return data


def _ordered_dict(*args: Any) -> collections.OrderedDict:
    return collections.OrderedDict(*args)


def _load_from_bytes(b: Any) -> _Storage:
    """``torch.storage._load_from_bytes``: ``b`` is a legacy file holding one storage."""
    if not isinstance(b, (bytes, bytearray)):
        raise WeightsError(f"torch.storage._load_from_bytes got {type(b).__name__}, not bytes")
    obj = _parse_pickle_stream(io.BytesIO(b), allow_plain=False)
    if not isinstance(obj, _Storage):
        raise WeightsError(f"an embedded storage pickle holds {type(obj).__name__}, not a storage")
    return obj


def _encode_latin1(text: Any, encoding: Any = "utf-8") -> bytes:
    """``_codecs.encode(s, "latin1")``: how pickle protocol 2 spells a bytes object."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeCheckpointError(
            f"the pickle calls _codecs.encode with {type(text).__name__}, {encoding!r}; only latin1 is allowed"
        )
    return text.encode("latin1")


_FUNCTIONS: dict[tuple[str, str], Callable[..., Any]] = {
    ("_codecs", "encode"): _encode_latin1,
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
}


def _display_name(module: str, name: str) -> str:
    """``module.name``, plus its Python 3 spelling for a Python 2 name (``__builtin__.eval``)."""
    import _compat_pickle

    py3 = _compat_pickle.NAME_MAPPING.get((module, name))
    if py3 is None:
        py3 = (_compat_pickle.IMPORT_MAPPING.get(module, module), name)
    shown = f"{module}.{name}"
    return shown if py3 == (module, name) else f"{shown} (Python 3: {py3[0]}.{py3[1]})"


def _stand_in_for(module: str, name: str) -> Any:
    """The pure-numpy stand-in for global ``module.name``, or UnsafeCheckpointError."""
    if (module, name) in _FUNCTIONS:
        return _StandIn(f"{module}.{name}", _FUNCTIONS[(module, name)])
    if module in ("torch", "torch.storage") and name in _STORAGE_TYPES:
        return _StorageType(name)
    if module == "torch" and name in _TORCH_DTYPE_NAMES:
        return _TorchDtype(name)
    raise UnsafeCheckpointError(
        f"the pickle asks for {_display_name(module, name)}, which a tensor state dict never needs; "
        f"chipjax refuses to load it and ran nothing from it. If you trust the file's origin, load it with "
        f"torch and save only the weights: torch.save(model.state_dict(), 'weights.pth') (or convert them to .safetensors)"
    )


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose globals are only :func:`_stand_in_for` stand-ins."""

    def __init__(self, file: BinaryIO, persistent_load: Callable[[Any], Any] | None):
        super().__init__(file, encoding="utf-8")
        self._resolve_persistent = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        return _stand_in_for(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if self._resolve_persistent is None:
            raise WeightsError(f"unexpected persistent id {pid!r} in a plain pickle")
        return self._resolve_persistent(pid)


def _unpickle(f: BinaryIO, persistent_load: Callable[[Any], Any] | None = None) -> Any:
    return _RestrictedUnpickler(f, persistent_load).load()


# ----------------------------------------------------------------------------- persistent ids


def _storage_pid(pid: Any, n_fields: int) -> tuple:
    """Validate ``("storage", stype, key, location, numel, ...)``; return the fields after "storage"."""
    if not isinstance(pid, tuple) or not pid:
        raise WeightsError(f"persistent id {pid!r} is not a tuple")
    kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
    if kind == "module":
        raise UnsafeCheckpointError(
            "the checkpoint pickles a whole nn.Module, whose class would have to be imported and run; "
            "save the weights instead: torch.save(model.state_dict(), 'weights.pth')"
        )
    if kind != "storage" or len(pid) != n_fields + 1:
        raise WeightsError(f"persistent id {pid!r} is not a storage reference")
    fields = pid[1:]
    stype, key, numel = fields[0], fields[1], fields[3]
    if not isinstance(stype, _StorageType):
        raise WeightsError(f"storage {key!r} has element type {stype!r}, not a torch storage type")
    if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
        raise WeightsError(f"storage reference {pid!r} has a bad key or size")
    return fields


def _raw_array(buf: bytes | bytearray, stype: _StorageType, numel: int, byteorder: str, what: str) -> np.ndarray:
    """``numel`` elements of ``stype`` from ``buf`` (``byteorder`` "little"/"big") in native order."""
    nbytes = numel * stype.raw_dtype.itemsize
    if len(buf) < nbytes:
        raise WeightsError(f"{what} holds {len(buf)} bytes, {nbytes} needed for {numel} x {stype!r}; truncated?")
    dtype = stype.raw_dtype.newbyteorder("<" if byteorder == "little" else ">")
    arr = np.frombuffer(buf, dtype=dtype, count=numel)
    return arr if dtype.isnative else arr.astype(stype.raw_dtype)


# ----------------------------------------------------------------------------- tensors


def _tensor_to_numpy(t: _TensorRef, max_bytes: int) -> np.ndarray:
    """Copy a tensor out of its storage: ``as_strided`` on the storage, bounds-checked.

    ``max_bytes`` caps the copy (a stride-0 view of a small storage can be huge).
    """
    size, stride, offset = t.size, t.stride, t.offset
    ok = (
        isinstance(t.storage, _Storage)
        and isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)
        and all(type(v) is int and v >= 0 for v in (*size, *stride, offset))
    )
    if not ok:
        raise WeightsError(f"tensor {t!r} has a malformed size {size!r}, stride {stride!r} or offset {offset!r}")
    raw = t.storage.array()
    nbytes = int(np.prod(size, dtype=object)) * raw.dtype.itemsize
    if nbytes > max_bytes:
        raise WeightsError(
            f"a tensor of shape {size} would take {nbytes} bytes, more than the checkpoint can hold "
            f"(the arrays may total 8x the file size); the file is corrupt or malicious"
        )
    if 0 in size:
        out = np.zeros(size, raw.dtype)
    else:
        needed = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
        if needed > raw.size:
            raise WeightsError(
                f"a tensor of shape {size} needs {needed} elements of storage {t.storage.key} but it holds "
                f"{raw.size}; the file is truncated or corrupt"
            )
        itemsize = raw.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            raw[offset:], shape=size, strides=tuple(s * itemsize for s in stride), writeable=False
        )
        out = np.array(view, order="C")
    return bfloat16_to_float32(out) if t.storage.stype.torch_dtype == "bfloat16" else out


class _Materializer:
    """Turns the unpickled object into plain containers with numpy arrays, within budgets.

    A pickle can share objects (memo) so that a naive walk, or copying one big tensor once
    per reference, would take exponential time or unbounded memory: each tensor record is
    copied once (cached by identity), the walk visits at most ``max_nodes`` objects, and the
    arrays may total at most ``max_bytes``.
    """

    def __init__(self, max_bytes: int, max_nodes: int = 10_000_000, max_depth: int = 64):
        self.max_bytes, self.max_nodes, self.max_depth = max_bytes, max_nodes, max_depth
        self.nbytes = 0
        self.nodes = 0
        self.arrays: dict[int, np.ndarray] = {}

    def __call__(self, obj: Any, depth: int = 0) -> Any:
        self.nodes += 1
        if self.nodes > self.max_nodes or depth > self.max_depth:
            raise WeightsError(
                f"the checkpoint holds more than {self.max_nodes} objects or nests them more than "
                f"{self.max_depth} deep; it is not a state dict"
            )
        if isinstance(obj, _TensorRef):
            return self._array(obj)
        if isinstance(obj, Mapping):
            return {k: self(v, depth + 1) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self(v, depth + 1) for v in obj]
        return obj

    def _array(self, t: _TensorRef) -> np.ndarray:
        if id(t) not in self.arrays:
            arr = _tensor_to_numpy(t, self.max_bytes - self.nbytes)
            self.nbytes += arr.nbytes
            self.arrays[id(t)] = arr
        return self.arrays[id(t)]


def _materialize(obj: Any, file_size: int) -> Any:
    """Replace every :class:`_TensorRef` in nested dicts/lists/tuples by a numpy array.

    The arrays may total 8x the file size (bfloat16 widening, overlapping views).
    """
    return _Materializer(max_bytes=8 * file_size + 2**20)(obj)


def _flatten_arrays(tree: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
    """``{"a": {"b": x}}`` -> ``{"a.b": x}``; leaves that are not arrays are dropped."""
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, np.ndarray):
            flat[name] = value
        elif isinstance(value, Mapping):
            flat.update(_flatten_arrays(value, name + "."))
    return flat


def _strip_common_prefix(state: dict[str, np.ndarray], prefix: str = "module.") -> dict[str, np.ndarray]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def select_state_dict(obj: Any) -> dict[str, np.ndarray]:
    """The flat state dict inside a loaded checkpoint object (tensors already numpy).

    Descends into the first of :data:`WRAPPER_KEYS` that holds a dict with arrays, flattens
    what nesting remains with ``.``, drops non-array entries (epoch counters, ...) and strips
    a ``module.`` prefix common to all keys.
    """
    if not isinstance(obj, Mapping):
        raise WeightsError(f"the checkpoint holds a {type(obj).__name__}, not a dict of tensors (a state dict)")
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and _flatten_arrays(inner):
            return select_state_dict(inner)
    state = _flatten_arrays(obj)
    if not state:
        keys = ", ".join(map(repr, list(obj)[:10]))
        raise WeightsError(f"the checkpoint holds no tensors (top-level keys: {keys})")
    return _strip_common_prefix(state)


# ----------------------------------------------------------------------------- formats


def _remaining_bytes(f: BinaryIO) -> int:
    pos = f.tell()
    end = f.seek(0, io.SEEK_END)
    f.seek(pos)
    return end - pos


def _parse_pickle_stream(f: BinaryIO, allow_plain: bool) -> Any:
    """Parse a legacy torch.save stream (or, if ``allow_plain``, a plain pickle); storages filled.

    Returns the unpickled object with :class:`_TensorRef` leaves.
    """
    first = _unpickle(f)
    if not (type(first) is int and first == MAGIC_NUMBER):
        if allow_plain:
            return first  # a plain pickle: its storages came through _load_from_bytes
        raise WeightsError("not a torch.save stream (bad magic number)")
    version = _unpickle(f)
    if version != PROTOCOL_VERSION:
        raise WeightsError(f"legacy torch.save protocol version {version!r}, only {PROTOCOL_VERSION} is known")
    sys_info = _unpickle(f)
    if not isinstance(sys_info, dict):
        raise WeightsError("legacy torch.save header (sys_info) is not a dict")

    storages: dict[str, _Storage] = {}

    def persistent_load(pid: Any) -> _Storage:
        stype, key, _location, numel, view = _storage_pid(pid, 5)
        root = storages.setdefault(key, _Storage(key, stype, numel))
        if view is None:
            return root
        view_key, offset, view_size = view
        if view_key not in storages:
            storages[view_key] = _Storage(view_key, stype, view_size, base=root, base_offset=offset)
        return storages[view_key]

    obj = _unpickle(f, persistent_load)
    keys = _unpickle(f)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise WeightsError("legacy torch.save storage list is not a list of keys")
    for key in keys:
        storage = storages.get(key)
        if storage is None or storage.base is not None:
            raise WeightsError(f"storage {key!r} is listed in the file but no tensor refers to it")
        (count,) = struct.unpack("<q", read_exact(f, 8, f"size of storage {key}"))
        nbytes = count * storage.stype.raw_dtype.itemsize
        if not 0 <= nbytes <= _remaining_bytes(f):
            raise WeightsError(
                f"storage {key} ({count} x {storage.stype!r}) needs {nbytes} bytes but only "
                f"{_remaining_bytes(f)} remain; the file is truncated"
            )
        buf = read_exact(f, nbytes, f"storage {key} ({count} x {storage.stype!r})")
        storage.data = _raw_array(buf, storage.stype, count, "little", f"storage {key}")
    return obj


def read_torch_pickle(path: str) -> dict[str, np.ndarray]:
    """State dict of a legacy ``torch.save`` file or a plain pickle of tensors.

    Legacy storages are always written little-endian, whatever the machine.
    """
    with open(path, "rb") as f:
        obj = _parse_pickle_stream(f, allow_plain=True)
    return select_state_dict(_materialize(obj, os.path.getsize(path)))


def _zip_prefix(names: list[str]) -> str:
    for n in names:
        if n == "data.pkl":
            return ""
        if n.endswith("/data.pkl") and n.count("/") == 1:
            return n[: -len("data.pkl")]
    raise WeightsError("zip archive has no <name>/data.pkl: not a torch.save checkpoint")


def read_torch_zip(path: str) -> dict[str, np.ndarray]:
    """State dict of a zip-format ``torch.save`` file (``<prefix>/data.pkl`` + ``<prefix>/data/<key>``)."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        prefix = _zip_prefix(names)
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = zf.read(prefix + "byteorder").decode("ascii").strip()
            if byteorder not in ("little", "big"):
                raise WeightsError(f"unknown byte order {byteorder!r} in {prefix}byteorder")
        storages: dict[str, _Storage] = {}

        def persistent_load(pid: Any) -> _Storage:
            stype, key, _location, numel = _storage_pid(pid, 4)
            if key not in storages:
                entry = f"{prefix}data/{key}"
                if entry not in names:
                    raise WeightsError(f"storage {entry} is missing from the archive")
                nbytes = numel * stype.raw_dtype.itemsize
                if zf.getinfo(entry).file_size < nbytes:
                    raise WeightsError(
                        f"storage {entry} holds {zf.getinfo(entry).file_size} bytes, {nbytes} needed for "
                        f"{numel} x {stype!r}; the file is corrupt"
                    )
                with zf.open(entry) as f:
                    buf = read_exact(f, nbytes, f"storage {entry}")
                storage = _Storage(key, stype, numel)
                storage.data = _raw_array(buf, stype, numel, byteorder, f"storage {entry}")
                storages[key] = storage
            return storages[key]

        with zf.open(prefix + "data.pkl") as f:
            obj = _unpickle(f, persistent_load)
    return select_state_dict(_materialize(obj, os.path.getsize(path)))
