"""ResNet (chipjax.models.resnet) and its torchvision key map against torchvision on CPU."""
from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from test_layers import numpy_state_dict, randomize_batchnorm, torch_unit_outputs

from chipjax.errors import ModelError, WeightsError
from chipjax.models.resnet import convert_resnet, resnet_key_table
from chipjax.models import variable_shapes
from chipjax.models.base import Model, tap_names
from chipjax.models.preprocess import IMAGENET_MEAN, IMAGENET_STD
from chipjax.models.resnet import resnet_spec


def torch_resnet(depth: int) -> torch.nn.Module:
    """torchvision ``resnet{depth}``, seeded random init, random BN statistics, eval mode."""
    torch.manual_seed(0)
    return randomize_batchnorm(getattr(torchvision.models, f"resnet{depth}")(), seed=1).eval()


@functools.lru_cache(maxsize=None)
def resnet_pair(depth: int) -> tuple[torch.nn.Module, Model]:
    """The torch reference and our model with its converted weights (built once per depth)."""
    tmodel = torch_resnet(depth)
    return tmodel, Model(resnet_spec(depth), convert_resnet(numpy_state_dict(tmodel), depth), "torchvision-random")


@pytest.fixture(scope="module")
def resnet18_pair():
    return resnet_pair(18)


@pytest.fixture(scope="module")
def resnet18_state():
    return numpy_state_dict(resnet_pair(18)[0])


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_key_table_matches_torchvision_state_dict(depth):
    with torch.device("meta"):  # shapes only, no memory
        tmodel = getattr(torchvision.models, f"resnet{depth}")()
    want = {k: tuple(v.shape) for k, v in tmodel.state_dict().items() if not k.endswith("num_batches_tracked")}
    got = {k: entry.torch_shape for k, entry in resnet_key_table(depth).items()}
    assert got == want


@pytest.mark.parametrize("depth", [18, 50])
def test_logits_match_torchvision(rng, depth):
    tmodel, model = resnet_pair(depth)
    x = rng.standard_normal((2, 64, 64, 3)).astype(np.float32)
    with torch.no_grad():
        ref = tmodel(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    out = np.asarray(model(jnp.asarray(x)))
    err = np.abs(out - ref).max()
    print(f"resnet{depth} max-abs logit error {err:.2e} (max |logit| {np.abs(ref).max():.2f})")
    assert out.shape == (2, 1000)
    assert err <= 1e-4
    assert err <= 2e-5 * np.abs(ref).max()


def test_every_unit_tap_matches_torch_module_output(rng, resnet18_pair):
    tmodel, model = resnet18_pair
    units = model.spec.units[:-1]
    x = rng.standard_normal((1, 32, 32, 3)).astype(np.float32)
    ref = torch_unit_outputs(tmodel, units, x)
    for unit in units:
        a = np.asarray(model.tap(unit).head_fn(model.variables, jnp.asarray(x)))  # eager: no compile per tap
        assert a.shape == ref[unit].shape, unit
        np.testing.assert_allclose(a, ref[unit], atol=1e-4, err_msg=unit)


def test_tail_of_head_is_the_model_at_every_tap(rng, resnet18_pair):
    _, model = resnet18_pair
    x = jnp.asarray(rng.standard_normal((2, 32, 32, 3)).astype(np.float32))
    logits = np.asarray(model(x))
    for layer in model.layers:
        tap = model.tap(layer)
        out = tap.tail_fn(model.variables, tap.head_fn(model.variables, x))
        np.testing.assert_allclose(np.asarray(out), logits, rtol=1e-5, atol=1e-5 * np.abs(logits).max(), err_msg=layer)


def test_module_inits_at_64_px_with_the_converted_structure():
    spec = resnet_spec(50)
    shapes = variable_shapes(spec)  # traces module.init on (1, 64, 64, 3), as the registry does
    assert set(shapes) == {"params", "batch_stats"}
    assert shapes["params"]["units_2"]["downsample.0"]["kernel"].shape == (1, 1, 64, 256)
    assert shapes["params"][f"units_{len(spec.units) - 1}"]["kernel"].shape == (2048, 1000)


def test_layer_names_and_order():
    spec = resnet_spec(50)
    layers = tap_names(spec.units, spec.aliases)  # what Model.layers lists
    assert layers[:3] == ["relu", "maxpool", "layer1.0"]
    assert layers[-2:] == ["layer4", "avgpool"]
    i = layers.index("layer3.5")
    assert layers[i + 1] == "layer3" and layers[i - 1] == "layer3.4"
    assert "fc" not in layers  # the last unit is the output, not a tap
    assert spec.default_layer == "layer4" and spec.stage_layers == ("layer2", "layer3", "layer4")
    assert set(spec.stage_layers) <= set(layers)
    assert [n for n in spec.units if n.startswith("layer")] == [
        f"layer{s}.{i}" for s, n in enumerate((3, 4, 6, 3), start=1) for i in range(n)
    ]


def test_spec_preprocessing():
    spec = resnet_spec(34)
    assert spec.name == "resnet34" and spec.input_size == 224 and spec.pretrained is None
    view = spec.view(np.zeros((300, 400, 3), np.uint8))
    assert view.shape == (224, 224, 3)
    np.testing.assert_allclose(spec.normalize(np.full((1, 1, 3), 255, np.uint8))[0, 0], (1 - np.array(IMAGENET_MEAN)) / IMAGENET_STD, rtol=1e-6)


def test_unknown_depth_is_a_model_error():
    with pytest.raises(ModelError, match="18, 34, 50, 101, 152"):
        resnet_spec(20)


def test_missing_key_is_named(resnet18_state):
    state = dict(resnet18_state)
    del state["layer2.0.downsample.1.running_var"]
    with pytest.raises(WeightsError, match=r"layer2\.0\.downsample\.1\.running_var"):
        convert_resnet(state, 18)


def test_extra_key_is_named(resnet18_state):
    state = dict(resnet18_state, **{"layer5.0.conv1.weight": np.zeros((1, 1, 1, 1), np.float32)})
    with pytest.raises(WeightsError, match=r"layer5\.0\.conv1\.weight"):
        convert_resnet(state, 18)


def test_misshaped_key_is_named(resnet18_state):
    state = dict(resnet18_state, **{"fc.weight": np.zeros((10, 512), np.float32)})
    with pytest.raises(WeightsError, match=r"'fc\.weight' has shape \(10, 512\).*\(1000, 512\)"):
        convert_resnet(state, 18)


def test_wrong_depth_and_wrapped_checkpoints_say_what_to_do(resnet18_state):
    with pytest.raises(WeightsError, match=r"lacks .*layer1\.0\.conv3\.weight.*another architecture"):
        convert_resnet(resnet18_state, 50)
    wrapped = {"module." + k: v for k, v in resnet18_state.items()}
    with pytest.raises(WeightsError, match="strip that prefix"):
        convert_resnet(wrapped, 18)


def test_num_batches_tracked_is_optional(resnet18_state):
    state = {k: v for k, v in resnet18_state.items() if not k.endswith("num_batches_tracked")}
    variables = resnet_spec(18).convert(state)
    assert set(variables) == {"params", "batch_stats"}
    np.testing.assert_array_equal(
        np.asarray(variables["params"]["units_0"]["conv1"]["kernel"]), state["conv1.weight"].transpose(2, 3, 1, 0)
    )


def test_channel_masks_after_the_pooling_equal_torch_with_masked_taps(rng, resnet18_pair):
    """``layer4`` taps sweep after the global pooling and ``relu`` after the stem's max-pool
    (:func:`chipjax.tap.channel_mask_site`); the logits equal torchvision's with the tapped module's
    output multiplied by the mask (a forward hook)."""
    import jax

    from chipjax.tap import channel_mask_site

    tmodel, model = resnet18_pair
    x = rng.standard_normal((2, 64, 64, 3)).astype(np.float32)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    for layer, prefixed in (("layer4", True), ("relu", True), ("layer3", False)):
        tap = model.tap(layer)
        assert (tap.prefix_fn is not None) == prefixed
        a = tap.head(jnp.asarray(x))
        tail_fn, variables, site = channel_mask_site(tap, a)
        K = a.shape[-1]
        for m in (rng.uniform(size=(3, K)) < 0.5).astype(np.float32):
            mask = torch.from_numpy(m)[None, :, None, None]
            hook = dict(tmodel.named_modules())[layer].register_forward_hook(lambda mod, inp, out: out * mask)
            try:
                with torch.no_grad():
                    want = tmodel(xt).numpy()
            finally:
                hook.remove()
            got = np.asarray(jax.jit(tail_fn)(variables, site * m))
            np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())


def test_bottleneck_entry_ablates_a_channel_as_torch_does(rng):
    """At a tap before a Bottleneck the tail splits into an entry linear in the features (``conv1`` and
    the shortcut) and an exit; one channel's ablation is a rank-1 update of the entry
    (:func:`chipjax.tap.ablated_entry`). Its logits equal torchvision's with that channel of the tapped
    module's output zeroed (a forward hook), for a downsampling block (``layer3`` -> ``layer4.0``) and an
    identity one (``layer3.2`` -> ``layer3.3``); Ablation-CAM's weights equal the whole-tail ones."""
    import jax

    from chipjax import cams
    from chipjax.tap import ablated_entry

    tmodel, model = resnet_pair(50)
    x = rng.standard_normal((2, 64, 64, 3)).astype(np.float32)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    for layer, module in (("layer3", "layer3"), ("layer3.2", "layer3.2")):
        tap = model.tap(layer)
        assert tap.entry_fn is not None and (tap.entry_terms[1][0] is None) == (layer == "layer3.2")
        a = tap.head(jnp.asarray(x))
        entry = tap.entry_fn(tap.variables, a)
        ablated = jax.jit(lambda v, a, e, c: tap.exit_fn(v, ablated_entry(e, tap.entry_terms, v, a, c)))
        for c in rng.choice(a.shape[-1], 4, replace=False):
            keep = torch.ones(a.shape[-1])
            keep[int(c)] = 0
            hook = dict(tmodel.named_modules())[module].register_forward_hook(
                lambda mod, inp, out: out * keep[None, :, None, None])
            try:
                with torch.no_grad():
                    want = tmodel(xt).numpy()
            finally:
                hook.remove()
            got = np.asarray(ablated(tap.variables, a, entry, jnp.int32(c)))
            np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
        targets = jnp.argmax(tap.tail(a), -1)
        whole = cams.ablation_weights(tap.tail_fn, tap.variables, a, targets, chunk=128)
        split = cams.ablation_weights(tap.tail_fn, tap.variables, a, targets, chunk=128,
                                      entry=(tap.entry_fn, tap.exit_fn, tap.entry_terms))
        np.testing.assert_allclose(split, whole, atol=1e-4 * float(jnp.abs(whole).max()))
