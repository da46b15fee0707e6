"""chipjax.eval.runner: in-process evaluations (64 px) of real EfficientNet-Lite0 weights: tables, CSV, plots,
the metrics equal to chipjax.metrics on the same maps, tuning, sanity checks, interruption and resume,
class-level CHIP runs; and two real-model checks (coffee: CHIP's peak in the cup; two-object composites: each
class's CHIP map peaks on its own object)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import chipjax.eval as E
from chipjax import data as D
from chipjax import metrics as M
from chipjax.eval import runner
from chipjax.errors import InputError
from chipjax.models import preprocess as pp


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
    source = D.EvalSource(samples, "2 composites", evalsets.acceptable_labels, boxes_are_masks=True)
    assert D.load_source("composites", num_images=1).boxes_are_masks and not D.load_source("photos").boxes_are_masks
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
    boxes = [pp.boxes_in_view(s.boxes, s.image.shape[:2], lite0_small.spec.view) for s in samples]
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



def test_tune_on_a_separate_split(lite0_small, tmp_path):
    from chipjax import evalsets

    test_split = D.EvalSource(_samples(2), "2 composites (seed 0)", evalsets.acceptable_labels)
    tune_split = D.EvalSource(evalsets.composite_set(2, seed=1), "2 composites (seed 1)", evalsets.acceptable_labels)
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
    E.evaluate(lite0_small, _samples(2), "gradcam@head", None, "sanity_layers", None, str(tmp_path),
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
    real = runner._unit_records
    calls = {"n": 0}

    def failing(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("simulated Ctrl-C")
        return real(*args, **kw)

    monkeypatch.setattr(runner, "_unit_records", failing)
    with pytest.raises(KeyboardInterrupt):
        E.evaluate(lite0_small, _samples(3), out_dir=str(tmp_path / "b"), **kwargs)
    assert len(E.read_records(str(tmp_path / "b" / "records.jsonl"))) == 3  # flushed on the way out
    monkeypatch.setattr(runner, "_unit_records", real)
    resumed = E.evaluate(lite0_small, _samples(3), out_dir=str(tmp_path / "b"), **kwargs)
    assert resumed["computed"] == 3
    assert (tmp_path / "a" / "results.md").read_text() == (tmp_path / "b" / "results.md").read_text()
    assert full["summary"] == resumed["summary"]




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
    boxes = [pp.boxes_in_view(s.boxes, s.image.shape[:2], lite0.spec.view) for s in samples]
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

