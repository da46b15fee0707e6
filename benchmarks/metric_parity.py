"""Parity of chipjax's metrics with their independent references, on the real photos and a real network.

The unit tests check each metric against its reference on tiny random inputs; this run measures the
agreement where it is used: EfficientNet-Lite0 (the shipped ImageNet weights, the PyTorch reference
implementation ``efficientnet_lite_pytorch`` as the scored network on both sides, so only the metric code
differs), the 10 hand-boxed photos at 224 px, Grad-CAM maps at ``head`` from chipjax.

References: pytorch-grad-cam 1.5.7 (``DropInConfidence``/``IncreaseInConfidence``; ``ROADMostRelevantFirst``/
``ROADLeastRelevantFirst`` with ``NoisyLinearImputer(noise=0)``: the imputation is then deterministic on both
sides), RISE's ``CausalMetric`` transcribed to torch (tests/test_metrics.py, ``rise_reference``), Quantus 0.6
(``PointingGame``, ``RelevanceMassAccuracy``, ``RelevanceRankAccuracy``, SSIM, Spearman), scikit-image's HOG.

    python -m benchmarks.metric_parity            # 10 photos
    python -m benchmarks.metric_parity --quick    # 3 photos, fewer ROAD percentiles
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from benchmarks import common

os.environ.setdefault("TQDM_DISABLE", "1")


def _nchw(torch, x):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))


def photos_and_maps(n: int):
    """Lite0 inputs ``(n, 224, 224, 3)``, Grad-CAM maps ``(n, 224, 224)``, targets, boxes in the 224 view, masks."""
    import jax.numpy as jnp

    import chipjax as cj
    from chipjax import evalsets, metrics
    from chipjax.models.preprocess import boxes_in_view

    model = cj.load_model("efficientnet_lite0")
    samples = evalsets.photo_set()[:n]
    x = jnp.concatenate([model.preprocess(s.image) for s in samples])
    targets = np.array([s.label for s in samples])
    maps = np.asarray(cj.explain(model, x, method="gradcam", layer="head", target=jnp.asarray(targets)), np.float64)
    boxes = [boxes_in_view(s.boxes, s.image.shape[:2], model.spec.view) for s in samples]
    masks = np.stack([metrics.boxes_to_mask(b, maps.shape[1:]) for b in boxes])
    return np.asarray(x, np.float32), maps, targets, boxes, masks


def tie_free(maps: np.ndarray, seed: int = 0) -> np.ndarray:
    """``0.9 · map + 0.1 · rank / (H·W)`` with a random rank per pixel: no two pixels of a map tie (in float32 too).

    Grad-CAM maps have plateaus (every pixel the ReLU zeroed); metrics that order pixels may break those ties in
    any order, and the references break them differently from us (and from each other)."""
    n, h, w = maps.shape
    rng = np.random.default_rng(seed)
    ranks = np.stack([rng.permutation(h * w).reshape(h, w) for _ in range(n)])
    return 0.9 * maps + 0.1 * ranks / (h * w)


def reference_network():
    """The PyTorch Lite0 with the shipped weights, and its NHWC softmax ``score_fn``."""
    import efficientnet_lite_pytorch as ref
    import torch

    from chipjax.models import efficientnet

    net = ref.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=efficientnet.pretrained_path(0),
                                           image_size=None).eval()

    def score_fn(images):
        with torch.no_grad():
            out = []
            for start in range(0, len(images), 16):
                out.append(torch.softmax(net(_nchw(torch, images[start:start + 16])), dim=1).numpy())
            return np.concatenate(out)

    return torch, net, score_fn


def parity_rows(x, maps, targets, boxes, masks, percentiles) -> list[list]:
    """``[metric, reference, images, max |ours − reference|, values compared]`` for every metric."""
    import quantus
    import scipy.stats
    from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence, IncreaseInConfidence
    from pytorch_grad_cam.metrics.perturbation_confidence import (PerturbationConfidenceMetric,
                                                                  RemoveLeastRelevantFirst, RemoveMostRelevantFirst)
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
    from skimage.feature import hog

    from chipjax import metrics as M

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests.test_metrics import rise_reference

    torch, net, score_fn = reference_network()
    n = len(x)
    xt, tt = _nchw(torch, x), [ClassifierOutputSoftmaxTarget(int(t)) for t in targets]
    maps32 = maps.astype(np.float32)
    rows = []

    ours = M.confidence_change(score_fn, x, maps32, targets, batch=16)
    drop = DropInConfidence()(xt, maps32, tt, net).ravel()
    increase = IncreaseInConfidence()(xt, maps32, tt, net).ravel() > 0
    rows.append(["drop in confidence × score", "pytorch-grad-cam DropInConfidence", n,
                 np.abs(ours["drop"] * ours["score"] - drop).max(), n])
    rows.append(["increase in confidence", "pytorch-grad-cam IncreaseInConfidence", n,
                 float(np.sum(ours["increase"] != increase)), n])

    road = M.road(score_fn, x, maps32, targets, percentiles=percentiles, noise=0.0, batch=16)
    for order, remover, key in (("MoRF", RemoveMostRelevantFirst, "morf"), ("LeRF", RemoveLeastRelevantFirst, "lerf")):
        want = np.stack([PerturbationConfidenceMetric(remover(p, NoisyLinearImputer(noise=0.0)))(xt, maps32, tt, net)
                         for p in percentiles], axis=1).reshape(n, len(percentiles))
        rows.append([f"ROAD {order} (score change)", f"pytorch-grad-cam ROAD{'MostRelevantFirst' if key == 'morf' else 'LeastRelevantFirst'}",
                     n, np.abs(road[key] - road["score"][:, None] - want).max(), want.size])

    steps = 11
    step = -(-x.shape[1] * x.shape[2] // (steps - 1))
    di = M.deletion_insertion(score_fn, x, maps, score_fn(x).argmax(1), steps=steps, protocol="rise", batch=16)
    for mode, key in (("del", "deletion"), ("ins", "insertion")):
        diffs = []
        for b in range(n):
            auc, _ = rise_reference(torch, net, xt[b:b + 1], maps[b], mode, step)
            diffs.append(abs(di[f"{key}_auc"][b] - auc))
        rows.append([f"{key} AUC (RISE protocol)", "RISE CausalMetric (transcribed)", n, max(diffs), n])

    kw = dict(model=None, x_batch=np.asarray(xt), y_batch=np.asarray(targets), a_batch=maps32[:, None],
              s_batch=masks[:, None].astype(np.float32), channel_first=True)
    pg = np.asarray(quantus.PointingGame(disable_warnings=True)(**kw), bool)
    rows.append(["pointing game (tolerance 0)", "Quantus PointingGame", n,
                 float(np.sum(M.pointing_game(maps, boxes, tolerance=0) != pg)), n])
    rows.append(["relevance mass", "Quantus RelevanceMassAccuracy", n,
                 np.abs(M.relevance_mass(maps, masks) - np.asarray(quantus.RelevanceMassAccuracy(disable_warnings=True)(**kw))).max(), n])
    rows.append(["relevance rank", "Quantus RelevanceRankAccuracy", n,
                 np.abs(M.relevance_rank(maps, masks) - np.asarray(quantus.RelevanceRankAccuracy(disable_warnings=True)(**kw))).max(), n])

    other = np.roll(maps, 1, axis=0)  # each map against another image's map
    rows.append(["SSIM", "Quantus ssim", n,
                 np.abs(M.ssim_scores(maps, other) - quantus.functions.similarity_func.ssim(maps, other, batched=True)).max(), n])
    rows.append(["Spearman rank correlation", "Quantus correlation_spearman", n,
                 np.abs(M.rank_correlations(maps, other) - quantus.functions.similarity_func.correlation_spearman(
                     maps.reshape(n, -1), other.reshape(n, -1), batched=True)).max(), n])
    want_hog = [scipy.stats.pearsonr(hog(a, pixels_per_cell=(28, 28), cells_per_block=(2, 2)),
                                     hog(b, pixels_per_cell=(28, 28), cells_per_block=(2, 2)))[0] for a, b in zip(maps, other)]
    rows.append(["HOG similarity", "scikit-image hog + Pearson", n,
                 np.abs(M.hog_similarities(maps, other, pixels_per_cell=28) - np.asarray(want_hog)).max(), n])
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.standard_args(p)
    p.add_argument("--images", type=int, default=None, help="photos (default 10; 3 with --quick)")
    args = p.parse_args(argv)
    n = args.images or (3 if args.quick else 10)
    percentiles = [10, 50, 90] if args.quick else [10, 20, 30, 40, 50, 60, 70, 80, 90]
    x, maps, targets, boxes, masks = photos_and_maps(n)
    rows = [["Grad-CAM"] + r for r in parity_rows(x, maps, targets, boxes, masks, percentiles)]
    rows += [["tie-free"] + r for r in parity_rows(x, tie_free(maps), targets, boxes, masks, percentiles)]
    body = common.table(["maps", "metric", "reference", "images", "max |ours − reference|", "values compared"],
                        [r[:4] + [f"{r[4]:.2e}" if r[4] else "0", r[5]] for r in rows])
    notes = (f"EfficientNet-Lite0 (shipped weights; the PyTorch reference network scores the images on both sides), "
             f"the first {n} hand-boxed photos at 224 px, Grad-CAM maps at `head` for the photo's class. ROAD at "
             f"percentiles {percentiles}, imputation noise 0 on both sides. Deletion/insertion: RISE's protocol, "
             "11 points, the image's top-1 class. For the two boolean metrics (increase in confidence, pointing "
             "game) the column counts disagreeing images. Quantus's pointing game has no tolerance: ours at tolerance 0. "
             "'tie-free': the same maps as 0.9 · map + 0.1 · (a random rank of each pixel) / (H·W), so that no two "
             "pixels tie: the metrics that order pixels (ROAD, deletion/insertion, relevance rank) then differ only by "
             "float rounding; on the raw maps they differ where the ReLU left plateaus of zeros, whose order each "
             "implementation breaks its own way (a different, equally valid pixel order).")
    common.report("metric_parity", body, notes, write=not args.no_write)


if __name__ == "__main__":
    main()
