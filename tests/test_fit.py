"""Class-level fits over folders: resumable after SIGKILL, same model as an uninterrupted run."""
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from chipjax.chip import CHIP

FIT = ["--model", "resnet18", "--weights", "none", "--layer", "layer4", "--masks", "1024", "--batch-size", "1",
       "--checkpoint-every", "2", "-v", "-q"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from chipjax import evalsets

    root = tmp_path_factory.mktemp("fitdata")
    for i, s in enumerate(evalsets.composite_set(10, seed=0, size=64)):
        os.makedirs(root / str(s.label), exist_ok=True)
        Image.fromarray(s.image).save(root / str(s.label) / f"{i:03d}.png")
    return root


def run_fit(folder, out, cache=None, **kw):
    env = dict(os.environ, CHIPJAX_CACHE=str(cache)) if cache is not None else None
    return subprocess.Popen([sys.executable, "-m", "chipjax.cli", "fit", str(folder), "--out", str(out), *FIT],
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


def test_fit_killed_with_sigkill_resumes_to_the_same_model(folder, tmp_path):
    whole = run_fit(folder, tmp_path / "whole")
    _, err = whole.communicate(timeout=600)
    assert whole.returncode == 0, err
    reference = CHIP.load(tmp_path / "whole")
    assert reference.num_images == 10

    out = tmp_path / "killed"
    cache = tmp_path / "cache"          # the default progress folder lives here, named by the fit, not by --out
    proc = run_fit(folder, out, cache)
    done_before_kill = 0
    target = random.Random(0).choice([2, 3, 4, 5, 6, 7])  # a random point, after at least one checkpoint
    while True:
        line = proc.stderr.readline()
        assert line, "fit ended before it could be killed"
        m = re.search(r"done (\d+) images", line)
        if m:
            done_before_kill = int(m.group(1))
            if done_before_kill >= target:
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert len(os.listdir(cache / "fit")) == 1 and not out.exists()

    resumed = run_fit(folder, tmp_path / "another_out", cache)  # another --out continues the same work
    out = tmp_path / "another_out"
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    start = int(re.search(r"resuming at image (\d+)", err).group(1))
    assert done_before_kill - 2 <= start <= done_before_kill  # at most one interval (2 batches of 1) redone
    assert os.listdir(cache / "fit") == []
    again = CHIP.load(out)
    assert again.num_images == 10
    np.testing.assert_allclose(np.asarray(again.weights), np.asarray(reference.weights), rtol=1e-4, atol=1e-6)


def test_fit_with_other_settings_refuses_a_foreign_partial(folder, tmp_path):
    from chipjax.cli import main

    from chipjax import io as cjio

    cjio.save_variables({"x": np.zeros(1)}, tmp_path / "m.partial", {"kind": "chip-fit-progress", "fit": {"other": 1}})
    code = main(["fit", str(folder), "--out", str(tmp_path / "m"), "--checkpoint", str(tmp_path / "m.partial"),
                 *FIT[:-2]])
    assert code == 2
