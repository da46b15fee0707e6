"""What every resumable job shares: one signal guard, one atomic file writer, one config fingerprint.

Used by the class-level fit (:mod:`chipjax.fit`), the evaluation (:mod:`chipjax.eval`), figure
writing (:mod:`chipjax.viz`) and the variables store (:mod:`chipjax.io.orbax_store`).

* :class:`StopSignals`: while its body runs, SIGINT/SIGTERM either set a flag that the job checks
  between steps (``stop.signal``) or, with ``interrupt=True``, raise :class:`KeyboardInterrupt`; the
  previous handlers come back on exit. Outside the main thread it installs nothing.
* :func:`atomic_write`: a file is written to a hidden temporary in its own folder, flushed, ``fsync``-ed and
  moved over the target with :func:`os.replace`, so a reader sees the old file or the new one, never half.
* :func:`fingerprint`: the sha256 of a JSON config (keys sorted) or of a text, as hex digits: the name
  of a job's progress folder and the identity a resumed job must match.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import uuid
from typing import Any, BinaryIO, Callable

__all__ = ["StopSignals", "atomic_write", "fingerprint"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Context manager over SIGINT/SIGTERM.

    Args:
      interrupt: raise :class:`KeyboardInterrupt` on a signal (the body stops where it is; a ``finally``
        saves its work) instead of recording it in :attr:`signal` (the body checks it between steps).
    """

    def __init__(self, interrupt: bool = False):
        self.interrupt = bool(interrupt)
        self.signal: int | None = None
        self._old: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum
        if self.interrupt:
            raise KeyboardInterrupt(f"stopped by signal {signum}")

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


def atomic_write(path: str | os.PathLike, data: bytes | Callable[[BinaryIO], Any]) -> None:
    """Write ``data`` (bytes, or a function that writes to a binary file) to ``path`` atomically.

    The temporary file (``.NAME.tmp-XXXXXXXX`` beside ``path``) is removed whatever happens; the target
    is replaced only once the new content is complete and on disk.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "xb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def fingerprint(config: Any, digits: int | None = 16) -> str:
    """sha256 hex digits (the first ``digits``; ``None``: all 64) of ``config``: a text as it is, anything
    else as its JSON with sorted keys."""
    text = config if isinstance(config, str) else json.dumps(config, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()
    return digest if digits is None else digest[: int(digits)]
