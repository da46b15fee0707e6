"""The resumable record store of an evaluation folder: ``records.jsonl`` (one checksummed JSON line per
(image, run), appended and ``fsync``-ed), ``run.json`` (the evaluation's identity) and the example maps."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from typing import Iterable, Mapping, Sequence

import numpy as np

from .. import jobs
from ..errors import InputError
from .spec import CONFIG_FILE, EXAMPLES_DIR, RECORDS_FILE, Run

log = logging.getLogger("chipjax")

def record_checksum(rec: Mapping) -> str:
    """crc32 (8 hex digits) of a record's JSON without its ``crc`` field: written with each record."""
    import zlib

    text = json.dumps({k: v for k, v in rec.items() if k != "crc"}, sort_keys=True)
    return f"{zlib.crc32(text.encode()) & 0xFFFFFFFF:08x}"


def read_records(path: str, damaged: list | None = None) -> list[dict]:
    """The complete records of a ``records.jsonl``, in file order, one per (image, run): a later line
    replaces an earlier one (a sample recomputed after its data changed).

    A line a crash cut short (it does not end in ``}``) is skipped silently; a line that ends like a
    record but does not parse or does not match its ``crc`` is damaged: skipped (so recomputed), and
    its line number appended to ``damaged`` when given. Records come back without their ``crc``.
    """
    if not os.path.isfile(path):
        return []
    out: dict[tuple[int, str], dict] = {}
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            key = (int(rec["i"]), str(rec["run"]))
            if "crc" in rec and rec["crc"] != record_checksum(rec):
                raise ValueError("checksum")
        except (ValueError, KeyError, TypeError):
            if damaged is not None and line.rstrip().endswith(b"}"):
                damaged.append(number)
            continue
        rec.pop("crc", None)
        out.pop(key, None)
        out[key] = rec
    return list(out.values())


class RecordStore:
    """Records of one output folder: those on disk plus a buffer flushed every ``every`` records."""

    def __init__(self, out_dir: str, config: dict, resume: bool, every: int):
        if every < 1:
            raise InputError(f"checkpoint interval must be at least 1 record, got {every}")
        self.path = os.path.join(out_dir, RECORDS_FILE)
        self.every = int(every)
        config_path = os.path.join(out_dir, CONFIG_FILE)
        old = read_json(config_path)
        if resume and old is not None and old != config:
            differ = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            raise InputError(f"{out_dir} holds results of another evaluation (it differs in: {', '.join(differ)}); "
                             f"use another --out, or --restart to discard them")
        if not resume:
            for name in (RECORDS_FILE,):
                if os.path.exists(os.path.join(out_dir, name)):
                    os.remove(os.path.join(out_dir, name))
            clear_examples(out_dir)
        if old != config or not resume:
            jobs.atomic_write(config_path, (json.dumps(config, indent=1, sort_keys=True) + "\n").encode())
        damaged: list[int] = []
        self.records = {(int(r["i"]), r["run"]): r for r in read_records(self.path, damaged)}
        if damaged:
            log.warning("chipjax: %d damaged record(s) in %s (line %s) are ignored and computed again", len(damaged),
                        self.path, ", ".join(map(str, damaged[:5])) + (", ..." if len(damaged) > 5 else ""))
        self.damaged = damaged
        self.on_disk = len(self.records)
        self.buffer: list[dict] = []
        self.digests: Sequence[str] | None = None  # per-sample content hashes; records of other content are stale

    def current(self, i: int, run_key: str) -> dict | None:
        """The record of (image ``i``, run), if it was computed from the sample as it is now."""
        rec = self.records.get((int(i), run_key))
        if rec is None or (self.digests is not None and (i >= len(self.digests)
                                                         or rec.get("sample") != self.digests[i])):
            return None
        return rec

    def done(self, indices: Iterable[int], run: Run) -> bool:
        return all(self.current(i, run.key) is not None for i in indices)

    def add(self, records: Sequence[dict]) -> None:
        for rec in records:
            key = (int(rec["i"]), rec["run"])
            if self.current(*key) is None:
                self.records[key] = rec
                self.buffer.append(rec)
        if len(self.buffer) >= self.every:
            self.flush()

    def flush(self) -> None:
        """Append the buffer to the JSONL file and ``fsync`` it."""
        if not self.buffer:
            return
        text = "".join(json.dumps(dict(r, crc=record_checksum(r)), sort_keys=True) + "\n"
                       for r in self.buffer).encode()
        with open(self.path, "ab+") as f:
            f.seek(0, os.SEEK_END)
            if f.tell():
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a line cut short by a crash: end it, so it is skipped alone
                    text = b"\n" + text
            f.seek(0, os.SEEK_END)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        self.on_disk += len(self.buffer)
        self.buffer = []


def read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except ValueError:
        return {"unreadable": True}


def clear_examples(out_dir: str) -> None:
    folder = os.path.join(out_dir, EXAMPLES_DIR)
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.endswith(".npy"):
                os.remove(os.path.join(folder, name))


def example_path(out_dir: str, index: int, run: Run) -> str:
    slug = "".join(c if c.isalnum() or c in "-." else "_" for c in run.key)
    return os.path.join(out_dir, EXAMPLES_DIR, f"{index:05d}_{slug}.npy")


def save_example(path: str, heatmap: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.rint(np.clip(heatmap, 0.0, 1.0) * 255).astype(np.uint8))
    jobs.atomic_write(path, buffer.getvalue())


@contextlib.contextmanager
def flush_on_exit(store: RecordStore):
    """Turn SIGINT/SIGTERM into KeyboardInterrupt while the body runs (:class:`chipjax.jobs.StopSignals`), and
    flush the store however it ends."""
    with jobs.StopSignals(interrupt=True):
        try:
            yield
        finally:
            store.flush()
