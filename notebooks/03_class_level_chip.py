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
# # Class-level CHIP: fit once per class, explain with one forward pass
#
# Image-level CHIP fits a lasso for every image (hundreds of perturbed networks each). **Class-level CHIP** pools
# the regression statistics over a data set, per class, and stores the channel weights `W (K, C)`: the global
# knowledge of which channels carry each class. Explaining a new image then costs one forward pass:
# `ReLU(Σ_k W[k, c] · A[..., k])`.
#
# This notebook builds a small labelled image folder, fits a class-level model on it, saves and reloads it,
# explains new images, and looks at the top channels of one class and what they respond to.

# %%
import os

# CI runs the small settings (CHIPJAX_NOTEBOOK_SMALL=1, the default); set it to 0 -- or SMALL = False
# here -- for the settings of the paper-style runs.
SMALL = os.environ.get("CHIPJAX_NOTEBOOK_SMALL", "1") != "0"

NUM_FIT = 24 if SMALL else 400      # training images (composites of the bundled photos' objects)
NUM_MASKS = 256 if SMALL else 2048
LAYER = "head"                      # the last conv, 7 x 7 x 1280

# %%
# %matplotlib inline
import collections
import pathlib
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

import chipjax as cj
from chipjax import evalsets, metrics, viz
from chipjax.fit import fit_folder

model = cj.load_model("efficientnet_lite0")
work = pathlib.Path(tempfile.mkdtemp(prefix="chipjax-03-"))
print("working folder:", work)

# %% [markdown]
# ## A folder of images, one sub-folder per class
#
# `chipjax fit` and `chipjax.fit.fit_folder` read a folder with **one sub-folder per class**, named by the class
# index (`967/`), its synset (`n07920052/`) or its name (`espresso/`), or a folder with a `boxes.json` list. We
# write one from `evalsets.composite_set`: objects cut from the bundled photos pasted on backgrounds.

# %%
train = work / "train"
for sample in evalsets.composite_set(NUM_FIT, seed=0):
    folder = train / str(sample.label)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sample.image).save(folder / f"{sample.name.replace(':', '_')}.png")

counts = collections.Counter(p.parent.name for p in train.glob("*/*.png"))
for label, n in sorted(counts.items()):
    print(f"{label:>4s} {model.labels[int(label)]:18s} {n} image{'s' if n > 1 else ''}")

# %% [markdown]
# ## Fit, save, reload
#
# Every image sees the same perturbed networks; per class, the statistics of that class's images are pooled and
# one lasso per class gives the column `W[:, c]` (only the classes that have images are solved;
# `classes="all"` solves the others from the statistics pooled over every image).
# Same as `chipjax fit DATA --out MODEL --layer head --masks 256`.

# %%
start = time.perf_counter()
chip_model = fit_folder(model, str(train), layer=LAYER, num_masks=NUM_MASKS, batch_size=4, progress=False)
print(f"fitted on {chip_model.num_images} images at {chip_model.layer} in {time.perf_counter() - start:.1f} s; "
      f"weights {tuple(chip_model.weights.shape)}")

chip_model.save(work / "chip-model")                       # an orbax checkpoint folder
loaded = cj.CHIP.load(work / "chip-model", model=model)    # refuses a model fitted on another network
np.testing.assert_array_equal(np.asarray(loaded.weights), np.asarray(chip_model.weights))
print("reloaded:", loaded.arch, loaded.layer, loaded.config)

# %% [markdown]
# ## Explain new images with one forward pass
#
# New composites (another seed: images the model was not fitted on). `cj.explain(..., chip_model=loaded)` uses the
# class-level weights; we compare with Grad-CAM at the same layer.

# %%
test = []
for sample in evalsets.composite_set(12, seed=1):          # new images: the first of each class, 4 classes
    if sample.label not in [t.label for t in test]:
        test.append(sample)
test = test[:4]
x = jnp.concatenate([model.preprocess(s.image) for s in test])        # (4, 224, 224, 3)
targets = [s.label for s in test]

for attempt in ("first call (compiles)", "second call"):
    start = time.perf_counter()
    class_maps = jax.block_until_ready(cj.explain(model, x, method="chip", target=targets, chip_model=loaded))
    print(f"class-level CHIP, {attempt}: {time.perf_counter() - start:.2f} s for {len(test)} images")
gradcam_maps = cj.explain(model, x, method="gradcam", layer=LAYER, target=targets)

hits = metrics.pointing_game(np.asarray(class_maps), [s.boxes for s in test])
print("pointing game (class-level CHIP):", hits.tolist())
viz.method_grid([s.image for s in test], {"class-level CHIP": class_maps, "gradcam": gradcam_maps},
                row_titles=[model.labels[t] for t in targets])

# %% [markdown]
# ## The top channels of a class, and what they respond to
#
# `W[:, c]` ranks the channels of the layer for class `c`. The lasso leaves most of them at exactly zero.

# %%
c = model.labels.index("espresso")
w = np.asarray(loaded.weights[:, c])
print(f"espresso: {int((w != 0).sum())} of {w.size} channels have a non-zero weight")
top, top_w = loaded.top_channels(c, k=4)
print("top channels:", top.tolist(), "weights:", [f"{v:.4f}" for v in top_w])
viz.channel_bars(w, k=20, class_name="espresso")

# %% [markdown]
# What do those channels see? Their feature maps `A[..., k]` (each scaled to [0, 1]) on the espresso image above,
# next to the class-level CHIP map that sums them with their weights:

# %%
e = targets.index(c)                                                  # the espresso among the new images
A = np.asarray(model.tap(LAYER).head(x))[e]                           # (7, 7, 1280)
channel_maps = {f"channel {k}": A[None, :, :, k] / max(float(A[:, :, k].max()), 1e-12) for k in top}
channel_maps["class-level CHIP"] = class_maps[e][None]
viz.method_grid([test[e].image], channel_maps, row_titles=["espresso"])

# %% [markdown]
# And how strongly they fire on the images of each class of the training folder (mean activation of espresso's
# top channels, averaged over space and over that class's images): they should fire most on espresso images.

# %%
from chipjax.data import folder_source
from chipjax.fit import preprocessed_batches

tap = model.tap(LAYER)
per_class = collections.defaultdict(list)
for xb, yb in preprocessed_batches(model, folder_source(str(train)), batch_size=4):
    act = np.asarray(tap.head(xb))[..., top].mean(axis=(1, 2, 3))       # (B,)
    for label, a in zip(yb, act):
        per_class[int(label)].append(float(a))
for label, acts in sorted(per_class.items(), key=lambda kv: -np.mean(kv[1])):
    print(f"{model.labels[label]:18s} {np.mean(acts):.3f}  ({len(acts)} image{'s' if len(acts) > 1 else ''})")
