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
# # Any layer: the layer-tap API
#
# CHIP needs no retraining and works at **any layer**: chipjax splits the network `f = g ∘ h` at a named layer
# (a *tap*). The head `h` runs once per image and gives the feature maps `A (B, H, W, K)`; only the tail `g` runs
# for every perturbed network. This notebook lists the taps of EfficientNet-Lite0, explains one image with two
# objects at a handful of them from shallow to deep, and shows why the maps change.

# %%
import os

# CI runs the small settings (CHIPJAX_NOTEBOOK_SMALL=1, the default); set it to 0 -- or SMALL = False
# here -- for the settings of the paper-style runs.
SMALL = os.environ.get("CHIPJAX_NOTEBOOK_SMALL", "1") != "0"

NUM_MASKS = 256 if SMALL else 2048
# taps from shallow to deep: expansions (post-ReLU6) of blocks 3/5/8/11/15, then the last conv
TAPS = (["blocks.5.expand", "blocks.11.expand", "head"] if SMALL else
        ["blocks.3.expand", "blocks.5.expand", "blocks.8.expand", "blocks.11.expand", "blocks.15.expand", "head"])

# %%
# %matplotlib inline
import time

import jax
import jax.numpy as jnp
import numpy as np

import chipjax as cj
from chipjax import evalsets, metrics, viz

model = cj.load_model("efficientnet_lite0")
print(f"{len(model.layers)} taps, input to output:")
print(", ".join(model.layers))
print("default layer:", model.default_layer, "| Refined CHIP's default layers:", model.spec.stage_layers)

# %% [markdown]
# Tap names follow the PyTorch module names of the reference model (`blocks.11.expand` is the 1x1 expansion conv
# + ReLU6 of block 11). Tap **post-activation** tensors (an expansion, a block's ReLU output, the last conv): CHIP's
# map is `ReLU(Σ W A)`, and the signed values of a linear bottleneck output point at the wrong places.
#
# `model.tap(layer)` gives the split; `tap.head(x)` the feature maps. The test image: the cat and the espresso cup
# of the bundled photos pasted side by side on a background (`chipjax.evalsets`), so we know where each class is.

# %%
objects = {o.name: o for o in evalsets.paste_objects()}
canvas = evalsets.draw_background(np.random.default_rng(3), 224)
boxes = {"Egyptian cat": (4, 50, 108, 130), "espresso": (124, 60, 220, 170)}   # x0, y0, x1, y1
canvas = evalsets.paste(canvas, objects["chelsea-cat"].rgb, boxes["Egyptian cat"])
canvas = evalsets.paste(canvas, objects["coffee-espresso"].rgb, boxes["espresso"])
evalsets_boxes = {name: np.array([box], np.float32) for name, box in boxes.items()}

x = model.preprocess(canvas)                       # (1, 224, 224, 3); the canvas is already 224 x 224
probs = jax.nn.softmax(model(x), axis=-1)[0]
classes = {name: model.labels.index(name) for name in boxes}
for name, c in classes.items():
    print(f"{name:13s} class {c:4d}  p = {float(probs[c]):.3f}  rank {int((probs > probs[c]).sum()) + 1}")
viz.box_preview(canvas, np.array(list(boxes.values())), labels=list(boxes))

# %%
for layer in TAPS:
    A = model.tap(layer).head(x)
    print(f"{layer:17s} A {tuple(A.shape)}: {A.shape[1]}x{A.shape[2]} grid, {A.shape[3]} channels")

# %% [markdown]
# Now the same image explained by CHIP at every tap, once for each class (rows). One compilation per tap; the
# second class at a tap reuses it.

# %%
maps = {}   # tap -> (2, 224, 224): row 0 the cat, row 1 the espresso
for layer in TAPS:
    start = time.perf_counter()
    rows = [cj.explain(model, x, method="chip", layer=layer, target=c, num_masks=NUM_MASKS)[0]
            for c in classes.values()]
    maps[layer] = jnp.stack(rows)
    print(f"{layer:17s} {time.perf_counter() - start:5.1f} s")
viz.method_grid([canvas, canvas], maps, row_titles=list(classes))

# %% [markdown]
# Two numbers per tap make the difference visible:
#
# * **pointing game**: does the map's maximum fall on that class's object (within 15 px)?
# * **share on its own object**: of the map's mass inside the two boxes, the fraction inside the box of the class
#   asked for. About 0.5 means the map lights both objects alike (not class-discriminative); near 1 means
#   each class's map lands on its own object.

# %%
gt = list(evalsets_boxes.values())


def own_share(m, own_box, other_box):
    """Map mass inside own_box / mass inside both boxes; m (H, W), boxes (x0, y0, x1, y1)."""
    mass = [float(m[y0:y1, x0:x1].sum()) for x0, y0, x1, y1 in (own_box, other_box)]
    return mass[0] / max(sum(mass), 1e-12)


def discrimination(pair):
    """Pointing-game hits (2,) and own-object shares (2,) of a (2, H, W) pair of maps: cat, espresso."""
    pair = np.asarray(pair)
    cat, cup = boxes["Egyptian cat"], boxes["espresso"]
    return metrics.pointing_game(pair, gt), np.array([own_share(pair[0], cat, cup), own_share(pair[1], cup, cat)])


print(f"{'tap':17s} {'grid':>6s} {'hit cat':>8s} {'hit cup':>8s} {'share cat':>10s} {'share cup':>10s}")
for layer, pair in maps.items():
    hits, share = discrimination(pair)
    grid = model.tap(layer).head(x).shape[1]
    print(f"{layer:17s} {grid:>3d}^2 {str(bool(hits[0])):>8s} {str(bool(hits[1])):>8s} {share[0]:10.2f} {share[1]:10.2f}")

# %% [markdown]
# ## Why the maps change with the layer
#
# Two things change as the tap moves from the input to the output, in opposite directions:
#
# * **Resolution falls.** `blocks.5.expand` sees the 224 px image on a 28 x 28 grid (8 px per cell),
#   `blocks.11.expand` on 14 x 14, the last block and `head` on 7 x 7 (32 px per cell). A map can be no sharper
#   than its grid, so deep maps are blobs that spill over the object's edges, shallow maps follow outlines.
# * **Class-discriminativeness rises.** Shallow channels respond to edges, colours and textures that many
#   classes share, so switching one off says little about one class in particular: the map follows the strong
#   structure of the image wherever it is, for either class (own-object share about 0.5, and a noisy map). Deep channels respond to object parts of particular classes: the lasso gives each class its own
#   channels, and each class's map moves onto its own object (the share rises towards 1).
#
# So a shallow tap answers "where are the edges that the decision uses" at high resolution, a deep tap answers
# "where is the class" at low resolution. **Refined CHIP** takes both: it fuses the maps of several taps by their
# geometric mean (`cj.explain(model, x, method="refined-chip", layer=[...])`), so a pixel is bright only where the
# sharp shallow map *and* the class-specific deep map agree. Here, from the maps already computed:

# %%
from chipjax.chip import fuse_maps

refined = fuse_maps([maps[TAPS[-2]], maps[TAPS[-1]]], "geometric")      # (2, 224, 224)
hits, share = discrimination(refined)
print(f"Refined CHIP ({TAPS[-2]} x {TAPS[-1]}): hits {hits.tolist()}, own-object shares {np.round(share, 2).tolist()}")
viz.method_grid([canvas, canvas], {TAPS[-2]: maps[TAPS[-2]], TAPS[-1]: maps[TAPS[-1]], "refined-chip": refined},
                row_titles=list(classes))

# %% [markdown]
# The same taps work for every method (`method="gradcam"`, `"scorecam"`, ...) and from the command line:
# `chipjax layers --shapes` lists them, `chipjax explain IMAGE --layer blocks.11.expand` uses one.
