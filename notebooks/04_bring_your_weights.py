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
# # Bring your own weights: torchvision checkpoints, and your own Flax module
#
# Two ways to explain a network that is not the shipped EfficientNet-Lite:
#
# 1. **A torchvision checkpoint** (ResNet-18...152, VGG-11...19 with or without BN). chipjax reads `.pth`
#    (zip or legacy), `.safetensors` and `.npz` with numpy only: **no torch needed and no code from the file is
#    run**. `chipjax convert` turns it into an orbax folder that loads fast; `cj.load_model(arch, weights=PATH)`
#    takes either the checkpoint or that folder.
# 2. **Your own Flax linen module**, tapped by the name of one of its submodules with `cj.tap_module`.
#
# ### Using a real checkpoint
#
# The ImageNet weights torchvision downloads live in `~/.cache/torch/hub/checkpoints/`, e.g.
# `resnet50-0676ba61.pth` (`ResNet50_Weights.IMAGENET1K_V1`, from
# `https://download.pytorch.org/models/resnet50-0676ba61.pth`) or `vgg16-397923af.pth`. With one of them:
#
# ```bash
# chipjax convert --arch resnet50 ~/.cache/torch/hub/checkpoints/resnet50-0676ba61.pth resnet50-flax
# chipjax explain photo.jpg --model resnet50 --weights resnet50-flax --layer layer4
# ```
#
# This notebook runs offline in CI, so it **makes a checkpoint from random initialisation** instead (its maps
# explain a random network and mean nothing; the mechanics are the same). Point `CHECKPOINT` at a real file to
# explain a trained ResNet.

# %%
import os

# CI runs the small settings (CHIPJAX_NOTEBOOK_SMALL=1, the default); set it to 0 -- or SMALL = False
# here -- for the settings of the paper-style runs.
SMALL = os.environ.get("CHIPJAX_NOTEBOOK_SMALL", "1") != "0"

ARCH = "resnet18" if SMALL else "resnet50"
CHECKPOINT = None            # e.g. "~/.cache/torch/hub/checkpoints/resnet50-0676ba61.pth" (set ARCH to match)
NUM_MASKS = 256 if SMALL else 2048

# %%
# %matplotlib inline
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import jax
import numpy as np
import skimage.data

import chipjax as cj
from chipjax import evalsets, metrics, viz

work = pathlib.Path(tempfile.mkdtemp(prefix="chipjax-04-"))
try:
    import torch
    import torchvision
except ImportError:
    torch = None
print("working folder:", work, "| torch available:", torch is not None)


# %% [markdown]
# ## 1. A checkpoint
#
# With torch installed, a torchvision ResNet from random init, saved exactly as torchvision saves its weights
# (`torch.save(model.state_dict(), ...)`). Without torch, the same state-dict layout (torchvision key names, OIHW
# conv kernels) written as an `.npz` from **chipjax's own random-init variables**: a stand-in that exercises the
# reader and the key map, not torch's file format.

# %%
def random_torchvision_checkpoint(arch: str, folder: pathlib.Path) -> pathlib.Path:
    """A random-init checkpoint in torchvision's layout: a .pth with torch, else an .npz (see above)."""
    if torch is not None:
        torch.manual_seed(0)
        net = getattr(torchvision.models, arch)(weights=None).eval()
        path = folder / f"{arch}-random.pth"
        torch.save(net.state_dict(), path)
        return path
    # chipjax's own export to torch's layout: the exact inverse of what `chipjax convert` reads
    state = cj.load_model(arch, weights=None, seed=0).torch_state_dict()
    path = folder / f"{arch}-random.npz"
    np.savez(path, **state)
    return path


checkpoint = (pathlib.Path(os.path.expanduser(CHECKPOINT)) if CHECKPOINT
              else random_torchvision_checkpoint(ARCH, work))
print(checkpoint, f"{checkpoint.stat().st_size / 2**20:.1f} MiB")

# %% [markdown]
# ## 2. `chipjax convert`
#
# Reads the checkpoint with numpy only, maps torchvision's keys to the Flax variables (and says which key is
# missing, extra or mis-shaped if the file is for another architecture), and writes an orbax folder.

# %%
converted = work / f"{ARCH}-flax"
chipjax_cli = shutil.which("chipjax", path=os.path.dirname(sys.executable))
command = ([chipjax_cli] if chipjax_cli else [sys.executable, "-m", "chipjax.cli"]) + [
    "convert", "--arch", ARCH, str(checkpoint), str(converted)]
print("$ chipjax", " ".join(command[-5:]))
result = subprocess.run(command, capture_output=True, text=True)
print(result.stdout, result.stderr)
assert result.returncode == 0, result.stderr
print(sorted(p.name for p in converted.iterdir()))

# %%
model = cj.load_model(ARCH, weights=str(converted))           # the converted folder ...
direct = cj.load_model(ARCH, weights=str(checkpoint))         # ... or the checkpoint itself
print(model)

photo = skimage.data.coffee()
x = model.preprocess(photo)            # torchvision's preprocessing: resize 256, centre crop 224, ImageNet mean/std
logits = model(x)
np.testing.assert_allclose(np.asarray(logits), np.asarray(direct(x)), rtol=1e-6, atol=1e-6)
print("top-1:", model.labels[int(logits.argmax())], "(a random network: any class)")

# %% [markdown]
# With torch present, check the converted network against the original on the same input (NHWC here, NCHW in
# torch):

# %%
if torch is not None and not CHECKPOINT:
    torch.manual_seed(0)
    net = getattr(torchvision.models, ARCH)(weights=None).eval()
    with torch.no_grad():
        reference = net(torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())).numpy()
    error = float(np.abs(np.asarray(logits) - reference).max())
    print(f"max |logit difference| vs torch: {error:.2e} (logits up to {np.abs(reference).max():.2f})")
    assert error < 1e-3

# %% [markdown]
# ## 3. Explain with it
#
# The taps of a torchvision ResNet are its module names (`layer3`, `layer3.1`, `layer4`, ...). CHIP and Grad-CAM at
# `layer4`:

# %%
print("taps:", ", ".join(model.layers))
maps = {
    "chip": cj.explain(model, x, method="chip", layer="layer4", num_masks=NUM_MASKS),
    "gradcam": cj.explain(model, x, method="gradcam", layer="layer4"),
}
viz.method_grid([model.view(photo)], maps, row_titles=[f"{ARCH} ({'random' if not CHECKPOINT else 'yours'})"])

# %% [markdown]
# ## 4. Your own Flax module, tapped by name
#
# Any `flax.linen` module mapping images `(B, S, S, 3)` to logits can be explained: `cj.tap_module(module,
# layer, example_input, variables)` splits it at the submodule whose path is `layer` (as
# `cj.module_layers` lists them; NNX and Equinox modules too, see notebook 06). Tap a submodule whose output is **post-activation**: here each
# `ConvBlock` is a conv followed by a ReLU, so tapping `block3` gives ReLU outputs.
#
# A tiny CNN, trained for a few seconds with optax to tell a red square from a blue one on a noisy background, so
# that its explanations have something to find: the square.

# %%
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


module = TinyCNN()
train_x, train_y, _ = evalsets.coloured_squares(512, seed=0)
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
test_x, test_y, test_boxes = evalsets.coloured_squares(8, seed=1)
accuracy = float((module.apply(variables, test_x).argmax(-1) == test_y).mean())
print(f"loss {float(loss):.3f}, accuracy on 8 new images {accuracy:.2f}")

# %%
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
