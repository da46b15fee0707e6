"""chipjax.eval.report: summaries, tables and CSV of hand-made records (values worked out by hand)."""
from __future__ import annotations

import numpy as np
import pytest

import chipjax.eval as E
from chipjax import metrics as M
from chipjax.eval import report


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
    t = len(M.MAX_BOX_THRESHOLDS)
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
    csv_head = report._csv_text({"gradcam@head": row}).splitlines()[0]
    assert "avg_drop_ci_low,avg_drop_ci_high" in csv_head



def test_tuned_box_accuracy_hand_made():
    t = len(M.MAX_BOX_THRESHOLDS)
    recs = [{"i": 0, "run": "cam@head", "box_ok_at": "1" * 30 + "0" * (t - 30)},
            {"i": 1, "run": "cam@head", "box_ok_at": "0" * 20 + "1" * (t - 20)},
            {"i": 2, "run": "cam@head", "box_ok_at": "0" * 25 + "1" * (t - 25)}]
    summary = {"cam@head": {"images": 3}}
    E.add_tuned_box_accuracy(summary, recs, {"cam@head": 0.22}, "split B", bootstrap=0)
    row = summary["cam@head"]
    assert row["box_acc_tuned"] == pytest.approx(2 / 3) and row["tuned_threshold"] == 0.22  # images 0 and 1 at 0.22
    E.add_tuned_box_accuracy(summary, recs, {"cam@head": 0.27}, "split B", bootstrap=0)
    assert summary["cam@head"]["box_acc_tuned"] == 1.0

