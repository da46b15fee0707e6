"""CAM-family baselines: parity with PyTorch, per-image targets, CAM's tail check, chunking and seeds."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chipjax as cj
from chipjax import cams
from chipjax.errors import InputError
from chipjax.tap import Tap


class ReLU(nn.Module):
    """A ReLU as a submodule, so that its output can be tapped."""

    @nn.compact
    def __call__(self, x):
        return nn.relu(x)


class TinyCNN(nn.Module):
    """Three convs + global average pool + Dense: ``(B, 32, 32, 3) -> (B, 10)``; ``act3`` is ``(B, 8, 8, 16)``."""

    @nn.compact
    def __call__(self, x):
        x = ReLU(name="act1")(nn.Conv(8, (3, 3), name="conv1")(x))
        x = ReLU(name="act2")(nn.Conv(16, (3, 3), strides=2, name="conv2")(x))
        x = ReLU(name="act3")(nn.Conv(16, (3, 3), strides=2, name="conv3")(x))
        return nn.Dense(10, name="fc")(x.mean(axis=(1, 2)))


def numpy_init(module, x, seed):
    """LeCun-normal kernels and small random biases from numpy (Flax's init would compile a PRNG per parameter)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)

    def draw(s):
        scale = 1.0 / np.sqrt(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 0.1
        return jnp.asarray(rng.standard_normal(s.shape) * scale, jnp.float32)

    return jax.tree_util.tree_map(draw, shapes)


@pytest.fixture(scope="module")
def tiny():
    module = TinyCNN()
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 32, 32, 3)), jnp.float32)
    variables = numpy_init(module, x, seed=0)
    taps = {name: cj.tap_module(module, name, x[:1], variables) for name in ("act2", "conv3", "act3")}
    return module, variables, x, taps


def pearson(a, b):
    a, b = np.ravel(a), np.ravel(b)
    return float(np.corrcoef(a, b)[0, 1])


# --- every method ------------------------------------------------------------------------------

FAST_OPTIONS = {"rise": dict(num_masks=48, chunk_size=32), "scorecam": dict(chunk_size=16)}


@pytest.mark.parametrize("method", sorted(cams.MAP_FUNCTIONS))
def test_every_method_gives_finite_maps_in_unit_range(tiny, method):
    _, _, x, taps = tiny
    maps = np.asarray(cj.explain(taps["act3"], x, method=method, target=None, **FAST_OPTIONS.get(method, {})))
    assert maps.shape == (2, 32, 32)
    assert np.isfinite(maps).all()
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert np.allclose(maps.max(axis=(1, 2)), 1.0)  # neither map is constant here


def test_constant_features_give_zero_maps_not_nan(tiny):
    _, _, x, taps = tiny
    A = jnp.ones((2, 8, 8, 16))
    for method in ("cam", "gradcam", "gradcam++", "ablationcam"):
        maps = np.asarray(cams.MAP_FUNCTIONS[method](taps["act3"], x, jnp.array([3, 7]), features=A))
        assert np.isfinite(maps).all() and np.all(maps == 0.0), method


# --- gradients: each image its own ---------------------------------------------------------------


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "ablationcam"])
def test_batch_with_own_targets_equals_one_by_one(tiny, method):
    _, _, x, taps = tiny
    tap, fn = taps["act2"], cams.MAP_FUNCTIONS[method]
    both = np.asarray(fn(tap, x, jnp.array([3, 7])))
    first = np.asarray(fn(tap, x[:1], jnp.array([3])))
    second = np.asarray(fn(tap, x[1:], jnp.array([7])))
    np.testing.assert_allclose(both, np.concatenate([first, second]), atol=1e-5)
    other_target = np.asarray(fn(tap, x[1:], jnp.array([3])))
    assert np.abs(other_target - second).max() > 0.05  # the target matters, so the check above can fail


def test_gradients_are_per_image_target_logit_gradients(tiny):
    module, variables, x, taps = tiny
    tap = taps["act2"]
    A = tap.head(x)
    g = cams.target_gradients(tap.tail_fn, tap.variables, A, jnp.array([3, 7]))
    for b, t in enumerate((3, 7)):
        ref = jax.grad(lambda a: tap.tail_fn(tap.variables, a)[0, t])(A[b:b + 1])
        np.testing.assert_allclose(np.asarray(g[b:b + 1]), np.asarray(ref), rtol=1e-5, atol=1e-7)


# --- CAM ---------------------------------------------------------------------------------------


def test_cam_weights_are_the_fc_weights_and_map_is_the_fc_weighted_sum(tiny):
    """CAM from its definition: ReLU(Σ_k fc[k, c] A_k), bilinear upsampling (torch's, half-pixel), min-max."""
    torch = pytest.importorskip("torch")
    _, variables, x, taps = tiny
    tap, targets = taps["act3"], jnp.array([3, 7])
    A = tap.head(x)
    grads = cams.target_gradients(tap.tail_fn, tap.variables, A, targets)
    kernel = np.asarray(variables["params"]["fc"]["kernel"])  # (K, C)
    np.testing.assert_allclose(np.asarray(cams.cam_weights(grads)), kernel[:, [3, 7]].T, rtol=1e-5, atol=1e-7)
    cam = np.maximum(np.einsum("bhwk,kb->bhw", np.asarray(A), kernel[:, [3, 7]]), 0)
    up = torch.nn.functional.interpolate(torch.from_numpy(cam)[:, None], size=(32, 32), mode="bilinear",
                                         align_corners=False)[:, 0].numpy()
    lo, hi = up.min(axis=(1, 2), keepdims=True), up.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(np.asarray(cams.cam_maps(tap, x, targets)), (up - lo) / (hi - lo), atol=1e-5)


def test_every_map_function_runs_under_jit(tiny):
    """README: every function is jit-compatible (CAM's linear-tail check cannot run on traced values: skipped)."""
    _, _, x, taps = tiny
    tap, targets = taps["act3"], jnp.array([3, 7])
    for fn in (cams.cam_maps, cams.gradcam_maps, cams.gradcampp_maps):
        jitted = jax.jit(lambda x, t, fn=fn: fn(tap, x, t))(x, targets)
        np.testing.assert_allclose(np.asarray(jitted), np.asarray(fn(tap, x, targets)), atol=1e-5)


def test_bad_seed_is_an_input_error(tiny):
    _, _, x, taps = tiny
    for seed in ("0", 1.5, -1, True):
        with pytest.raises(cj.errors.InputError, match="seed"):
            cams.rise_maps(taps["act3"], x, jnp.array([3, 7]), num_masks=8, seed=seed)


@pytest.mark.parametrize("layer", ["act2", "conv3"])
def test_cam_refuses_a_tap_with_a_nonlinear_tail(tiny, layer):
    _, _, x, taps = tiny
    with pytest.raises(InputError, match="CAM needs a tap right before global average pooling"):
        cj.explain(taps[layer], x, method="cam")


# --- Ablation-CAM and Score-CAM: weights against direct loops -----------------------------------


def test_ablation_weights_on_a_linear_tail_are_the_exact_channel_effects(tiny):
    _, variables, x, taps = tiny
    tap, targets = taps["act3"], jnp.array([3, 7])
    A = tap.head(x)
    kernel = np.asarray(variables["params"]["fc"]["kernel"])
    y = np.asarray(tap.tail(A))[[0, 1], [3, 7]]
    effect = np.asarray(A).mean(axis=(1, 2)) * kernel[:, [3, 7]].T  # y − y^(k): channel k's share of the logit
    for chunk in (5, 64):  # 16 channels: a padded last chunk, and one chunk
        W = cams.ablation_weights(tap.tail_fn, tap.variables, A, targets, chunk=chunk)
        np.testing.assert_allclose(np.asarray(W), effect / y[:, None], rtol=1e-4, atol=1e-6)


def test_scorecam_weights_match_a_channel_by_channel_loop(tiny):
    module, variables, x, taps = tiny
    tap, targets = taps["act3"], [3, 7]
    A = np.asarray(tap.head(x))
    logits = np.zeros((2, A.shape[-1]), np.float32)
    for k in range(A.shape[-1]):
        up = np.asarray(jax.image.resize(jnp.asarray(A[..., k]), (2, 32, 32), "bilinear", antialias=False))
        lo, hi = up.min(axis=(1, 2), keepdims=True), up.max(axis=(1, 2), keepdims=True)
        mask = np.where(hi > lo, (up - lo) / np.where(hi > lo, hi - lo, 1), 0)
        out = np.asarray(module.apply(variables, np.asarray(x) * mask[..., None]))
        logits[:, k] = out[[0, 1], targets]
    want = np.exp(logits - logits.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)  # pytorch-grad-cam: softmax over channels of the target logits
    got = cams.scorecam_weights(tap.head_fn, tap.tail_fn, tap.variables, x, jnp.asarray(A), jnp.array(targets), chunk=6)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-6)


# --- chunking, seeds ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["scorecam", "ablationcam", "rise"])
def test_chunk_size_does_not_change_the_map(tiny, method):
    _, _, x, taps = tiny
    fn, kw = cams.MAP_FUNCTIONS[method], dict(num_masks=40) if method == "rise" else {}
    a = np.asarray(fn(taps["act3"], x, jnp.array([3, 7]), chunk_size=6, **kw))
    b = np.asarray(fn(taps["act3"], x, jnp.array([3, 7]), chunk_size=64, **kw))
    np.testing.assert_allclose(a, b, atol=2e-5)


def test_rise_is_deterministic_per_seed(tiny):
    _, _, x, taps = tiny
    run = lambda seed: np.asarray(cams.rise_maps(taps["act3"], x, jnp.array([3, 7]), num_masks=40, seed=seed,
                                                 chunk_size=40))
    np.testing.assert_array_equal(run(0), run(0))
    assert np.abs(run(0) - run(1)).max() > 0.05


def test_rise_masks_have_the_papers_statistics():
    masks = np.asarray(cams.rise_masks(jax.random.PRNGKey(0), jnp.arange(400), (32, 32), grid=7, keep_prob=0.5))
    assert masks.shape == (400, 32, 32) and masks.min() >= 0 and masks.max() <= 1
    assert abs(masks.mean() - 0.5) < 0.02
    assert len({m.tobytes() for m in masks}) == 400  # random shifts and grids: no two alike


def numpy_rise_masks(draws: np.ndarray, size: int, grid: int, keep_prob: float) -> np.ndarray:
    """RISE's masks as its authors' ``generate_masks`` builds them, from given uniform draws ``(N, grid² + 2)``.

    Cells kept where the draw is below ``keep_prob``; the ``grid × grid`` grid is upsampled (bilinear,
    scikit-image) to ``(grid + 1) · cell`` with ``cell = ceil(size / grid)`` and cropped to ``size`` at a
    shift in ``[0, cell)`` from the last two draws. The authors' code pads with ``mode="reflect"``; this uses
    ``"edge"`` (chipjax's convention, jax.image.resize's), which only differs on the outer half cell.
    """
    from skimage.transform import resize

    cell = -(-size // grid)
    up = (grid + 1) * cell
    masks = []
    for u in draws:
        coarse = (u[:-2] < keep_prob).astype(np.float64).reshape(grid, grid)
        fine = resize(coarse, (up, up), order=1, mode="edge", anti_aliasing=False)
        dy, dx = (min(int(v * cell), cell - 1) for v in u[-2:])
        masks.append(fine[dy:dy + size, dx:dx + size])
    return np.stack(masks).astype(np.float32)


def test_rise_matches_a_numpy_reference_from_the_paper(tiny):
    """Saliency Σ_i P(c | x ⊙ M_i) · M_i / (N · p) (Petsiuk et al. 2018), masks from the same draws."""
    module, variables, x, taps = tiny
    n, grid, p, seed, targets = 96, 4, 0.5, 3, [3, 7]
    key = jax.random.PRNGKey(seed)
    draws = np.stack([np.asarray(jax.random.uniform(jax.random.fold_in(key, i), (grid * grid + 2,)))
                      for i in range(n)])
    masks = numpy_rise_masks(draws, 32, grid, p)  # (N, 32, 32)
    np.testing.assert_allclose(np.asarray(cams.rise_masks(key, jnp.arange(n), (32, 32), grid, p)), masks, atol=1e-6)
    xs = np.asarray(x)
    sal = np.zeros((2, 32, 32))
    for b, t in enumerate(targets):
        logits = np.asarray(module.apply(variables, xs[b][None] * masks[..., None]), np.float64)  # (N, 10)
        prob = np.exp(logits - logits.max(1, keepdims=True))
        prob = prob[:, t] / prob.sum(1)
        sal[b] = np.tensordot(prob, masks, axes=1) / (n * p)
    lo, hi = sal.min(axis=(1, 2), keepdims=True), sal.max(axis=(1, 2), keepdims=True)
    ours = np.asarray(cj.explain(taps["act3"], x, method="rise", target=targets, num_masks=n, grid=grid,
                                 keep_prob=p, seed=seed, chunk_size=32))
    np.testing.assert_allclose(ours, (sal - lo) / (hi - lo), atol=1e-4)


def test_rise_finds_the_only_region_the_score_depends_on():
    """A 'network' scoring the mean of one 8×8 square: RISE must light that square up."""

    def head_fn(variables, x):
        return x

    def tail_fn(variables, a):
        inside = a[:, 4:12, 18:26, 0].mean(axis=(1, 2))
        return jnp.stack([inside, jnp.zeros_like(inside)], axis=-1)

    tap = Tap(layer="input", head_fn=head_fn, tail_fn=tail_fn, variables={})
    maps = np.asarray(cj.explain(tap, jnp.ones((1, 32, 32, 3)), method="rise", target=0, num_masks=400,
                                 score="logit"))[0]
    box = np.zeros((32, 32), bool)
    box[4:12, 18:26] = True
    assert maps[box].mean() > 0.6 and maps[~box].mean() < 0.35
    assert np.unravel_index(maps.argmax(), maps.shape) in {(i, j) for i in range(2, 14) for j in range(16, 28)}


# --- argument errors ---------------------------------------------------------------------------


def test_bad_options_raise_input_errors(tiny):
    _, _, x, taps = tiny
    tap, t = taps["act3"], jnp.array([3, 7])
    with pytest.raises(InputError, match="chunk_size"):
        cams.ablationcam_maps(tap, x, t, chunk_size=0)
    with pytest.raises(InputError, match="score"):
        cams.scorecam_maps(tap, x, t, score="softmax")
    with pytest.raises(InputError, match="num_masks"):
        cams.rise_maps(tap, x, t, num_masks=0)
    with pytest.raises(InputError, match="keep_prob"):
        cams.rise_maps(tap, x, t, keep_prob=1.5)
    flat = Tap(layer="pooled", head_fn=lambda v, x: x.mean(axis=(1, 2)), tail_fn=lambda v, a: a, variables={})
    with pytest.raises(InputError, match="not feature maps"):
        cams.gradcam_maps(flat, x, t)


# --- at jax's default matmul precision, as users on GPU/TPU run ------------------------------------


@pytest.mark.default_precision
@pytest.mark.parametrize("method", ["chip", "gradcam", "rise"])
def test_maps_at_default_precision_agree_with_highest(tiny, method):
    """Tests run at "highest" to compare with references; users run at the default. The maps must not move."""
    _, _, x, taps = tiny
    options = {"chip": dict(num_masks=128), "rise": dict(num_masks=48, chunk_size=32)}.get(method, {})
    default = np.asarray(cj.explain(taps["act3"], x, method=method, target=[3, 7], **options))
    with jax.default_matmul_precision("highest"):
        highest = np.asarray(cj.explain(taps["act3"], x, method=method, target=[3, 7], **options))
    assert np.isfinite(default).all() and default.min() >= 0.0 and default.max() <= 1.0
    for b in range(2):
        assert pearson(default[b], highest[b]) >= 0.999, (method, b, pearson(default[b], highest[b]))


@pytest.mark.default_precision
def test_the_default_precision_marker_is_in_force():
    assert jax.config.jax_default_matmul_precision == "default"


# --- parity with PyTorch on a converted ResNet-18 ------------------------------------------------


@pytest.fixture(scope="module")
def resnet18_pair(tmp_path_factory):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.resnet18().eval()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(net.state_dict(), path)
    model = cj.load_model("resnet18", weights=str(path))
    x = np.random.default_rng(0).standard_normal((2, 128, 128, 3)).astype(np.float32)
    return net, model, x


def torch_maps(net, x, targets, method, layer):
    """Grad-CAM / Grad-CAM++ / Ablation-CAM at ``layer`` (layer3 or layer4) computed directly in PyTorch.

    Hooks and autograd for the gradients; for Ablation-CAM every channel of the layer's
    output zeroed in turn and the rest of the network run on it.
    """
    import torch
    import torch.nn.functional as F

    xt = torch.from_numpy(x).permute(0, 3, 1, 2)
    t = torch.as_tensor(targets)
    rows = torch.arange(len(targets))
    saved = {}
    handle = getattr(net, layer).register_forward_hook(lambda m, i, o: saved.update(a=o))
    logits = net(xt)
    handle.remove()
    A = saved["a"]  # (B, K, h, w)
    if method == "ablationcam":
        with torch.no_grad():
            y = logits[rows, t]
            K = A.shape[1]
            ablated = A[:, None].repeat(1, K, 1, 1, 1)  # (B, K, K, h, w): copy k has channel k zeroed
            ablated[:, torch.arange(K), torch.arange(K)] = 0
            rest = ablated.flatten(0, 1)
            if layer == "layer3":
                rest = net.layer4(rest)
            y_k = net.fc(net.avgpool(rest).flatten(1)).view(len(targets), K, -1)[rows, :, t]
            weights = (y[:, None] - y_k) / y[:, None]
    else:
        grads = torch.autograd.grad(logits[rows, t].sum(), A)[0]
        if method == "gradcam":
            weights = grads.mean(dim=(2, 3))
        else:  # pytorch-grad-cam's GradCAMPlusPlus
            g2, g3 = grads ** 2, grads ** 3
            alpha = g2 / (2 * g2 + A.sum(dim=(2, 3), keepdim=True) * g3 + 1e-6)
            alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
            weights = (alpha * F.relu(grads)).sum(dim=(2, 3))
    with torch.no_grad():
        cam = F.relu((weights[:, :, None, None] * A).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[1:3], mode="bilinear", align_corners=False)[:, 0]
        lo = cam.amin(dim=(1, 2), keepdim=True)
        hi = cam.amax(dim=(1, 2), keepdim=True)
        return ((cam - lo) / (hi - lo)).numpy()


@pytest.mark.parametrize("method, layer", [("gradcam", "layer4"), ("gradcam++", "layer4"), ("ablationcam", "layer4"),
                                           ("gradcam", "layer3"), ("ablationcam", "layer3")])
def test_maps_match_pytorch(resnet18_pair, method, layer):
    net, model, x = resnet18_pair
    targets = [381, 7]
    ours = np.asarray(cj.explain(model, x, method=method, layer=layer, target=targets))
    ref = torch_maps(net, x, targets, method, layer)
    for b in range(2):
        assert pearson(ours[b], ref[b]) >= 0.99, (method, layer, b, pearson(ours[b], ref[b]))
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_cam_on_resnet_layer4_is_the_torch_fc_weighted_sum_and_refuses_layer4_0(resnet18_pair):
    import torch
    import torch.nn.functional as F

    net, model, x = resnet18_pair
    targets = [381, 7]
    ours = np.asarray(cj.explain(model, x, method="cam", layer="layer4", target=targets))
    saved = {}
    handle = net.layer4.register_forward_hook(lambda m, i, o: saved.update(a=o))
    with torch.no_grad():
        net(torch.from_numpy(x).permute(0, 3, 1, 2))
        handle.remove()
        cam = F.relu(torch.einsum("bkhw,bk->bhw", saved["a"], net.fc.weight[targets]))[:, None]
        cam = F.interpolate(cam, size=x.shape[1:3], mode="bilinear", align_corners=False)[:, 0].numpy()
    lo, hi = cam.min(axis=(1, 2), keepdims=True), cam.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(ours, (cam - lo) / (hi - lo), atol=1e-4)
    with pytest.raises(InputError, match="use gradcam here"):
        cj.explain(model, x, method="cam", layer="layer4.0")


#: Score-CAM against pytorch-grad-cam's ``ScoreCAM`` (ResNet-18 ``layer3``, 64 px: 4 × 4 × 256). Its channel
#: masks are upsampled with ``UpsamplingBilinear2d`` (align_corners=True) and min-max scaled with a 1e-8
#: guard; chipjax upsamples with half-pixel centres (as every other resize in chipjax and as the Score-CAM
#: paper's code), so the weights differ slightly. Measured on this pair (2026-12-02): Pearson r 0.9998,
#: max |difference| 0.011 of the [0, 1] maps; the bounds leave a margin over those figures.
SCORECAM_MIN_PEARSON, SCORECAM_MAX_DIFF = 0.999, 0.03


def test_scorecam_matches_pytorch_grad_cam(resnet18_pair):
    import torch
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net, model, x = resnet18_pair
    x64 = np.array(jax.image.resize(jnp.asarray(x[:1]), (1, 64, 64, 3), "bilinear"))
    target = int(np.asarray(model(x64)).argmax())
    ours = np.asarray(cj.explain(model, x64, method="scorecam", layer="layer3", target=[target]))[0]
    with ScoreCAM(model=net, target_layers=[net.layer3]) as cam:
        cam.batch_size = 64
        ref = cam(input_tensor=torch.from_numpy(x64).permute(0, 3, 1, 2),
                  targets=[ClassifierOutputTarget(target)])[0]
    r = pearson(ours, ref)
    print(f"Score-CAM vs pytorch-grad-cam: pearson {r:.4f}, max |diff| {np.abs(ours - ref).max():.4f}")
    assert r >= SCORECAM_MIN_PEARSON and np.abs(ours - ref).max() <= SCORECAM_MAX_DIFF, r
