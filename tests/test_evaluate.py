"""Tests of chipjax.evaluate: box mapping, records, tables, resuming after SIGKILL, and two real-model checks
(coffee: CHIP's peak in the cup; two-object composites: each class's CHIP map peaks on its own object)."""
from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from chipjax import evaluate as E
from chipjax import metrics as M
from chipjax.data import Sample
from chipjax.errors import InputError
from chipjax.models import preprocess as pp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def lite0():
    from chipjax.models import load_model

    return load_model("efficientnet_lite0")


@pytest.fixture(scope="module")
def lite0_small(lite0):
    """EfficientNet-Lite0's real weights seeing a 64 px stretch of each photo (cheap in-process runs)."""
    from chipjax.models.base import Model

    spec = dataclasses.replace(lite0.spec, input_size=64, view=pp.stretch_view(64))
    return Model(spec, lite0.variables, "pretrained@64px")


def _samples(n=3):
    from chipjax import evalsets

    return evalsets.composite_set(n, seed=0)


# --- boxes in the network's view -------------------------------------------------------------------


@pytest.mark.parametrize("hw", [(480, 640), (512, 300), (224, 224)])
def test_stretch_view_boxes_scale_like_resize_boxes(hw):
    boxes = np.array([[10, 20, 200, 150], [0, 0, hw[1], hw[0]]], np.float64)
    got = E.boxes_in_view(boxes, hw, pp.stretch_view(224))
    np.testing.assert_allclose(got, M.resize_boxes(boxes, hw, (224, 224)), atol=1e-9)


def test_resize_crop_view_boxes_follow_the_centre_crop():
    # 480x640 photo: shorter side to 256 -> 256x341, centre crop 224 -> rows 16..240, columns 58..282
    view = pp.resize_crop_view(224, 256)
    boxes = np.array([[0, 0, 640, 480], [300, 0, 340, 30], [0, 0, 20, 20]], np.float64)
    got = E.boxes_in_view(boxes, (480, 640), view)
    s = 256 / 480
    left = round((341 - 224) / 2)
    np.testing.assert_allclose(got[0], [0, 0, 224, 224])
    np.testing.assert_allclose(got[1], [300 * 341 / 640 - left, 0, 340 * 341 / 640 - left, 30 * s - 16])
    assert got[2][2] == got[2][0] == 0  # cropped away: zero area


@pytest.mark.parametrize("view", [pp.stretch_view(224), pp.resize_crop_view(224, 256), pp.resize_crop_view(96, 128)])
@pytest.mark.parametrize("hw", [(480, 640), (600, 400)])
def test_probe_of_an_unknown_view_agrees_with_the_exact_transform(view, hw):
    wrapped = lambda rgb: view(rgb)  # noqa: E731  (not recognisable: measured by the probe)
    exact = E._known_view_transform(view, *hw)
    probed = E.view_box_transform(wrapped, hw)
    assert probed[2] == exact[2]
    box = np.array([0.3 * hw[1], 0.4 * hw[0], 0.8 * hw[1], 0.9 * hw[0]])
    moved = lambda t: box * np.tile(t[0], 2) + np.tile(t[1], 2)  # noqa: E731
    np.testing.assert_allclose(moved(probed), moved(exact), atol=0.25)  # within a quarter pixel


# --- runs, options, records ----------------------------------------------------------------------------


def test_parse_runs_crosses_methods_and_layers(lite0):
    runs = E.parse_runs("chip,gradcam,refined-chip,rise,cam@head", "head,blocks.15.expand", lite0)
    keys = [r.key for r in runs]
    assert keys == ["chip@head", "chip@blocks.15.expand", "gradcam@head", "gradcam@blocks.15.expand",
                    "refined-chip@blocks.11.expand+blocks.15.expand+head", "rise@input", "cam@head"]
    assert [r.key for r in E.parse_runs(keys, None, lite0)] == keys  # keys parse back to themselves
    with pytest.raises(InputError, match="unknown method"):
        E.parse_runs("lime", None, lite0)
    with pytest.raises(Exception, match="Valid layers"):
        E.parse_runs("chip@nope", None, lite0)


def test_read_records_skips_a_line_cut_short(tmp_path):
    path = tmp_path / "records.jsonl"
    good = [{"i": 0, "run": "a"}, {"i": 1, "run": "a"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in good) + '{"i": 2, "ru')
    assert E.read_records(str(path)) == good
    store = E.RecordStore(str(tmp_path), {"x": 1}, resume=True, every=1)
    store.add([{"i": 2, "run": "a"}])  # appended on a fresh line after the fragment
    assert [r["i"] for r in E.read_records(str(path))] == [0, 1, 2]


def test_summarize_hand_made_records():
    runs = [E.Run("chip", ("head",))]
    recs = [
        {"i": 0, "run": "chip@head", "pointing": True, "box_ok": True, "top1_ok": True, "top5_ok": True,
         "box_ok_at": "1" * 50 + "0" * 50, "deletion_auc": 0.1, "insertion_auc": 0.9},
        {"i": 1, "run": "chip@head", "pointing": False, "box_ok": True, "top1_ok": False, "top5_ok": True,
         "box_ok_at": "0" * 30 + "1" * 70, "deletion_auc": 0.3, "insertion_auc": 0.5},
        {"i": 2, "run": "chip@head", "pointing": None, "box_ok": None, "top1_ok": True, "top5_ok": True,
         "box_ok_at": None, "deletion_auc": 0.2, "insertion_auc": 0.7},
    ]
    summary, cls = E.summarize(recs, runs, E.DEFAULT_METRICS)
    row = summary["chip@head"]
    assert row["pointing"] == 0.5 and row["box_acc"] == 1.0
    assert row["max_box_acc"] == 1.0 and row["max_box_threshold"] == pytest.approx(0.30)
    assert row["top1_loc_err"] == 0.5  # image 1: box right, class wrong
    assert row["deletion_auc"] == pytest.approx(0.2) and row["insertion_auc"] == pytest.approx(0.7)
    assert cls["top1_err"] == pytest.approx(1 / 3) and cls["top5_err"] == 0.0
    table = E.results_table(summary, E.DEFAULT_METRICS, E.Settings())
    assert "| chip@head | 3 | 0.500 | 1.000 | 1.000 (0.30) | 0.500 | 0.200 | 0.700 |" in table


# --- in-process evaluation (64 px) -------------------------------------------------------------------


def test_evaluate_writes_table_csv_plots_and_rows_per_method(lite0_small, tmp_path):
    out = tmp_path / "ev"
    methods = "chip@head,gradcam@head,cam@head,rise"
    options = {"chip": {"num_masks": 64}, "rise": {"num_masks": 64}}
    settings = E.Settings(batch_size=2, deletion_steps=3, num_examples=2)
    res = E.evaluate(lite0_small, _samples(3), methods, None, "all", options, str(out), progress=False,
                     checkpoint_every=2, settings=settings)
    keys = ["chip@head", "gradcam@head", "cam@head", "rise@input"]
    assert list(res["summary"]) == keys
    for name in ("results.md", "results.csv", "records.jsonl", "run.json", "deletion.png", "insertion.png",
                 "examples.png", "timing.csv"):
        assert (out / name).is_file(), name
    md = (out / "results.md").read_text()
    for key in keys:
        assert f"| {key} | 3 |" in md
    assert "sanity r" in md and "MaxBoxAcc" in md
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].startswith("run,method,layer,images,pointing,box_acc,max_box_acc")
    assert [r.split(",")[0] for r in rows[1:]] == keys
    records = E.read_records(str(out / "records.jsonl"))
    assert len(records) == 12 and all(0.0 <= r["deletion_auc"] <= 1.0 for r in records)
    # Grad-CAM equals CAM at the head (GAP + linear tail): same maps, same metrics
    assert res["summary"]["gradcam@head"] == pytest.approx(res["summary"]["cam@head"])
    # a second call finds everything done and writes the same table
    again = E.evaluate(lite0_small, _samples(3), methods, None, "all", options, str(out), progress=False,
                       settings=settings)
    assert again["computed"] == 0 and (out / "results.md").read_text() == md
    # other settings in the same folder are refused, unless restarted
    with pytest.raises(InputError, match="another evaluation"):
        E.evaluate(lite0_small, _samples(3), "gradcam@head", None, None, None, str(out), progress=False,
                   settings=settings)


def test_interrupted_evaluation_keeps_finished_records_and_resumes(lite0_small, tmp_path, monkeypatch):
    settings = E.Settings(batch_size=1, deletion_steps=3, num_examples=0)
    kwargs = dict(methods="gradcam@head,gradcam++@head", layers=None, metrics="pointing,box_acc,deletion",
                  options=None, progress=False, checkpoint_every=2, settings=settings)
    full = E.evaluate(lite0_small, _samples(3), out_dir=str(tmp_path / "a"), **kwargs)
    real = E._unit_records
    calls = {"n": 0}

    def failing(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("simulated Ctrl-C")
        return real(*args, **kw)

    monkeypatch.setattr(E, "_unit_records", failing)
    with pytest.raises(KeyboardInterrupt):
        E.evaluate(lite0_small, _samples(3), out_dir=str(tmp_path / "b"), **kwargs)
    assert len(E.read_records(str(tmp_path / "b" / "records.jsonl"))) == 3  # flushed on the way out
    monkeypatch.setattr(E, "_unit_records", real)
    resumed = E.evaluate(lite0_small, _samples(3), out_dir=str(tmp_path / "b"), **kwargs)
    assert resumed["computed"] == 3
    assert (tmp_path / "a" / "results.md").read_text() == (tmp_path / "b" / "results.md").read_text()
    assert full["summary"] == resumed["summary"]


# --- `python -m chipjax.evaluate` in subprocesses: reproduction and SIGKILL-resume ---------------------

CLI_ARGS = ["--data", "composites", "--num-images", "3", "--methods", "chip@head,gradcam@head,gradcam++@head",
            "--masks", "64", "--metrics", "pointing,box_acc,max_box_acc,top1_loc,deletion", "--steps", "3",
            "--batch-size", "1", "--examples", "0", "--checkpoint-every", "2", "-q", "-v"]


def _cli_env(cache_dir):
    env = dict(os.environ)
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)  # later subprocesses reuse the compiled programs
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run_cli(out, env, timeout=300):
    return subprocess.run([sys.executable, "-m", "chipjax.evaluate", *CLI_ARGS, "--out", str(out)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)


def _done_lines(stderr: str) -> int:
    return sum(1 for line in stderr.splitlines() if line.startswith("chipjax: done "))


@pytest.mark.slow
def test_cli_reproduces_its_table_and_resumes_after_sigkill(tmp_path):
    env = _cli_env(tmp_path / "jax-cache")
    first = _run_cli(tmp_path / "full", env)
    assert first.returncode == 0, first.stderr
    table = (tmp_path / "full" / "results.md").read_text()
    assert "| chip@head | 3 |" in table and "| gradcam++@head | 3 |" in table
    total = _done_lines(first.stderr)
    assert total == 9

    # the same command again, from scratch elsewhere: the same table
    killed_out = tmp_path / "killed"
    log_path = tmp_path / "killed.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "chipjax.evaluate", *CLI_ARGS, "--out", str(killed_out)],
                                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log)
        records = killed_out / "records.jsonl"
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if records.is_file() and records.stat().st_size > 0:
                break
            time.sleep(0.05)
        time.sleep(random.uniform(0.0, 1.5))  # a random point after some records are on disk
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    before = _done_lines(log_path.read_text())
    on_disk = len(E.read_records(str(records)))
    assert 2 <= on_disk <= 9
    assert before - on_disk <= 2  # at most one checkpoint interval (2 records) was lost

    resumed = _run_cli(killed_out, env)
    assert resumed.returncode == 0, resumed.stderr
    assert _done_lines(resumed.stderr) == total - on_disk  # only the missing units ran again
    assert (killed_out / "results.md").read_text() == table
    assert (killed_out / "results.csv").read_text() == (tmp_path / "full" / "results.csv").read_text()


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "chipjax.evaluate", "--data", "nowhere-such", "--out",
                           str(tmp_path / "x")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("chipjax: error: unknown data") and "Traceback" not in proc.stderr


# --- real EfficientNet-Lite0: CHIP finds the cup, and each class its own object -------------------------


def test_chip_peak_falls_inside_the_coffee_cup(lite0):
    import chipjax as cj
    from chipjax import evalsets

    coffee = next(s for s in evalsets.photo_set() if s.name.startswith("coffee"))
    assert coffee.label == 967  # espresso
    x = lite0.preprocess(coffee.image)
    maps = np.asarray(cj.explain(lite0, x, method="chip", layer="head", target=967, num_masks=1024))
    boxes = E.boxes_in_view(coffee.boxes, coffee.image.shape[:2], lite0.spec.view)
    assert M.pointing_game(maps, [boxes], tolerance=0)[0]


def test_each_class_map_peaks_on_its_own_object(lite0):
    import chipjax as cj
    from chipjax import evalsets

    samples = evalsets.two_object_composites(4, seed=0)  # 4 canvases, 2 classes each
    x = np.concatenate([np.asarray(lite0.preprocess(s.image)) for s in samples])
    maps = np.asarray(cj.explain(lite0, x, method="chip", layer="head", target=[s.label for s in samples],
                                 num_masks=1024))
    own = M.pointing_game(maps, [s.boxes for s in samples], tolerance=0)
    other = M.pointing_game(maps, [samples[i ^ 1].boxes for i in range(len(samples))], tolerance=0)
    assert own.mean() >= 0.75 and other.mean() <= 0.25, (own, other)
