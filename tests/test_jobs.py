"""chipjax.jobs: the signal guard, the atomic writer and the config fingerprint every resumable job uses."""
from __future__ import annotations

import hashlib
import json
import os
import signal

import pytest

from chipjax import jobs


def test_stop_signals_records_the_signal_and_restores_the_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with jobs.StopSignals() as stop:
        assert stop.signal is None
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to this (main) thread before kill returns
        assert stop.signal == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_stop_signals_can_interrupt_the_body():
    before = signal.getsignal(signal.SIGINT)
    reached = []
    with pytest.raises(KeyboardInterrupt, match="signal"):
        with jobs.StopSignals(interrupt=True):
            os.kill(os.getpid(), signal.SIGINT)
            reached.append(True)
    assert not reached and signal.getsignal(signal.SIGINT) is before


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "table.md"
    path.write_bytes(b"old")
    jobs.atomic_write(path, b"new")
    assert path.read_bytes() == b"new"
    jobs.atomic_write(str(path), lambda f: f.write(b"from a writer"))
    assert path.read_bytes() == b"from a writer"
    assert sorted(os.listdir(tmp_path)) == ["table.md"]


def test_a_failed_atomic_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "figure.png"
    path.write_bytes(b"complete")

    def half_written(f):
        f.write(b"half")
        raise RuntimeError("the renderer failed")

    with pytest.raises(RuntimeError, match="renderer"):
        jobs.atomic_write(path, half_written)
    assert path.read_bytes() == b"complete" and sorted(os.listdir(tmp_path)) == ["figure.png"]


def test_fingerprint_is_sha256_of_sorted_json_or_of_the_text():
    config = {"layer": "head", "num_masks": 64, "data": "composites"}
    want = hashlib.sha256(json.dumps(dict(sorted(config.items())), sort_keys=True).encode()).hexdigest()
    assert jobs.fingerprint(config, digits=None) == want
    assert jobs.fingerprint(dict(reversed(list(config.items())))) == want[:16]  # key order does not matter
    assert jobs.fingerprint("photos\n", digits=10) == hashlib.sha256(b"photos\n").hexdigest()[:10]
    assert jobs.fingerprint({**config, "num_masks": 65}) != want[:16]
