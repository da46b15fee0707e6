"""Class-level fits over folders: resumable after SIGKILL, same model as an uninterrupted run."""
import os
import random
import re
import signal
import subprocess
import sys

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


# --- in-process fits with a toy linear model (fast): bad images and resume ------------------------------------
K_TOY, C_TOY = 6, 5


class ToyModel:
    """preprocess: 4×4 box-averaged RGB projected to 6 channels; tap = identity head, linear tail (6 -> 5 logits)."""

    name, weights, layers = "toy", "planted", ["features"]
    P = np.random.default_rng(0).uniform(0, 1, (3, K_TOY)).astype(np.float32)
    V = np.random.default_rng(1).normal(size=(K_TOY, C_TOY)).astype(np.float32)

    def preprocess(self, image):
        small = np.asarray(Image.fromarray(np.asarray(image)).resize((4, 4), Image.BOX), np.float32) / 255.0
        return (small @ self.P)[None]

    def tap(self, layer=None):
        import jax.numpy as jnp

        from chipjax.tap import Tap

        return Tap(layer="features", head_fn=lambda v, x: x, tail_fn=lambda v, a: a.mean(axis=(1, 2)) @ v["V"],
                   variables={"V": jnp.asarray(self.V)})


def toy_folder(root, corrupt=()):
    rng = np.random.default_rng(7)
    for i in range(12):
        os.makedirs(root / str(i % 3), exist_ok=True)
        path = root / str(i % 3) / f"{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(path)
        if i in corrupt:
            path.write_bytes(b"\x89PNG broken")
    return root


TOY_FIT = dict(layer=None, batch_size=2, num_masks=64, score="logit", lam_ratio=0.05, progress=False, chunk_size=64)


def test_unreadable_images_are_skipped_listed_and_leave_the_rest_of_the_fit_exact(tmp_path):
    from chipjax import pipeline
    from chipjax.data import folder_source
    from chipjax.fit import fit_folder, fit_source

    bad_root = toy_folder(tmp_path / "bad", corrupt=(4, 9))
    report = pipeline.LoadReport()
    cm = fit_folder(ToyModel(), str(bad_root), report=report, **TOY_FIT)
    assert cm.num_images == 10 and report.loaded == 10
    assert [s.name for s in report.skipped] == [str(bad_root / "0" / "09.png"), str(bad_root / "1" / "04.png")]
    # the same fit on the readable images only (the two broken files removed)
    clean = toy_folder(tmp_path / "clean")
    os.remove(clean / "1" / "04.png"), os.remove(clean / "0" / "09.png")
    ref = fit_source(ToyModel(), folder_source(clean), **TOY_FIT)
    np.testing.assert_allclose(np.asarray(cm.weights), np.asarray(ref.weights), rtol=1e-5, atol=1e-7)
    assert cm.fitted_classes.tolist() == [True, True, True, False, False]


def test_interrupted_fit_resumes_to_the_same_model_and_keeps_the_skipped_list(tmp_path):
    from chipjax.data import Source, folder_source
    from chipjax.fit import Interrupted, fit_source

    source = folder_source(toy_folder(tmp_path / "d", corrupt=(2,)))

    def interrupting(i):
        if i == 6:
            os.kill(os.getpid(), signal.SIGINT)  # as a user's Ctrl-C mid-run
        return source[i]

    ckpt = str(tmp_path / "ckpt")
    flaky = Source(len(source), interrupting, source.description, name_of=source.name_of, digest=source.digest)
    with pytest.raises(Interrupted):
        fit_source(ToyModel(), flaky, num_workers=0, checkpoint_dir=ckpt, checkpoint_every=100, **TOY_FIT)
    resumed = fit_source(ToyModel(), source, checkpoint_dir=ckpt, **TOY_FIT)
    whole = fit_source(ToyModel(), source, **TOY_FIT)
    np.testing.assert_allclose(np.asarray(resumed.weights), np.asarray(whole.weights), rtol=1e-5, atol=1e-7)
    assert resumed.num_images == whole.num_images == 11
    # the broken image (source index 8: class folder 2, first file) is reported once, whichever side of the stop
    assert [s.index for s in resumed.fit_report["loader"].skipped] == [8]
    assert resumed.fit_report["loader"].loaded == 11


def test_spread_keeps_every_class_of_a_class_sorted_folder():
    from chipjax.data import Source
    from chipjax.fit import spread

    src = Source(12, lambda i: i // 4, "sorted by class", name_of=lambda i: f"f{i}")  # 3 classes × 4
    part = spread(src, 3)
    assert [part[i] for i in range(3)] == [0, 1, 2] and part.name_of(1) == "f4"
    assert len(spread(src, 50)) == 12
    with pytest.raises(Exception, match="at least 1"):
        spread(src, 0)
