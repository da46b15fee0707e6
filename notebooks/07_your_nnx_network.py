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
# # Your own Flax NNX network, explained end to end
#
# `cj.tap_module(network, layer, images)` taps a network you wrote yourself — Flax NNX (here), Flax linen
# (give its `variables`) or Equinox — at any layer, **inside a residual block too**. The tail of the tap is your
# network run on the real images with the tapped output replaced, so the skip connection around the tap carries
# the real image's values: the perturbed scores are exact, and under `vmap` over the masks the part that does
# not depend on the tapped value runs once per image, not once per mask.
#
# We train a tiny residual NNX network for a few seconds to tell a red square from a blue one, tap it inside its
# residual block and explain it with CHIP, Grad-CAM and Score-CAM.

# %%
import os

# CI runs the small settings (CHIPJAX_NOTEBOOK_SMALL=1, the default); set it to 0 -- or SMALL = False
# here -- for the settings of the paper-style runs.
SMALL = os.environ.get("CHIPJAX_NOTEBOOK_SMALL", "1") != "0"

NUM_MASKS = 256 if SMALL else 2048
STEPS = 60 if SMALL else 300

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import chipjax as cj
from chipjax import evalsets, metrics, viz


# %%
class Block(nnx.Module):
    """A residual block: relu(x + conv2(relu(conv1(x))))."""

    def __init__(self, channels: int, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(channels, channels, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(channels, rngs=rngs)
        self.conv2 = nnx.Conv(channels, channels, (3, 3), rngs=rngs)

    def __call__(self, x):
        return nnx.relu(x + self.conv2(nnx.relu(self.bn(self.conv1(x)))))


class SquaresNet(nnx.Module):
    """(B, 32, 32, 3) -> (B, 2) logits: red square (0) or blue square (1)."""

    def __init__(self, rngs: nnx.Rngs):
        self.stem = nnx.Conv(3, 16, (3, 3), strides=2, rngs=rngs)
        self.block = Block(16, rngs)
        self.classifier = nnx.Linear(16, 2, rngs=rngs)

    def __call__(self, x):
        x = self.block(nnx.relu(self.stem(x)))  # (B, 16, 16, 16)
        return self.classifier(x.mean(axis=(1, 2)))


net = SquaresNet(nnx.Rngs(0))
optimizer = nnx.Optimizer(net, optax.adam(3e-3), wrt=nnx.Param)
train_x, train_y, _ = evalsets.coloured_squares(512, seed=0)


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
test_x, test_y, test_boxes = evalsets.coloured_squares(8, seed=1)
print(f"loss {float(loss):.3f}, accuracy on 8 new images {float((net(test_x).argmax(-1) == test_y).mean()):.2f}")

# %% [markdown]
# ## The layers, and a tap inside the residual block
#
# `cj.module_layers` lists every layer path, input to output (a block right after its own layers). With no
# layer named, `tap_module` picks the last layer whose output is a spatial feature map (as torch-cam does) and
# says which in `tap.layer`. Here we tap `block.bn` instead: inside the block, with the skip connection around
# it. `tap.tail_reads_images` says the tail needs the real images (the skip input) — the tap is bound to the
# images it was built with (`tap.bind(x)` for others).

# %%
print("layers:", cj.module_layers(net, test_x))
print("default layer:", cj.tap_module(net, None, test_x).layer)
tap = cj.tap_module(net, "block.bn", test_x)
print(f"tap at {tap.layer} ({tap.system}); tail reads the images: {tap.tail_reads_images}")
A = tap.head(test_x)
print("features", A.shape, "| tail(head(x)) == net(x):",
      bool(np.allclose(tap.tail(A), net(test_x), atol=1e-5)))

# %% [markdown]
# ## Exact perturbed scores
#
# The same scores from a split written by hand — the skip input computed once from the real images, the rest of
# the block run on the perturbed features — agree with the tap's; a tail that re-ran the network from a zero
# image (what a naive split does) would not.

# %%
skip = nnx.relu(net.stem(test_x))
by_hand = lambda a: net.classifier(nnx.relu(skip + net.block.conv2(nnx.relu(a))).mean(axis=(1, 2)))
masks = cj.perturb.sample_masks(jax.random.PRNGKey(0), jnp.arange(64), A.shape[-1])
ours = cj.perturb.perturbed_logits(tap.tail_fn, tap.variables, A, masks)
hand = jax.vmap(lambda m: by_hand(A * m))(masks)
print(f"largest difference over 64 masks x 8 images: {float(jnp.abs(ours - hand).max()):.1e}")

# %% [markdown]
# ## Explained
#
# CHIP, Grad-CAM and Score-CAM at the tap, for the true class; the pointing game asks whether each map's
# maximum falls within 2 px of the square. Explaining mutates nothing: the network's state is the same after.

# %%
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
