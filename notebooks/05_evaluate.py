# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: -all
#     notebook_metadata_filter: kernelspec
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Evaluate: CHIP vs Grad-CAM on the bundled sets
#
# Two sets ship with chipjax and need no download (`chipjax.evalsets`):
#
# * **photos**: the real photos of scikit-image / matplotlib / scikit-learn with hand-drawn boxes,
# * **composites**: objects cut from those photos pasted on backgrounds that hold none of the classes, so the
#   box is exact.
#
# Metrics (`chipjax.metrics`), each on the map of the ground-truth class:
#
# * **pointing game**: the map's maximum lies within 15 px of the object's box;
# * **box accuracy**: the box around the largest blob of the map thresholded at 0.2 of its maximum has IoU ≥ 0.5
#   with the object's box; **MaxBoxAcc** takes the threshold that is best for the whole set;
# * **deletion / insertion AUC**: delete the pixels in the map's order (replace them by a blurred image) and
#   watch the class probability fall (lower area = better), or insert them into the blurred image and watch it
#   rise (higher = better).
#
# Part 1 runs the evaluation as `chipjax eval` does (`chipjax.eval.evaluate`: a table, CSV, curves;
# resumable). Part 2 computes the same numbers by hand with `chipjax.metrics`, to show what they are.

# %%
import os

# CI runs the small settings (CHIPJAX_NOTEBOOK_SMALL=1, the default); set it to 0 -- or SMALL = False
# here -- for the settings of the paper-style runs.
SMALL = os.environ.get("CHIPJAX_NOTEBOOK_SMALL", "1") != "0"

NUM_PHOTOS = 4 if SMALL else None          # None: every photo the model recognises
NUM_COMPOSITES = 4 if SMALL else 100
NUM_MASKS = 256 if SMALL else 4096
STEPS = 11 if SMALL else 21                # points on each deletion/insertion curve
LAYER = "head"
BATCH = 8                                  # images explained together

# %%
# %matplotlib inline
import json
import pathlib
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from IPython.display import Markdown, display

import chipjax as cj
from chipjax import evalsets, metrics, viz
from chipjax.data import EvalSource
from chipjax.eval import Settings, evaluate

model = cj.load_model("efficientnet_lite0")
# the photos the model classifies right come first (on the others the class is wrong, not the map)
recognised = [s for s in evalsets.photo_set()
              if int(model(model.preprocess(s.image)).argmax()) in evalsets.acceptable_labels(s.label)]
samples = recognised[:NUM_PHOTOS] + evalsets.composite_set(NUM_COMPOSITES, seed=0)
# acceptable_labels: a photo may count as several ImageNet classes (tabby / tiger cat / Egyptian cat)
source = EvalSource(samples, f"{len(samples)} photos and composites", evalsets.acceptable_labels)
print(f"{len(samples)} images:", ", ".join(s.name for s in samples))
viz.box_preview(samples[0].image, samples[0].boxes, labels=[model.labels[samples[0].label]])

# %% [markdown]
# ## 1. The evaluation table
#
# `evaluate` explains every image for its ground-truth class with each method (`method@layer`), scores the maps and
# writes `results.md`, `results.csv`, `records.jsonl` (one line per image and method), curve plots and example
# overlays to `out_dir`. The same from the command line:
# `chipjax eval --data composites --num-images 4 --methods chip,gradcam --masks 256 --steps 11 --out DIR`.

# %%
out_dir = pathlib.Path(tempfile.mkdtemp(prefix="chipjax-05-")) / "eval"
settings = Settings(deletion_steps=STEPS, batch_size=BATCH, score_batch=32)
result = evaluate(model, source, methods=f"chip@{LAYER},gradcam@{LAYER}",
                  options={"chip": {"num_masks": NUM_MASKS}}, out_dir=str(out_dir), progress=False,
                  settings=settings)
print(sorted(p.name for p in out_dir.iterdir()))
display(Markdown((out_dir / "results.md").read_text(encoding="utf-8")))

# %% [markdown]
# The mean deletion and insertion curves, from the per-image records (`viz.curves`; `evaluate` also wrote them to
# `deletion.png` and `insertion.png`):

# %%
records = [json.loads(line) for line in (out_dir / "records.jsonl").read_text().splitlines() if line.strip()]
runs = list(result["summary"])                       # ["chip@head", "gradcam@head"]
for kind in ("deletion", "insertion"):
    lines = {}
    for run in runs:
        mean = np.mean([r[f"{kind}_curve"] for r in records if r["run"] == run], axis=0)
        lines[run.split("@")[0]] = (np.linspace(0.0, 1.0, len(mean)), mean)
    display(viz.curves(lines, kind=kind))

# %% [markdown]
# ## 2. The same numbers by hand
#
# For the first batch of images: explain, then score with `chipjax.metrics`. The boxes are moved into the picture
# the network sees: EfficientNet-Lite stretches the photo to 224 x 224 without a crop, so they scale
# (`chipjax.models.preprocess.boxes_in_view` handles any view, e.g. ResNet's resize-and-crop).

# %%
batch = samples[:BATCH]
S = model.input_size
x = jnp.concatenate([model.preprocess(s.image) for s in batch])          # (B, 224, 224, 3)
targets = np.array([s.label for s in batch])
gt_boxes = [metrics.resize_boxes(s.boxes, s.image.shape[:2], (S, S)) for s in batch]

maps = {
    "chip": np.asarray(cj.explain(model, x, method="chip", layer=LAYER, target=targets, num_masks=NUM_MASKS)),
    "gradcam": np.asarray(cj.explain(model, x, method="gradcam", layer=LAYER, target=targets)),
}
score_fn = jax.jit(lambda images: jax.nn.softmax(model.module.apply(model.variables, images), axis=-1))

print(f"{'method':9s} {'pointing':>9s} {'box acc':>8s} {'deletion':>9s} {'insertion':>10s}")
by_hand = {}
for name, m in maps.items():
    di = metrics.deletion_insertion(score_fn, np.asarray(x), m, targets, steps=STEPS, batch=32,
                                    protocol="rise")  # RISE's reference protocol, as chipjax eval by default
    by_hand[name] = {
        "pointing": metrics.pointing_game(m, gt_boxes, tolerance=15),                       # (B,) bool
        "box_ok": [metrics.localization_correct(mb, g, threshold=0.2, iou=0.5) for mb, g in zip(m, gt_boxes)],
        "deletion_auc": di["deletion_auc"],
        "insertion_auc": di["insertion_auc"],
    }
    h = by_hand[name]
    print(f"{viz.method_label(name):9s} {np.mean(h['pointing']):9.3f} {np.mean(h['box_ok']):8.3f} "
          f"{np.mean(h['deletion_auc']):9.3f} {np.mean(h['insertion_auc']):10.3f}")

# %% [markdown]
# They agree with `evaluate`'s records, image by image:

# %%
for name in maps:
    recs = sorted((r for r in records if r["run"] == f"{name}@{LAYER}" and r["i"] < len(batch)), key=lambda r: r["i"])
    assert [r["pointing"] for r in recs] == by_hand[name]["pointing"].tolist()
    assert [r["box_ok"] for r in recs] == list(by_hand[name]["box_ok"])
    np.testing.assert_allclose([r["deletion_auc"] for r in recs], by_hand[name]["deletion_auc"], atol=1e-5)
    np.testing.assert_allclose([r["insertion_auc"] for r in recs], by_hand[name]["insertion_auc"], atol=1e-5)
print("by hand == chipjax.eval for", len(batch), "images")
viz.method_grid([model.view(s.image) for s in batch[:4]], {k: m[:4] for k, m in maps.items()},
                row_titles=[model.labels[t] for t in targets[:4]])

# %% [markdown]
# With `SMALL = False` this runs CHIP with 4 096 masks on every recognised photo and 100 composites. The full
# benchmark (more methods, layers and the two-object composites) is `chipjax eval` and `benchmarks/`.
