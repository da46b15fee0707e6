"""Tests of chipjax.evaluate: box mapping, records, tables, resuming after SIGKILL, and two real-model checks
(coffee: CHIP's peak in the cup; two-object composites: each class's CHIP map peaks on its own object)."""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from chipjax import metrics as M
from chipjax.errors import InputError
from chipjax.models import preprocess as pp

# the module (``chipjax.evaluate`` is also a lazy alias of the function on the package)
E = importlib.import_module("chipjax.evaluate")
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


def test_load_source_names_and_folders(tmp_path):
    from PIL import Image

    from chipjax import evalsets

    photos = E.load_source("photos")
    assert len(photos.samples) == len(evalsets.photo_set()) and photos.accept is evalsets.acceptable_labels
    assert [s.name for s in E.load_source("composites", num_images=3).samples] == [s.name for s in _samples(3)]
    two = E.load_source("two-object", num_images=3).samples
    assert len(two) == 3 and np.array_equal(two[0].image, two[1].image)
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / name)
    (tmp_path / "boxes.json").write_text(json.dumps({"images": [
        {"file": "a.png", "label": 967, "boxes": [[1, 2, 10, 12]]}, {"file": "b.png", "label": "tabby"}]}))
    folder = E.load_source(str(tmp_path), num_images=1)
    assert len(folder.samples) == 1 and folder.samples[0].label == 967 and folder.accept(967) == (967,)
    with pytest.raises(InputError, match="unknown data"):
        E.load_source(str(tmp_path / "missing"))
    with pytest.raises(InputError, match="--boxes"):
        E.load_source("ilsvrc:" + str(tmp_path))


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
    first = ("pointing", "box_acc", "max_box_acc", "top1_loc", "deletion", "insertion")
    summary, cls = E.summarize(recs, runs, first, bootstrap=0)
    row = summary["chip@head"]
    assert row["pointing"] == 0.5 and row["box_acc"] == 1.0
    assert row["max_box_acc"] == 1.0 and row["max_box_threshold"] == pytest.approx(0.30)
    assert row["top1_loc_err"] == 0.5  # image 1: box right, class wrong
    assert row["deletion_auc"] == pytest.approx(0.2) and row["insertion_auc"] == pytest.approx(0.7)
    assert cls["top1_err"] == pytest.approx(1 / 3) and cls["top5_err"] == 0.0
    table = E.results_table(summary, first, E.Settings())
    assert "| chip@head | 3 | 0.500 | 1.000 | 1.000 (0.30) | 0.500 | 0.200 | 0.700 |" in table
    assert "deletion AUC ↓ (RISE protocol)" in table
    assert "(chipjax v1 protocol)" in E.results_table(summary, first, E.Settings(deletion_protocol="chipjax"))


def test_summarize_new_metrics_and_intervals_hand_made():
    from chipjax import metrics as M

    runs = [E.Run("gradcam", ("head",))]
    t = len(E.MAX_BOX_THRESHOLDS)
    v2 = [["1" * 40 + "0" * 60, "1" * 20 + "0" * 80, "0" * t],   # IoU 0.3, 0.5, 0.7 bits of image 0
          ["0" * 10 + "1" * 90, "0" * 10 + "1" * 90, "0" * 50 + "1" * 50]]
    hist0 = [[0, 0, 10], [500, 3, 1], [1000, 2, 0]]  # [bin, object, background]
    hist1 = [[0, 1, 5], [1000, 4, 2]]
    recs = [{"i": 0, "run": "gradcam@head", "box_v2_ok_at": v2[0], "pxap_hist": hist0, "avg_drop": 0.5,
             "conf_increase": False, "pointing": True},
            {"i": 1, "run": "gradcam@head", "box_v2_ok_at": v2[1], "pxap_hist": hist1, "avg_drop": 0.1,
             "conf_increase": True, "pointing": True}]
    metrics = ("pointing", "max_box_acc_v2", "pxap", "confidence")
    row = E.summarize(recs, runs, metrics, bootstrap=200)[0]["gradcam@head"]
    # IoU 0.3: thresholds 10..39 both right -> 1; IoU 0.5: 10..19 -> 1; IoU 0.7: image 1 alone -> 0.5
    assert row["max_box_acc_v2"] == pytest.approx((1 + 1 + 0.5) / 3)
    # PxAP of the pooled histogram: from the top, bin 1000: 6 object / 2 background; bin 500: 3 / 1; bin 0: 1 / 15
    p1, r1 = 6 / 8, 6 / 10
    p2, r2 = 9 / 12, 9 / 10
    p3, r3 = 10 / 28, 1.0
    assert row["pxap"] == pytest.approx(p1 * r1 + p2 * (r2 - r1) + p3 * (r3 - r2))
    assert row["avg_drop"] == pytest.approx(0.3) and row["conf_increase"] == 0.5
    # intervals: a constant per-image value has a zero-width interval; others bracket the value
    assert row["pointing_ci"] == (1.0, 1.0)
    lo, hi = row["avg_drop_ci"]
    assert lo == pytest.approx(0.1) and hi == pytest.approx(0.5)  # two images: resamples are 0.1, 0.3 or 0.5
    for name in ("max_box_acc_v2", "pxap"):
        assert row[f"{name}_ci"][0] <= row[name] + 1e-12 and row[f"{name}_ci"][1] >= row[name] - 1e-12
    # deterministic, and the same as bootstrap_interval on the per-image values
    again = E.summarize(recs, runs, metrics, bootstrap=200)[0]["gradcam@head"]
    assert again == row
    assert row["avg_drop_ci"] == M.bootstrap_interval(np.array([0.5, 0.1]), n_resamples=200, seed=0)
    table = E.results_table({"gradcam@head": row}, metrics, E.Settings())
    assert "MaxBoxAccV2 ↑" in table and "PxAP ↑" in table and "0.300 [0.10, 0.50]" in table
    csv_head = E._csv_text({"gradcam@head": row}).splitlines()[0]
    assert "avg_drop_ci_low,avg_drop_ci_high" in csv_head


# --- in-process evaluation (64 px) -------------------------------------------------------------------


def test_evaluate_writes_table_csv_plots_and_rows_per_method(lite0_small, tmp_path):
    out = tmp_path / "ev"
    methods = "chip@head,gradcam@head,cam@head"
    options = {"chip": {"num_masks": 64}}
    settings = E.Settings(batch_size=2, deletion_steps=3, num_examples=2)
    res = E.evaluate(lite0_small, _samples(2), methods, None, None, options, str(out), progress=False,
                     checkpoint_every=2, settings=settings)
    keys = ["chip@head", "gradcam@head", "cam@head"]
    assert list(res["summary"]) == keys
    for name in ("results.md", "results.csv", "records.jsonl", "run.json", "deletion.png", "insertion.png",
                 "examples.png", "timing.csv"):
        assert (out / name).is_file(), name
    md = (out / "results.md").read_text()
    for key in keys:
        assert f"| {key} | 2 |" in md
    assert "MaxBoxAcc" in md and "sanity" not in md
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].startswith("run,method,layer,images,pointing,box_acc,max_box_acc,max_box_threshold,top1_loc_err,"
                              "deletion_auc,insertion_auc,max_box_acc_v2,pxap,avg_drop,conf_increase,pointing_ci_low,")
    assert [r.split(",")[0] for r in rows[1:]] == keys
    records = E.read_records(str(out / "records.jsonl"))
    assert len(records) == 6 and all(0.0 <= r["deletion_auc"] <= 1.0 for r in records)
    # Grad-CAM equals CAM at the head (GAP + linear tail): same maps, same metrics
    flat = {k: (np.asarray(v, float) if isinstance(v, tuple) else v) for k, v in res["summary"]["cam@head"].items()}
    assert res["summary"]["gradcam@head"].keys() == flat.keys()
    for k, v in res["summary"]["gradcam@head"].items():
        np.testing.assert_allclose(np.asarray(v, float) if v is not None else np.nan,
                                   flat[k] if flat[k] is not None else np.nan, rtol=1e-6, err_msg=k)
    # a second call finds everything done and writes the same table
    again = E.evaluate(lite0_small, _samples(2), methods, None, None, options, str(out), progress=False,
                       settings=settings)
    assert again["computed"] == 0 and (out / "results.md").read_text() == md
    # other settings in the same folder are refused, unless restarted
    with pytest.raises(InputError, match="another evaluation"):
        E.evaluate(lite0_small, _samples(2), "gradcam@head", None, None, None, str(out), progress=False,
                   settings=settings)
    fresh = E.evaluate(lite0_small, _samples(2), "gradcam@head", None, "pointing", None, str(out), resume=False,
                       progress=False, settings=settings)
    assert fresh["computed"] == 2 and len(E.read_records(str(out / "records.jsonl"))) == 2


def test_new_metrics_in_evaluate_equal_the_metric_functions_on_the_same_maps(lite0_small, tmp_path):
    from chipjax import evalsets
    from chipjax.methods import explain

    samples = _samples(2)
    source = E.EvalSource(samples, "2 composites", evalsets.acceptable_labels, boxes_are_masks=True)
    assert E.load_source("composites", num_images=1).boxes_are_masks and not E.load_source("photos").boxes_are_masks
    metrics = "max_box_acc_v2,pxap,confidence,road,deletion"
    settings = E.Settings(batch_size=2, deletion_steps=5, num_examples=0, bootstrap=50)
    res = E.evaluate(lite0_small, source, "gradcam@head", None, metrics, None, str(tmp_path), progress=False,
                     settings=settings)
    row = res["summary"]["gradcam@head"]
    # the same maps, computed here, scored by chipjax.metrics directly
    views = [lite0_small.view(s.image) for s in samples]
    x = np.concatenate([lite0_small.spec.normalize(v)[None] for v in views]).astype(np.float32)
    labels = [int(s.label) for s in samples]
    maps = np.asarray(explain(lite0_small, x, method="gradcam", layer="head", target=labels), np.float64)
    boxes = [E.boxes_in_view(s.boxes, s.image.shape[:2], lite0_small.spec.view) for s in samples]
    masks = np.stack([M.boxes_to_mask(b, v.shape[:2]) for b, v in zip(boxes, views)])
    assert row["max_box_acc_v2"] == pytest.approx(M.max_box_acc_v2(maps, boxes)["max_box_acc_v2"])
    assert row["pxap"] == pytest.approx(M.pxap(maps, masks)["pxap"], abs=1e-6)
    scorer = E.softmax_scorer(lite0_small)
    cc = M.confidence_change(scorer, x, maps, labels)
    assert row["avg_drop"] == pytest.approx(cc["drop"].mean(), abs=1e-5)
    rd = M.road(scorer, x, maps, labels, seed=0)
    assert row["road_combined"] == pytest.approx(rd["combined"].mean(), abs=1e-5)
    di = M.deletion_insertion(scorer, x, maps, labels, steps=5, protocol="rise")
    assert row["deletion_auc"] == pytest.approx(di["deletion_auc"].mean(), abs=1e-6)
    for name in ("max_box_acc_v2", "pxap", "avg_drop", "road_combined", "deletion_auc"):
        lo, hi = row[f"{name}_ci"]
        assert lo <= row[name] + 1e-9 and row[name] <= hi + 1e-9, name
    md = (tmp_path / "results.md").read_text()
    assert "ROAD combined ↑" in md and "deletion AUC ↓ (RISE protocol)" in md and "bootstrap" in md


def test_tuned_box_accuracy_hand_made():
    t = len(E.MAX_BOX_THRESHOLDS)
    recs = [{"i": 0, "run": "cam@head", "box_ok_at": "1" * 30 + "0" * (t - 30)},
            {"i": 1, "run": "cam@head", "box_ok_at": "0" * 20 + "1" * (t - 20)},
            {"i": 2, "run": "cam@head", "box_ok_at": "0" * 25 + "1" * (t - 25)}]
    summary = {"cam@head": {"images": 3}}
    E.add_tuned_box_accuracy(summary, recs, {"cam@head": 0.22}, "split B", bootstrap=0)
    row = summary["cam@head"]
    assert row["box_acc_tuned"] == pytest.approx(2 / 3) and row["tuned_threshold"] == 0.22  # images 0 and 1 at 0.22
    E.add_tuned_box_accuracy(summary, recs, {"cam@head": 0.27}, "split B", bootstrap=0)
    assert summary["cam@head"]["box_acc_tuned"] == 1.0


def test_tune_on_a_separate_split(lite0_small, tmp_path):
    from chipjax import evalsets

    test_split = E.EvalSource(_samples(2), "2 composites (seed 0)", evalsets.acceptable_labels)
    tune_split = E.EvalSource(evalsets.composite_set(2, seed=1), "2 composites (seed 1)", evalsets.acceptable_labels)
    settings = E.Settings(batch_size=2, num_examples=0, bootstrap=0)
    res = E.evaluate(lite0_small, test_split, "gradcam@head", None, "pointing", None, str(tmp_path), progress=False,
                     settings=settings, tune_source=tune_split)
    tuned = E.evaluate(lite0_small, tune_split, "gradcam@head", None, "max_box_acc", None, str(tmp_path / "tune"),
                       progress=False, settings=dataclasses.replace(settings, num_examples=0))
    row = res["summary"]["gradcam@head"]
    assert row["tuned_threshold"] == tuned["summary"]["gradcam@head"]["max_box_threshold"]
    bits = [r["box_ok_at"] for r in E.read_records(str(tmp_path / "records.jsonl"))]
    j = int(round(row["tuned_threshold"] * 100))
    assert row["box_acc_tuned"] == pytest.approx(np.mean([b[j] == "1" for b in bits]))
    md = (tmp_path / "results.md").read_text()
    assert "chosen on 2 composites (seed 1)" in md and "box acc @tuned thr" in md
    with pytest.raises(InputError, match="tuning split"):
        E.evaluate(lite0_small, test_split, "gradcam@head", None, "pointing", None, str(tmp_path / "x"),
                   progress=False, settings=settings, tune_source=test_split)


def test_sanity_metric_randomises_only_the_top_units(lite0_small, tmp_path):
    import jax

    rand = E.randomized_model(lite0_small, 2, seed=0)
    for col, tree in lite0_small.variables.items():
        for key, sub in tree.items():
            same = all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(sub),
                                                             jax.tree_util.tree_leaves(rand.variables[col][key])))
            assert same == (key not in ("head", "fc")), (col, key)
    res = E.evaluate(lite0_small, _samples(2), "gradcam@head", None, "pointing,sanity", None, str(tmp_path),
                     progress=False, settings=E.Settings(batch_size=2, num_examples=0))
    r = res["summary"]["gradcam@head"]["sanity_r"]
    assert -1.0 <= r < 0.9  # maps of a half-random network are not those of the trained one


def test_sanity_layers_cascading_and_independent(lite0_small, tmp_path):
    import jax

    from chipjax.methods import explain

    keys = E.parameterised_units(lite0_small)[0][::-1]
    assert keys[:2] == ["fc", "head"]
    # independent randomisation of the 2nd unit from the top changes that unit alone
    one = E.randomized_model(lite0_small, 2, independent=True)
    for col, tree in lite0_small.variables.items():
        for key, sub in tree.items():
            same = all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(sub),
                                                             jax.tree_util.tree_leaves(one.variables[col][key])))
            assert same == (key != keys[1]), (col, key)
    settings = E.Settings(batch_size=2, num_examples=0, sanity_depth=2, bootstrap=0)
    res = E.evaluate(lite0_small, _samples(2), "gradcam@head", None, "sanity_layers", None, str(tmp_path),
                     progress=False, settings=settings)
    recs = E.read_records(str(tmp_path / "records.jsonl"))
    layers = {mode: dict(pairs) for mode, pairs in recs[0]["sanity_layers"].items()}
    assert [u for u, _ in recs[0]["sanity_layers"]["cascading"]] == keys[:2]
    assert [u for u, _ in recs[0]["sanity_layers"]["independent"]] == keys[:2]
    # the top unit alone: cascading and independent randomise the same weights
    assert layers["cascading"]["fc"] == layers["independent"]["fc"]
    # the number against scipy's Spearman on maps made here from the independently randomised model
    samples = _samples(2)
    x = np.concatenate([lite0_small.spec.normalize(lite0_small.view(s.image))[None] for s in samples]).astype(np.float32)
    labels = [int(s.label) for s in samples]
    trained = np.asarray(explain(lite0_small, x, method="gradcam", layer="head", target=labels))
    random = np.asarray(explain(one, x, method="gradcam", layer="head", target=labels))
    for b, rec in enumerate(sorted(recs, key=lambda r: r["i"])):
        want = scipy_spearman(trained[b], random[b])
        assert dict(rec["sanity_layers"]["independent"])[keys[1]][0] == pytest.approx(want, abs=1e-5)
    md = (tmp_path / "results.md").read_text()
    assert "Sanity check by layer" in md and "| gradcam@head | independent |" in md
    csv = (tmp_path / "sanity_layers.csv").read_text().splitlines()
    assert csv[0] == "run,mode,depth,unit,images,spearman,spearman_abs,ssim,hog"
    assert len(csv) == 1 + 2 * 2


def scipy_spearman(a, b):
    import scipy.stats

    r = scipy.stats.spearmanr(np.ravel(a), np.ravel(b))[0]
    return 0.0 if np.isnan(r) else float(r)


def test_sanity_check_separates_trained_from_randomised_for_chip(lite0_small, tmp_path):
    res = E.evaluate(lite0_small, _samples(2), "chip@head", None, "pointing,sanity", {"chip": {"num_masks": 128}},
                     str(tmp_path), progress=False, settings=E.Settings(batch_size=2, num_examples=0))
    r = res["summary"]["chip@head"]["sanity_r"]
    assert -1.0 <= r < 0.9


def test_interrupted_evaluation_keeps_finished_records_and_resumes(lite0_small, tmp_path, monkeypatch):
    settings = E.Settings(batch_size=1, deletion_steps=3, num_examples=0)
    kwargs = dict(methods="gradcam@head,cam@head", layers=None, metrics="pointing,box_acc,deletion",
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

CLI_ARGS = ["--data", "composites", "--num-images", "4", "--methods", "chip@head,gradcam@head", "--masks", "64",
            "--metrics", "pointing,box_acc,max_box_acc,top1_loc,deletion", "--steps", "3", "--batch-size", "1",
            "--examples", "0", "--checkpoint-every", "2", "-q", "-v"]
TOTAL_UNITS = 8  # 4 images x 2 runs, one image per unit


def _cli(out, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "chipjax.evaluate", *CLI_ARGS, "--out", str(out)], cwd=REPO,
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
    kill_after = random.randint(2, TOTAL_UNITS - 2)  # units finished before the kill
    with open(log_path, "w") as log_file:
        proc = _cli(out, env, stderr=log_file)
        deadline = time.time() + 400
        while proc.poll() is None and time.time() < deadline and _done_lines(log_path.read_text()) < kill_after:
            time.sleep(0.02)
        time.sleep(random.uniform(0.0, 0.3))
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
    proc = subprocess.run([sys.executable, "-m", "chipjax.evaluate", "--data", "nowhere-such", "--out",
                           str(tmp_path / "x")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("chipjax: error: unknown data") and "Traceback" not in proc.stderr


# --- real EfficientNet-Lite0: CHIP finds the cup, and each class its own object -------------------------


@pytest.fixture(scope="module")
def coffee_and_pairs(lite0):
    """CHIP maps (head, 1024 masks) of the coffee photo (espresso) and of 8 two-object canvases (16 samples:
    each canvas once per class), explained in one batch so that CHIP compiles once; and the top-5 classes."""
    import chipjax as cj
    from chipjax import evalsets

    coffee = next(s for s in evalsets.photo_set() if s.name.startswith("coffee"))
    samples = [coffee] + evalsets.two_object_composites(8, seed=0)
    x = np.concatenate([np.asarray(lite0.preprocess(s.image)) for s in samples])
    maps = np.asarray(cj.explain(lite0, x, method="chip", layer="head", target=[s.label for s in samples],
                                 num_masks=1024))
    top5 = np.argsort(-np.asarray(lite0(x)), axis=1)[:, :5]
    boxes = [E.boxes_in_view(s.boxes, s.image.shape[:2], lite0.spec.view) for s in samples]
    return samples, maps, boxes, top5


def _distance_to_box(point_xy, box) -> float:
    """Euclidean distance from pixel ``(x, y)`` to the pixels of ``box (4,)`` (x1, y1 exclusive)."""
    x, y = point_xy
    dx = max(box[0] - x, x - (box[2] - 1), 0.0)
    dy = max(box[1] - y, y - (box[3] - 1), 0.0)
    return float(np.hypot(dx, dy))


def test_chip_peak_falls_inside_the_coffee_cup(coffee_and_pairs):
    samples, maps, boxes, _ = coffee_and_pairs
    assert samples[0].label == 967  # espresso; its hand box is the cup
    assert M.pointing_game(maps[:1], boxes[:1], tolerance=0)[0]


def test_each_class_map_peaks_on_its_own_object(coffee_and_pairs):
    """On two-object canvases, the map of each class the network recognises (label in its top 5) peaks
    nearer to that class's object than to the other one (usually inside it). Objects the network does not
    see (a class ranked 400th) have nothing to discriminate and are left out."""
    samples, maps, boxes, top5 = coffee_and_pairs
    nearer, inside = [], []
    for i in range(1, len(samples)):
        partner = i + 1 if i % 2 else i - 1  # samples 2k+1 and 2k+2 share a canvas
        assert np.array_equal(samples[i].image, samples[partner].image)
        if samples[i].label not in top5[i]:
            continue
        y, x = np.unravel_index(np.argmax(maps[i]), maps[i].shape)
        own = _distance_to_box((x, y), boxes[i][0])
        other = _distance_to_box((x, y), boxes[partner][0])
        nearer.append(own < other)
        inside.append(own == 0)
    assert len(nearer) >= 3
    assert all(nearer), nearer
    assert np.mean(inside) >= 0.5, inside


# --- class-level CHIP in the runner (chip-class@LAYER, fitted on disjoint data) -------------------------------
def test_class_level_chip_rows_fit_on_other_data_and_resume_without_refitting(lite0_small, tmp_path):
    from chipjax import evalsets

    evaluated = evalsets.composite_set(4, seed=0)
    fit_on = evalsets.composite_set(16, seed=1)
    labels = {s.label for s in evaluated}
    assert labels <= {s.label for s in fit_on}
    methods = "chip-class@head,gradcam@head"
    options = {"chip-class": {"num_masks": 32, "batch_size": 4}}
    out = tmp_path / "ev"
    res = E.evaluate(lite0_small, evaluated, methods, None, "pointing,box_acc", options, str(out), progress=False,
                     fit_data=fit_on)
    assert set(res["summary"]) == {"chip-class@head", "gradcam@head"} and res["computed"] == 8
    assert res["summary"]["chip-class@head"]["images"] == 4
    assert "chip-class@head" in (out / "results.md").read_text()
    (folder,) = (out / "chip-class").iterdir()
    from chipjax.chip import CHIP

    model = CHIP.load(folder)
    assert model.num_images == 16 and model.layer == "head"
    assert sorted(np.flatnonzero(model.fitted_classes)) == sorted({s.label for s in fit_on})
    # the maps are the saved model's one-forward-pass maps
    rec = [r for r in E.read_records(str(out / "records.jsonl")) if r["run"] == "chip-class@head"]
    assert len(rec) == 4
    again = E.evaluate(lite0_small, evaluated, methods, None, "pointing,box_acc", options, str(out), progress=False,
                       fit_data=fit_on)
    assert again["computed"] == 0 and again["summary"] == res["summary"]
    with pytest.raises(InputError, match="disjoint"):
        E.evaluate(lite0_small, evaluated, "chip-class@head", None, "pointing", options, str(tmp_path / "same"),
                   progress=False, fit_data=evaluated)
    with pytest.raises(InputError, match="--fit-data"):
        E.evaluate(lite0_small, evaluated, "chip-class@head", None, "pointing", options, str(tmp_path / "none"),
                   progress=False)
    with pytest.raises(InputError, match="no images in the fit"):
        E.evaluate(lite0_small, evaluated, "chip-class@head", None, "pointing", options, str(tmp_path / "few"),
                   progress=False, fit_data=[s for s in fit_on if s.label != evaluated[0].label])
