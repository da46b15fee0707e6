"""The ``chipjax eval`` command in subprocesses: it reproduces its table, resumes after SIGKILL, and a bad input
is one stderr line with exit code 2."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

import chipjax.eval as E

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- `chipjax eval` (python -m chipjax.cli eval) in subprocesses: reproduction and SIGKILL-resume ---------------------

CLI_ARGS = ["--data", "composites", "--num-images", "4", "--methods", "chip@head,gradcam@head", "--masks", "64",
            "--metrics", "pointing,box_acc,max_box_acc,top1_loc,deletion", "--steps", "3", "--batch-size", "1",
            "--examples", "0", "--checkpoint-every", "2", "-q", "-v"]
TOTAL_UNITS = 8  # 4 images x 2 runs, one image per unit


def _cli(out, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "chipjax.cli", "eval", *CLI_ARGS, "--out", str(out)], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, **kw)


def _run_cli(out, env, log_path):
    with open(log_path, "w") as log:
        rc = _cli(out, env, stderr=log).wait(timeout=400)
    return rc, open(log_path).read()


def _done_lines(stderr: str) -> int:
    return sum(1 for line in stderr.splitlines() if line.startswith("chipjax: done "))


@pytest.mark.slow
def test_cli_reproduces_its_table_and_resumes_after_sigkill(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax-cache"))  # later runs reuse the compiled programs
    rc, log = _run_cli(tmp_path / "full", env, tmp_path / "full.log")
    assert rc == 0, log
    table = (tmp_path / "full" / "results.md").read_text()
    assert "| chip@head | 4 |" in table and "| gradcam@head | 4 |" in table
    assert _done_lines(log) == TOTAL_UNITS

    # the same command elsewhere, killed at a random point after some records are on disk
    out, log_path = tmp_path / "killed", tmp_path / "killed.log"
    # units finished before the kill; at most half of them, so that on a fast machine the kill still lands
    # before the last records are written (a unit of 64 masks at head takes well under a second)
    kill_after = random.randint(2, TOTAL_UNITS // 2)
    with open(log_path, "w") as log_file:
        proc = _cli(out, env, stderr=log_file)
        deadline = time.time() + 400
        while proc.poll() is None and time.time() < deadline and _done_lines(log_path.read_text()) < kill_after:
            time.sleep(0.02)
        time.sleep(random.uniform(0.0, 0.05))
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finished = _done_lines(log_path.read_text())
    on_disk = len(E.read_records(str(out / "records.jsonl")))
    assert 2 <= on_disk < TOTAL_UNITS
    assert finished - on_disk <= 2  # at most one checkpoint interval (2 records) is lost

    rc, log = _run_cli(out, env, tmp_path / "resumed.log")
    assert rc == 0, log
    assert _done_lines(log) == TOTAL_UNITS - on_disk  # only the missing units ran
    assert (out / "results.md").read_text() == table
    assert (out / "results.csv").read_text() == (tmp_path / "full" / "results.csv").read_text()


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "chipjax.cli", "eval", "--data", "nowhere-such", "--out",
                           str(tmp_path / "x")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("chipjax: error: unknown data") and "Traceback" not in proc.stderr

