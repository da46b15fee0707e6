"""Reliability: the bad-input catalogue, property tests of the shared map/box code, determinism.

* **Catalogue.** Every bad input gets a typed :mod:`chipjax.errors` error whose message names the
  problem and the fix (library side), and one stderr line with exit code 2 from
  :func:`chipjax.cli.main` (CLI side, where the CLI exposes the case); what was already written
  stays as it was. Odd but valid images (16-bit, palette, grayscale, RGBA, CMYK, 1×1, huge) are
  converted, and the produced arrays are checked against hand-computed values.
* **Read-only folders.** The tests run as root, for whom ``chmod`` stops nothing. A read-only
  folder is simulated two ways: ``os.access`` mocked to deny writing to one temporary folder (this
  checks that the pre-write test refuses, before anything is written), and ``/proc/sys``, which
  container runtimes mount read-only and ``os.access`` reports as such even to root (those cases
  are skipped where it is writable).
* **Determinism.** Mask ``i`` comes from ``fold_in(PRNGKey(seed), i)``: the same seed gives
  bit-identical maps and class-level W (also from a freshly built, recompiled model); another
  seed differs; chunk sizes (memory per step) agree to float32 rounding only, as documented in
  :func:`chipjax.explain`.

A random-init ResNet-18 (torchvision's initialisation, read from an .npz: no Flax init to compile)
at 64 px wherever a trained net is not needed; the CLI runs with its default model (the shipped
EfficientNet-Lite0 weights, loaded offline).
"""
from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

import chipjax as cj
from chipjax import heatmaps, metrics
from chipjax import io as cjio
from chipjax.chip import CHIP
from chipjax.cli import main
from chipjax.errors import (ImageError, InputError, LayerError, ModelError, UnsafeCheckpointError, WeightsError)
from chipjax.models import get_spec, tap_names
from chipjax.models.base import Model
from chipjax.models.preprocess import load_image, to_rgb_uint8

READ_ONLY = "/proc/sys"
needs_read_only_fs = pytest.mark.skipif(
    not os.path.isdir(READ_ONLY) or os.access(READ_ONLY, os.W_OK),
    reason=f"{READ_ONLY} is writable here: no read-only folder to test against")

EFF = get_spec("efficientnet_lite0")
EFF_LAYERS = tap_names(EFF.units, EFF.aliases)


# ================================================================================================
# Fixtures: one folder of bad and odd files, one small random-init model
# ================================================================================================


class Payload:
    """Unpickling this runs ``os.system("touch <marker>")``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming ``width × height`` RGB pixels with almost no data: a decompression-bomb header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def cut(data: bytes, fraction: float = 0.5) -> bytes:
    return data[: int(len(data) * fraction)]


def damage(data: bytes, at: int, n: int = 32) -> bytes:
    """``data`` with ``n`` bytes from ``at`` inverted."""
    return data[:at] + bytes(255 - b for b in data[at:at + n]) + data[at + n:]


class Files:
    """Paths of the fixture files; ``f[name]`` is ``str(root / name)``."""

    def __init__(self, root):
        self.root = root

    def __getitem__(self, name: str) -> str:
        return str(self.root / name)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import torch
    import torchvision

    root = tmp_path_factory.mktemp("reliability")
    f = Files(root)
    torch.manual_seed(0)
    np.savez(f["resnet18.npz"], **{k: v.numpy() for k, v in torchvision.models.resnet18().state_dict().items()})
    rgb = (np.random.default_rng(1).random((24, 32, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(f["ok.png"])
    Image.fromarray(rgb).save(f["ok.jpg"], quality=95)
    (root / "empty.png").write_bytes(b"")
    (root / "truncated.png").write_bytes(cut(open(f["ok.png"], "rb").read()))
    (root / "truncated.jpg").write_bytes(cut(open(f["ok.jpg"], "rb").read()))
    (root / "notes.png").write_text("not a picture\n")
    (root / "a_folder.png").mkdir()
    (root / "bomb.png").write_bytes(png_header_only(100_000, 100_000))
    nan_field = np.ones((8, 8), np.float32)
    nan_field[3, 3] = np.nan
    Image.fromarray(nan_field, mode="F").save(f["nan.tiff"])

    # weights: another architecture, damaged files, a pickle that runs a command
    r34 = torchvision.models.resnet34(weights=None).state_dict()
    torch.save(r34, f["resnet34.pth"])
    small = {k: v.numpy() for k, v in list(r34.items())[:12]}
    np.savez(f["small.npz"], **small)
    from safetensors.numpy import save_file

    save_file(small, f["small.safetensors"])
    pth, st_, npz = (open(f[n], "rb").read() for n in ("resnet34.pth", "small.safetensors", "small.npz"))
    (root / "truncated.pth").write_bytes(cut(pth))
    (root / "truncated.safetensors").write_bytes(cut(st_))
    (root / "truncated.npz").write_bytes(cut(npz))
    (root / "corrupt.pth").write_bytes(damage(pth, len(pth) // 3))          # inside a storage: zip CRC fails
    (root / "corrupt.safetensors").write_bytes(damage(st_, 9, 16))          # inside the JSON header
    (root / "corrupt.npz").write_bytes(damage(npz, len(npz) // 2))          # inside an array: zip CRC fails
    torch.save({"conv1.weight": Payload(root / "PWNED_zip")}, f["evil.pth"])
    (root / "evil.pkl").write_bytes(pickle.dumps({"conv1.weight": Payload(root / "PWNED_raw")}, protocol=2))
    f.model = cj.load_model("resnet18", weights=f["resnet18.npz"])  # torchvision's random init
    cjio.save_variables(f.model.variables, f["resnet18_vars"], {"arch": "resnet18"})

    # class-level CHIP models fitted elsewhere (written as `chipjax fit` writes them)
    w = np.random.default_rng(2).normal(size=(512, 1000)).astype(np.float32)
    CHIP(weights=w, arch="resnet18", layer="layer4", config={}).save(f["chip_r18_layer4"])
    CHIP(weights=w, arch="resnet34", layer="layer4", config={}).save(f["chip_r34_layer4"])
    other = next(l for l in EFF.stage_layers if l != EFF.default_layer)
    CHIP(weights=w, arch="efficientnet_lite0", layer=other, config={}).save(f["chip_eff_other_layer"])

    os.makedirs(f["data/281"])
    Image.fromarray(rgb).save(f["data/281/cat.png"])
    return f


@pytest.fixture(scope="module")
def model(files):
    """A random-init ResNet-18 (loading torchvision's initialisation skips compiling Flax's init)."""
    return files.model


@pytest.fixture(scope="module")
def x64():
    return jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32))


@pytest.fixture
def locked(tmp_path, monkeypatch):
    """A folder ``os.access`` says cannot be written to (root ignores chmod, so the check is mocked)."""
    folder = tmp_path / "locked"
    folder.mkdir()
    real_access = os.access

    def access(path, mode, *args, **kwargs):
        if os.path.abspath(os.fspath(path)) == str(folder) and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    return folder


def one_error_line(argv, capsys, *words) -> str:
    """Run the CLI in-process: exit code 2, exactly one stderr line containing ``words``, no traceback."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word.lower() in err.lower(), err
    return err


# ================================================================================================
# The catalogue, library side
# ================================================================================================

def _nan(x):
    x = np.array(x)
    x[0, 5, 7, 1] = np.nan
    return x


def _inf(x):
    x = np.array(x)
    x[-1, 0, 0, 0] = -np.inf
    return x


# (case, call(files, model, x), error type, words the message must hold)
LIBRARY_CASES = [
    # image files
    ("missing image", lambda f, m, x: to_rgb_uint8(f["missing.png"]), ImageError, ["not found"]),
    ("empty image", lambda f, m, x: to_rgb_uint8(f["empty.png"]), ImageError, ["empty"]),
    ("truncated png", lambda f, m, x: to_rgb_uint8(f["truncated.png"]), ImageError, ["truncated", "re-export"]),
    ("truncated jpeg", lambda f, m, x: to_rgb_uint8(f["truncated.jpg"]), ImageError, ["truncated", "re-export"]),
    ("not an image", lambda f, m, x: to_rgb_uint8(f["notes.png"]), ImageError, ["not an image", "PNG, JPEG"]),
    ("a folder", lambda f, m, x: m.preprocess(f["a_folder.png"]), ImageError, ["folder, not an image"]),
    ("decompression bomb", lambda f, m, x: to_rgb_uint8(f["bomb.png"]), ImageError,
     ["too large to open safely", "10000000000 pixels", "MAX_IMAGE_PIXELS"]),
    ("NaN in a float image file", lambda f, m, x: to_rgb_uint8(f["nan.tiff"]), InputError, ["nan.tiff: ", "NaN"]),
    ("negative image array", lambda f, m, x: to_rgb_uint8(-np.ones((4, 4), np.int16)), InputError, ["negative"]),
    ("5 colour channels", lambda f, m, x: to_rgb_uint8(np.zeros((4, 4, 5), np.uint8)), InputError, ["1, 3 or 4"]),
    # arrays given to the model and to cj.explain
    ("NaN into model(x)", lambda f, m, x: m(_nan(x)), InputError, ["NaN or Inf", "clean"]),
    ("Inf into cj.explain", lambda f, m, x: cj.explain(m, _inf(x), method="gradcam", layer="layer4"),
     InputError, ["NaN or Inf"]),
    ("NaN into cj.explain (chip)", lambda f, m, x: cj.explain(m, _nan(x), layer="layer4", num_masks=8),
     InputError, ["NaN or Inf"]),
    ("rank 3 (no batch axis)", lambda f, m, x: m(x[0]), InputError, ["leading batch axis", "x[None]"]),
    ("rank 5", lambda f, m, x: cj.explain(m, x[None], method="gradcam"), InputError, ["(B, H, W, 3)"]),
    ("NCHW layout", lambda f, m, x: m(jnp.transpose(x, (0, 3, 1, 2))), InputError, ["(B, H, W, 3)", "NHWC"]),
    ("4 channels", lambda f, m, x: cj.explain(m, jnp.zeros((1, 64, 64, 4))), InputError, ["(B, H, W, 3)"]),
    ("uint8 not preprocessed", lambda f, m, x: m(np.zeros((1, 64, 64, 3), np.uint8)), InputError,
     ["float images", "model.preprocess"]),
    ("empty batch", lambda f, m, x: cj.explain(m, x[:0], method="gradcam"), InputError, ["empty"]),
    ("not an array", lambda f, m, x: m("photo.jpg"), InputError, ["float array", "model.preprocess"]),
    # models, layers, classes
    ("unknown model name", lambda f, m, x: cj.load_model("resnet9000", weights=None), ModelError,
     ["unknown model 'resnet9000'", "resnet18", "efficientnet_lite0"]),
    ("unknown layer", lambda f, m, x: cj.explain(m, x, method="gradcam", layer="layer9"), LayerError,
     ["unknown layer 'layer9'", "Valid layers: relu, maxpool", "layer4.1, layer4, avgpool"]),
    ("class index 1000", lambda f, m, x: cj.explain(m, x, method="gradcam", layer="layer4", target=1000),
     InputError, ["class index 1000 is out of range", "0..999"]),
    ("class index -1", lambda f, m, x: cj.explain(m, x, method="gradcam", layer="layer4", target=-1),
     InputError, ["out of range"]),
    ("class index 2.5", lambda f, m, x: cj.explain(m, x, method="gradcam", layer="layer4", target=2.5),
     InputError, ["whole number"]),
    ("class name not found", lambda f, m, x: cj.explain(m, x, method="gradcam", layer="layer4", target="tabbby"),
     InputError, ["'tabbby' not found", "did you mean 'tabby'"]),
    ("unknown option", lambda f, m, x: cj.explain(m, x, method="gradcam", num_masks=8), InputError,
     ["takes no option num_masks", "it takes no options"]),
    ("misspelt option", lambda f, m, x: cj.explain(m, x, method="chip", num_mask=8), InputError,
     ["takes no option num_mask;", "num_masks", "keep_prob"]),
    # weights
    ("resnet34 weights into resnet18", lambda f, m, x: cj.load_model("resnet18", weights=f["resnet34.pth"]),
     WeightsError, ["'layer1.2.conv1.weight'", "another architecture"]),
    ("efficientnet checkpoint into resnet50", lambda f, m, x: cj.load_model("resnet50", weights=EFF.pretrained()),
     WeightsError, ["lacks", "another architecture"]),
    ("resnet18 orbax folder into resnet50", lambda f, m, x: cj.load_model("resnet50", weights=f["resnet18_vars"]),
     WeightsError, ["converted for resnet18", "load_model('resnet18'"]),
    ("missing weights file", lambda f, m, x: cj.load_model("resnet18", weights=f["nope.pth"]), WeightsError,
     ["not found"]),
    ("weights neither path nor None", lambda f, m, x: cj.load_model("resnet18", weights=5), WeightsError,
     ["'pretrained', None"]),
    ("truncated .pth", lambda f, m, x: cj.load_model("resnet18", weights=f["truncated.pth"]), WeightsError,
     ["truncated"]),
    ("truncated .safetensors", lambda f, m, x: cj.load_model("resnet18", weights=f["truncated.safetensors"]),
     WeightsError, ["truncated"]),
    ("truncated .npz", lambda f, m, x: cj.load_model("resnet18", weights=f["truncated.npz"]), WeightsError,
     ["truncated"]),
    ("corrupt .pth", lambda f, m, x: cj.load_model("resnet18", weights=f["corrupt.pth"]), WeightsError,
     ["corrupt"]),
    ("corrupt .safetensors", lambda f, m, x: cj.load_model("resnet18", weights=f["corrupt.safetensors"]),
     WeightsError, ["corrupt"]),
    ("corrupt .npz", lambda f, m, x: cj.load_model("resnet18", weights=f["corrupt.npz"]), WeightsError,
     ["corrupt"]),
    # CHIP options
    *[(f"keep_prob {p}", lambda f, m, x, p=p: cj.explain(m, x, layer="layer4", num_masks=8, keep_prob=p),
       InputError, ["keep_prob (--keep-prob) must be a number in (0, 1)", "stays on"]) for p in (0.0, 1.0, -0.5, 1.5, float("nan"))],
    ("keep_prob 1 in CHIP.fit", lambda f, m, x: CHIP.fit(m, "layer4", [x], num_masks=8, keep_prob=1.0),
     InputError, ["keep_prob"]),
    ("zero masks (chip)", lambda f, m, x: cj.explain(m, x, layer="layer4", num_masks=0), InputError,
     ["num_masks (--masks) must be an integer in [2, "]),
    ("zero masks (rise)", lambda f, m, x: cj.explain(m, x, method="rise", num_masks=0), InputError,
     ["num_masks (--masks) must be an integer in [1, "]),
    ("negative lam_ratio", lambda f, m, x: cj.explain(m, x, layer="layer4", num_masks=8, lam_ratio=-0.1),
     InputError, ["lam_ratio (--lam-ratio) must be a number in [0, 1)", "zeroes every weight"]),
    ("negative lam_ratio in CHIP.fit", lambda f, m, x: CHIP.fit(m, "layer4", [x], num_masks=8, lam_ratio=-0.1),
     InputError, ["lam_ratio"]),
    ("negative λ (solvers.lasso)", lambda f, m, x: cj.solvers.lasso(jnp.eye(3), jnp.ones((3, 2)), -0.1),
     InputError, ["lam must be finite and >= 0", "absolute λ ≥ 0"]),
    ("one negative λ per class", lambda f, m, x: cj.solvers.lasso(jnp.eye(3), jnp.ones((3, 2)),
                                                                     jnp.array([0.1, -0.1])),
     InputError, ["lam must be finite and >= 0"]),
    ("negative λ ratio (lasso_path)", lambda f, m, x: cj.solvers.lasso_path(jnp.eye(3), jnp.ones((3, 2)),
                                                                           jnp.array([0.5, -0.1])),
     InputError, ["lam ratios must be finite and >= 0"]),
    # output paths
    ("overlay into a missing folder", lambda f, m, x: cj.viz.overlay(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8)),
                                                                    out=f["no/such/folder/map.png"]),
     InputError, ["does not exist"]),
    ("checkpoint under a file", lambda f, m, x: cjio.save_variables({"w": np.ones(2)}, f["ok.png/sub/ckpt"]),
     InputError, ["is a file, not a folder"]),
    # class-level CHIP models fitted elsewhere
    ("CHIP of resnet34 loaded for resnet18", lambda f, m, x: CHIP.load(f["chip_r34_layer4"], model=m), InputError,
     ["fitted on resnet34 at layer4, not on resnet18"]),
    ("CHIP at layer4 loaded for layer3", lambda f, m, x: CHIP.load(f["chip_r18_layer4"], model=m, layer="layer3"),
     InputError, ["fitted at layer layer4, not layer3"]),
    ("CHIP at layer4 used at layer3", lambda f, m, x: cj.explain(
        m, x, layer="layer3", chip_model=CHIP.load(f["chip_r18_layer4"], model=m)), InputError,
     ["fitted at layer layer4, not layer3"]),
    ("CHIP with image-level options", lambda f, m, x: cj.explain(
        m, x, chip_model=CHIP.load(f["chip_r18_layer4"]), num_masks=64), InputError,
     ["num_masks cannot be used with a fitted chip_model"]),
    ("weights folder loaded as a CHIP model", lambda f, m, x: CHIP.load(f["resnet18_vars"]), WeightsError,
     ["not a class-level CHIP model", "chipjax fit"]),
]


@pytest.mark.parametrize("case, call, error, words", LIBRARY_CASES, ids=[c[0] for c in LIBRARY_CASES])
def test_library_raises_a_typed_error_that_names_problem_and_fix(case, call, error, words, files, model, x64):
    with pytest.raises(error) as info:
        call(files, model, x64)
    message = str(info.value)
    for word in words:
        assert word.lower() in message.lower(), message
    assert "\n" not in message


@pytest.mark.parametrize("fmt", ["evil.pth", "evil.pkl"])
def test_malicious_checkpoint_is_refused_before_anything_runs(files, fmt, capsys):
    marker = files.root / ("PWNED_zip" if fmt == "evil.pth" else "PWNED_raw")
    with pytest.raises(UnsafeCheckpointError, match=r"posix\.system.*ran nothing"):
        cj.load_model("resnet18", weights=files[fmt])
    one_error_line(["convert", "--arch", "resnet18", files[fmt], files.root / "converted"], capsys,
                   "posix.system", "ran nothing")
    assert not marker.exists()
    assert not (files.root / "converted").exists()
    # the fixture is live: an unrestricted loader runs it
    if fmt == "evil.pth":
        import torch

        torch.load(files[fmt], weights_only=False)
    else:
        with open(files[fmt], "rb") as handle:
            pickle.load(handle)
    assert marker.exists()
    marker.unlink()


def test_good_inputs_pass_the_same_checks(files, model, x64):
    """Controls for the catalogue: the valid neighbours of the refused inputs go through."""
    cm = CHIP.load(files["chip_r18_layer4"], model=model, layer="layer4")
    maps = np.asarray(cj.explain(model, x64, chip_model=cm, target=["tabby", 3]))
    assert maps.shape == (2, 64, 64) and np.isfinite(maps).all() and maps.max() == 1.0
    maps = np.asarray(cj.explain(model, x64, method="gradcam", layer="layer4", target=np.int64(999)))
    assert maps.shape == (2, 64, 64) and np.isfinite(maps).all()
    assert cj.solvers.lasso(jnp.eye(3), jnp.ones((3, 2)), 0.0).shape == (3, 2)


# ================================================================================================
# Output folders: missing, read-only; nothing already written is damaged
# ================================================================================================


def test_read_only_folder_is_refused_before_writing(locked, files, model):
    photo, heat = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8))
    with pytest.raises(InputError, match="not writable"):
        cj.viz.overlay(photo, heat, out=locked / "map.png")
    with pytest.raises(InputError, match="not writable"):
        cjio.save_variables({"w": np.ones(2)}, locked / "ckpt")
    with pytest.raises(InputError, match="not writable"):
        CHIP.load(files["chip_r18_layer4"]).save(locked / "new" / "chip")  # the missing parent is not created
    assert list(locked.iterdir()) == []


@needs_read_only_fs
def test_a_really_read_only_folder_is_refused(files):
    with pytest.raises(InputError, match="not writable"):
        cj.viz.overlay(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8)), out=f"{READ_ONLY}/map.png")
    with pytest.raises(InputError, match="not writable"):
        CHIP.load(files["chip_r18_layer4"]).save(f"{READ_ONLY}/chipjax/chip")


def test_save_creates_a_missing_parent_folder(tmp_path, files):
    """Checkpoint folders (CHIP models, converted weights) make their missing parents, like orbax."""
    cm = CHIP.load(files["chip_r18_layer4"])
    cm.save(tmp_path / "new" / "deeper" / "chip")
    again = CHIP.load(tmp_path / "new" / "deeper" / "chip")
    np.testing.assert_array_equal(np.asarray(again.weights), np.asarray(cm.weights))


def test_failed_runs_leave_existing_outputs_intact(files, model, tmp_path, capsys):
    out = tmp_path / "map.png"
    out.write_bytes(b"an earlier overlay")
    one_error_line(["explain", files["ok.png"], "--class", "1000", "--out", out], capsys, "out of range")
    one_error_line(["explain", files["ok.png"], "--keep-prob", "1.5", "--out", out], capsys, "keep_prob")
    assert out.read_bytes() == b"an earlier overlay"

    import shutil

    dst = tmp_path / "converted"
    shutil.copytree(files["resnet18_vars"], dst)
    before = sorted((p.relative_to(dst), p.read_bytes()) for p in dst.rglob("*") if p.is_file())
    for bad in ("truncated.pth", "corrupt.npz", "resnet34.pth"):
        one_error_line(["convert", "--arch", "resnet18", files[bad], dst], capsys)
    after = sorted((p.relative_to(dst), p.read_bytes()) for p in dst.rglob("*") if p.is_file())
    assert after == before
    assert sorted(os.listdir(tmp_path)) == ["converted", "map.png"]  # no temporary folders left behind
    reloaded = cj.load_model("resnet18", weights=dst)
    for got, want in zip(jax.tree.leaves(reloaded.variables), jax.tree.leaves(model.variables)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


# ================================================================================================
# The catalogue, CLI side
# ================================================================================================

# (case, argv(files), words on the one stderr line)
CLI_CASES = [
    ("missing image", lambda f: ["predict", f["missing.png"]], ["not found"]),
    ("empty image", lambda f: ["predict", f["empty.png"]], ["empty"]),
    ("truncated image", lambda f: ["explain", f["truncated.jpg"], "--out", f["o.png"]], ["truncated"]),
    ("not an image", lambda f: ["predict", f["notes.png"]], ["not an image"]),
    ("a folder", lambda f: ["predict", f["a_folder.png"]], ["folder"]),
    ("decompression bomb", lambda f: ["predict", f["bomb.png"]], ["too large to open safely"]),
    ("NaN in a float TIFF", lambda f: ["predict", f["nan.tiff"]], ["NaN"]),
    ("unknown model", lambda f: ["explain", f["ok.png"], "--model", "resnet9000", "--out", f["o.png"]],
     ["unknown model 'resnet9000'", "resnet18"]),
    ("unknown layer", lambda f: ["explain", f["ok.png"], "--layer", "blocks.99", "--out", f["o.png"]],
     ["unknown layer 'blocks.99'", "Valid layers:", EFF.default_layer]),
    ("class index out of range", lambda f: ["explain", f["ok.png"], "--class", "1000", "--out", f["o.png"]],
     ["out of range"]),
    ("class name not found", lambda f: ["explain", f["ok.png"], "--class", "tabbby", "--out", f["o.png"]],
     ["not found", "tabby"]),
    ("resnet34 weights into resnet18", lambda f: ["predict", f["ok.png"], "--model", "resnet18",
                                                  "--weights", f["resnet34.pth"]], ["another architecture"]),
    ("efficientnet weights into resnet50", lambda f: ["predict", f["ok.png"], "--model", "resnet50",
                                                      "--weights", EFF.pretrained()], ["another architecture"]),
    *[(f"truncated {ext}", lambda f, ext=ext: ["predict", f["ok.png"], "--model", "resnet18",
                                               "--weights", f[f"truncated{ext}"]], ["truncated"])
      for ext in (".pth", ".safetensors", ".npz")],
    *[(f"corrupt {ext}", lambda f, ext=ext: ["convert", "--arch", "resnet18", f[f"corrupt{ext}"], f["c"]],
       ["corrupt"]) for ext in (".pth", ".safetensors", ".npz")],
    *[(f"keep-prob {p}", lambda f, p=p: ["explain", f["ok.png"], "--keep-prob", p, "--out", f["o.png"]],
       ["keep_prob"]) for p in ("0", "1", "-0.5", "1.5", "nan")],
    ("keep-prob in fit", lambda f: ["fit", f["data"], "--out", f["fitted"], "--keep-prob", "1"], ["keep_prob"]),
    ("zero masks", lambda f: ["explain", f["ok.png"], "--masks", "0", "--out", f["o.png"]], ["--masks"]),
    ("zero masks (rise)", lambda f: ["explain", f["ok.png"], "--method", "rise", "--masks", "0",
                                     "--out", f["o.png"]], ["masks"]),
    ("zero masks in fit", lambda f: ["fit", f["data"], "--out", f["fitted"], "--masks", "0"], ["num_masks"]),
    ("negative lam-ratio", lambda f: ["explain", f["ok.png"], "--lam-ratio", "-0.1", "--out", f["o.png"]],
     ["lam-ratio"]),
    ("negative lam-ratio in fit", lambda f: ["fit", f["data"], "--out", f["fitted"], "--lam-ratio", "-0.1"],
     ["lam_ratio"]),
    ("output in a missing folder", lambda f: ["explain", f["ok.png"], "--out", f["no/such/dir/o.png"]],
     ["does not exist"]),
    ("fit output in a missing folder", lambda f: ["fit", f["data"], "--out", f["no/such/dir/cm"]],
     ["does not exist"]),
    ("convert into a missing folder", lambda f: ["convert", "--arch", "resnet18", f["resnet18.npz"],
                                                 f["no/such/dir/cm"]], ["does not exist"]),
    ("CHIP model of another network", lambda f: ["explain", f["ok.png"], "--chip-model", f["chip_r34_layer4"],
                                                 "--out", f["o.png"]], ["fitted on resnet34"]),
    ("CHIP model at another layer", lambda f: ["explain", f["ok.png"], "--chip-model", f["chip_eff_other_layer"],
                                               "--layer", EFF.default_layer, "--out", f["o.png"]],
     ["fitted at layer", f"not {EFF.default_layer}"]),
    ("weights folder as CHIP model", lambda f: ["explain", f["ok.png"], "--chip-model", f["resnet18_vars"],
                                                "--out", f["o.png"]], ["not a class-level CHIP model"]),
]


@pytest.mark.parametrize("case, argv, words", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_prints_one_line_and_exits_2(case, argv, words, files, capsys):
    one_error_line(argv(files), capsys, *words)
    assert not os.path.exists(files["o.png"]) and not os.path.exists(files["fitted"])


def test_cli_read_only_output_folder(files, locked, capsys):
    one_error_line(["explain", files["ok.png"], "--out", locked / "o.png"], capsys, "not writable")
    one_error_line(["fit", files["data"], "--out", locked / "cm"], capsys, "not writable")
    one_error_line(["convert", "--arch", "resnet18", files["resnet18.npz"], locked / "cm"], capsys, "not writable")
    assert list(locked.iterdir()) == []


def _run_cli(argv):
    return subprocess.Popen([sys.executable, "-m", "chipjax.cli", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_cli_in_a_subprocess_never_prints_a_traceback(files):
    """The real entry point, three at once: a bomb image, a malicious checkpoint, a read-only --out."""
    out = f"{READ_ONLY}/chipjax.png" if os.path.isdir(READ_ONLY) and not os.access(READ_ONLY, os.W_OK) \
        else files["no/such/dir/o.png"]
    runs = {
        "bomb": _run_cli(["predict", files["bomb.png"]]),
        "pickle": _run_cli(["explain", files["ok.png"], "--model", "resnet18", "--weights", files["evil.pth"],
                            "--out", files["o.png"]]),
        "read-only": _run_cli(["explain", files["ok.png"], "--out", out]),
    }
    for name, proc in runs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (name, err)
        assert "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith("chipjax: error: "), err
    assert not (files.root / "PWNED_zip").exists()


# ================================================================================================
# Odd but valid images are converted, not refused
# ================================================================================================


def test_16_bit_grayscale_is_scaled_by_65535(tmp_path):
    values = np.array([[0, 257, 128 * 257, 65535], [1000, 30000, 40000, 65534]], np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    rgb = to_rgb_uint8(tmp_path / "g16.png")
    want = np.floor(values / 65535.0 * 255.0 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(rgb, np.repeat(want[..., None], 3, axis=-1))
    assert rgb[0, 2, 0] == 128 and rgb[0, 3, 0] == 255
    Image.fromarray(values // 64).save(tmp_path / "dark16.png")        # max 1023: stays dark, not auto-stretched
    np.testing.assert_array_equal(to_rgb_uint8(tmp_path / "dark16.png")[..., 0],
                                  np.floor((values // 64) / 65535.0 * 255.0 + 0.5).astype(np.uint8))


def test_palette_grayscale_rgba_and_cmyk_are_converted(tmp_path):
    rgb = (np.random.default_rng(3).random((6, 9, 3)) * 255).astype(np.uint8)
    palette_img = Image.fromarray(rgb).quantize(16)
    palette_img.save(tmp_path / "p.png")
    table = np.asarray(palette_img.getpalette(), np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(to_rgb_uint8(tmp_path / "p.png"), table[np.asarray(palette_img)])

    gray = rgb[..., 0]
    Image.fromarray(gray).save(tmp_path / "l.png")
    np.testing.assert_array_equal(to_rgb_uint8(tmp_path / "l.png"), np.repeat(gray[..., None], 3, axis=-1))

    alpha = np.zeros((6, 9), np.uint8)
    alpha[:, 3:6], alpha[:, 6:] = 128, 255
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "rgba.png")
    out = to_rgb_uint8(tmp_path / "rgba.png").astype(int)
    np.testing.assert_array_equal(out[:, :3], 255)                      # transparent: the white background
    np.testing.assert_array_equal(out[:, 6:], rgb[:, 6:])               # opaque: the colour itself
    blend = rgb[:, 3:6] * (128 / 255) + 255 * (1 - 128 / 255)
    assert np.abs(out[:, 3:6] - blend).max() <= 1

    cmyk = np.array([[[0, 255, 255, 0], [255, 0, 255, 0], [255, 255, 0, 0], [0, 0, 0, 0], [0, 0, 0, 255]]], np.uint8)
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "cmyk.tiff")
    np.testing.assert_array_equal(to_rgb_uint8(tmp_path / "cmyk.tiff"),
                                  [[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]]])
    red = np.broadcast_to(np.array([0, 255, 255, 0], np.uint8), (16, 16, 4))
    Image.fromarray(np.ascontiguousarray(red), mode="CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    assert np.abs(to_rgb_uint8(tmp_path / "cmyk.jpg").astype(int) - [255, 0, 0]).max() <= 8


@pytest.mark.parametrize("mode", ["1", "LA", "PA", "La", "RGBa", "I", "F", "YCbCr", "LAB", "HSV"])
def test_every_pil_mode_becomes_uint8_rgb(mode):
    base = Image.fromarray((np.random.default_rng(4).random((5, 7, 3)) * 255).astype(np.uint8))
    img = {"PA": lambda: base.convert("P").convert("PA"), "La": lambda: base.convert("LA").convert("La"),
           "RGBa": lambda: base.convert("RGBA").convert("RGBa")}.get(mode, lambda: base.convert(mode))()
    assert img.mode == mode
    out = to_rgb_uint8(img)
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)


def test_tiny_huge_and_extreme_aspect_images(tmp_path, model):
    Image.new("RGB", (1, 1), (200, 10, 30)).save(tmp_path / "tiny.png")
    x = np.asarray(model.preprocess(tmp_path / "tiny.png"))
    assert x.shape == (1, 224, 224, 3)
    want = (np.array([200, 10, 30]) / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(x.reshape(-1, 3), np.broadcast_to(want, (224 * 224, 3)), atol=1e-6)

    Image.new("RGB", (6000, 4000), (10, 200, 30)).save(tmp_path / "huge.png", compress_level=1)
    assert to_rgb_uint8(tmp_path / "huge.png").shape == (4000, 6000, 3)
    np.testing.assert_array_equal(np.unique(model.view(tmp_path / "huge.png").reshape(-1, 3), axis=0),
                                  [[10, 200, 30]])
    # 1 × 100 000: resizing the shorter side to 256 first would need a 256 × 25.6 M intermediate (19 GB).
    # The 224-px centre crop covers source x in [49999.5625, 50000.4375]: a linear ramp between the
    # centres of pixels 49 999 (black) and 50 000 (white), the same in every row.
    strip = np.zeros((1, 100_000, 3), np.uint8)
    strip[0, 50_000:] = 255
    view = model.view(strip).astype(float)
    assert view.shape == (224, 224, 3)
    source_x = 49_999.5625 + (np.arange(224) + 0.5) * (0.875 / 224)
    ramp = (source_x - 49_999.5) * 255
    assert np.abs(view - ramp[None, :, None]).max() <= 1


def test_big_images_between_pils_limits_load_quietly(tmp_path, monkeypatch, recwarn):
    """PIL warns above MAX_IMAGE_PIXELS and refuses above twice that: no second stderr line, a clear error."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    Image.new("RGB", (40, 40)).save(tmp_path / "big.png")            # 1600 px: warned about by PIL
    Image.new("RGB", (50, 50)).save(tmp_path / "bomb.png")           # 2500 px: refused by PIL
    assert to_rgb_uint8(tmp_path / "big.png").shape == (40, 40, 3)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    with pytest.raises(ImageError, match="too large to open safely"):
        load_image(tmp_path / "bomb.png")


# ================================================================================================
# Properties: heat maps, boxes, IoU
# ================================================================================================

# Few shapes, so that hypothesis explores values rather than compiling new programs.
SHAPES = st.sampled_from([(1, 1, 1, 1), (2, 3, 4, 5)])
SIZES = st.sampled_from([(1, 1), (7, 9)])
KINDS = st.sampled_from(["any", "zeros", "constant", "huge", "tiny"])


def _f32(value: float) -> float:
    return float(np.float32(value))


def _values(draw, shape, kind):
    if kind == "zeros":
        return np.zeros(shape, np.float32)
    if kind == "constant":
        return np.full(shape, draw(st.floats(_f32(-1e30), _f32(1e30), width=32)), np.float32)
    huge, top, tiny = _f32(1e30), _f32(3e38), _f32(1e-30)
    elements = {"any": st.floats(width=32, allow_nan=False, allow_infinity=False),
                "huge": st.floats(huge, top, width=32) | st.floats(-top, -huge, width=32),
                "tiny": st.floats(-tiny, tiny, width=32)}[kind]
    return draw(hnp.arrays(np.float32, shape, elements=elements))


@st.composite
def features_and_weights(draw):
    shape = draw(SHAPES)
    A = _values(draw, shape, draw(KINDS))
    w = _values(draw, (shape[0], shape[-1]), draw(KINDS))
    return A, w, draw(SIZES)


_heatmap = jax.jit(heatmaps.heatmap, static_argnums=2)  # one compile per shape, not one per operation


@settings(max_examples=40, deadline=None)
@given(features_and_weights())
def test_heatmap_is_finite_in_unit_range_and_input_sized(case):
    A, w, size = case
    maps = np.asarray(_heatmap(A, w, size))
    assert maps.shape == (A.shape[0],) + size
    assert np.isfinite(maps).all()
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    peaks = maps.max(axis=(1, 2))
    assert ((peaks == 0) | (peaks >= 1 - 1e-6)).all()  # normalised per map (to rounding under jit), or all zero
    flat = (A == A[:, :1, :1, :]).all(axis=(1, 2, 3))
    assert (maps[flat] == 0).all()  # features constant over the image: a zero map, never NaN or noise


@settings(max_examples=25, deadline=None)
@given(features_and_weights(), st.integers(-100, 100))
def test_heatmap_ignores_power_of_two_rescaling(case, exponent):
    """Huge and tiny values give the map of the same values rescaled: nothing overflows to a lost hot spot."""
    A, w, size = case
    scaled = A.astype(np.float64) * 2.0 ** exponent
    normal = lambda a: np.all((a == 0) | ((np.abs(a) > 1e-37) & (np.abs(a) < 3e38)))
    if not (normal(A) and normal(scaled)):
        return  # subnormal (flushed to zero by XLA on CPU) or overflowing float32 values: not a rescaling
    np.testing.assert_array_equal(np.asarray(_heatmap(scaled.astype(np.float32), w, size)),
                                  np.asarray(_heatmap(A, w, size)))


def test_heatmap_of_overflowing_sums_keeps_the_hot_spot():
    A = np.zeros((1, 2, 2, 2), np.float32)
    A[0, 0, 0] = [3e38, 3e38]        # Σ w A overflows float32 without rescaling
    A[0, 1, 1] = [1e38, 0.0]
    maps = np.asarray(heatmaps.heatmap(A, np.full((1, 2), 3e38, np.float32), (2, 2)))
    np.testing.assert_allclose(maps[0], [[1.0, 0.0], [0.0, 1 / 6]], atol=1e-6)


box = st.tuples(*[st.floats(-50, 50, allow_nan=False)] * 4)
pixel_box = st.tuples(*[st.integers(-50, 50)] * 4)


@settings(max_examples=60, deadline=None)
@given(pixel_box, pixel_box, st.integers(-20, 20), st.integers(-20, 20), st.sampled_from([0.25, 0.5, 2.0, 4.0]))
def test_box_iou_is_invariant_to_moving_and_scaling_both_boxes(a, b, dx, dy, s):
    iou = metrics.box_iou(a, b)
    shift = np.array([dx, dy, dx, dy])
    assert metrics.box_iou(np.add(a, shift), np.add(b, shift)) == iou
    assert metrics.box_iou(np.multiply(a, s), np.multiply(b, s)) == iou
    positive = a[2] > a[0] and a[3] > a[1]
    assert metrics.box_iou(a, a) == (1.0 if positive else 0.0)


@settings(max_examples=30, deadline=None)
@given(st.lists(box, min_size=1, max_size=4), st.lists(box, min_size=1, max_size=4))
def test_batched_box_iou_equals_pairwise_and_is_symmetric(boxes_a, boxes_b):
    table = metrics.box_iou(np.array(boxes_a)[:, None], np.array(boxes_b)[None])
    pairwise = [[metrics.box_iou(a, b) for b in boxes_b] for a in boxes_a]
    np.testing.assert_array_equal(table, pairwise)
    np.testing.assert_array_equal(table.T, metrics.box_iou(np.array(boxes_b)[:, None], np.array(boxes_a)[None]))
    assert ((0.0 <= table) & (table <= 1.0)).all()


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9)),
                  elements=st.floats(0, 1, allow_subnormal=False)),
       st.floats(0, 1, allow_subnormal=False), st.integers(0, 30))
def test_boxes_from_maps_are_inside_scale_free_and_batch_consistent(maps, threshold, exponent):
    boxes = metrics.maps_to_boxes(maps, threshold)
    _, h, w = maps.shape
    for m, b in zip(maps, boxes):
        np.testing.assert_array_equal(b, metrics.map_to_box(m, threshold))
        np.testing.assert_array_equal(b, metrics.map_to_box(m * 2.0 ** exponent, threshold))
        assert 0 <= b[0] < b[2] <= w and 0 <= b[1] < b[3] <= h
        iou_with_image = metrics.box_iou(b, [0, 0, w, h])
        assert iou_with_image == pytest.approx((b[2] - b[0]) * (b[3] - b[1]) / (w * h))


# ================================================================================================
# Determinism
# ================================================================================================


def test_same_seed_same_maps_other_seed_other_maps_chunks_to_rounding(model, x64):
    options = dict(layer="layer4", num_masks=2048, target=[281, 3])
    first = np.asarray(cj.explain(model, x64, seed=8, **options))
    np.testing.assert_array_equal(np.asarray(cj.explain(model, x64, seed=8, **options)), first)
    rebuilt = Model(model.spec, model.variables, "same weights, compiled afresh")
    np.testing.assert_array_equal(np.asarray(cj.explain(rebuilt, x64, seed=8, **options)), first)
    other = np.asarray(cj.explain(model, x64, seed=9, **options))
    assert np.abs(other - first).max() > 0.05
    chunked = np.asarray(cj.explain(model, x64, seed=8, chunk_size=14, **options))  # 7 masks a step: not a divisor
    np.testing.assert_allclose(chunked, first, atol=1e-4)


def test_class_level_weights_are_deterministic(model, x64):
    batches = [(x64, np.array([1, 2]))]
    fit = lambda seed, chunk: np.asarray(CHIP.fit(model, "layer4", batches, num_masks=1024, seed=seed,
                                                  chunk_size=chunk).weights)
    W = fit(0, 256)
    np.testing.assert_array_equal(fit(0, 256), W)
    assert np.abs(fit(1, 256) - W).max() > 1e-2 * np.abs(W).max()
    np.testing.assert_allclose(fit(0, 100), W, atol=1e-4 * np.abs(W).max())  # 50 masks a step: not a divisor


# ================================================================================================
# Second round (issue 15): stale results, EXIF, NaN/Inf, tampered folders, options, lost work, drops
# ================================================================================================

R18 = ["--model", "resnet18"]


class ModelLoaded(Exception):
    """Raised where a model would load: a CLI case that gets here did not check its options first."""


@pytest.fixture
def no_model(monkeypatch):
    """Any model load raises :class:`ModelLoaded` (options must be refused before it)."""
    import chipjax.cli
    import chipjax.models

    def refuse(*args, **kwargs):
        raise ModelLoaded("a model was loaded")

    monkeypatch.setattr(chipjax.cli, "_cached_model", refuse)
    monkeypatch.setattr(chipjax.models, "load_model", refuse)


def _flip(path, offset: int) -> None:
    """XOR the byte at ``offset`` of ``path`` with 0x01 (offsets from the end when negative)."""
    data = bytearray(open(path, "rb").read())
    data[offset] ^= 0x01
    open(path, "wb").write(bytes(data))


def _largest_file(folder) -> str:
    paths = [os.path.join(d, n) for d, _, names in os.walk(folder) for n in names]
    return max(paths, key=os.path.getsize)


def _snapshot(root):
    """``{relative path: (size, mtime, bytes of files under 1 MB)}`` of every file under ``root``."""
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            path = os.path.join(d, n)
            info = os.stat(path)
            small = open(path, "rb").read() if info.st_size < 2 ** 20 else None
            out[os.path.relpath(path, root)] = (info.st_size, info.st_mtime_ns, small)
    return out


def _edit_header(folder, edit) -> None:
    import json

    path = os.path.join(folder, "chipjax.json")
    header = json.load(open(path))
    edit(header)
    open(path, "w").write(json.dumps(header))


@pytest.fixture(scope="module")
def round2(files):
    """Weights with NaN/Inf, overflowing logits, tampered folders, CHIP models of the wrong shape, bad JSON."""
    import shutil

    import torch
    import torchvision
    from safetensors.numpy import save_file

    root, f = files.root, files
    torch.manual_seed(0)
    state = torchvision.models.resnet18().state_dict()
    nan_state = {k: v.clone() for k, v in state.items()}
    nan_state["fc.weight"][3, 7] = float("nan")
    torch.save(nan_state, f["nan_fc.pth"])
    inf_state = {k: v.numpy().copy() for k, v in state.items()}
    inf_state["layer2.0.conv1.weight"][0, 0, 0, 0] = np.inf
    save_file(inf_state, f["inf_conv.safetensors"])
    huge = {k: v.numpy().copy() for k, v in state.items()}
    huge["fc.weight"] = np.full_like(huge["fc.weight"], 3e38)       # finite weights, infinite logits
    np.savez(f["huge_fc.npz"], **huge)
    variables = jax.tree.map(np.asarray, f.model.variables)
    bad_vars = jax.tree.map(np.array, variables)
    bad_vars["params"]["units_0"]["conv1"]["kernel"][0, 0, 0, 0] = np.nan
    cjio.save_variables(bad_vars, f["nan_vars"], {"arch": "resnet18"})
    w = np.random.default_rng(5).normal(size=(512, 1000)).astype(np.float32)
    w_nan = w.copy()
    w_nan[10, 281] = np.nan
    CHIP(weights=w_nan, arch="resnet18", layer="layer4", config={}).save(f["chip_nan"])
    CHIP(weights=w[:100], arch="resnet18", layer="layer4", config={}).save(f["chip_wrong_k"])
    CHIP(weights=w[:, :10], arch="resnet18", layer="layer4", config={}).save(f["chip_10_classes"])

    # tampered copies of a converted checkpoint and of a CHIP model
    tampered = {
        "format_version text": ("resnet18_vars", lambda d: _edit_header(d, lambda h: h.update(format_version="x"))),
        "format_version 0": ("resnet18_vars", lambda d: _edit_header(d, lambda h: h.update(format_version=0))),
        "format_version removed": ("resnet18_vars", lambda d: _edit_header(d, lambda h: h.pop("format_version"))),
        "metadata not a dict": ("resnet18_vars", lambda d: _edit_header(d, lambda h: h.update(metadata=[1]))),
        "arch removed": ("chip_r18_layer4", lambda d: _edit_header(d, lambda h: h["metadata"].pop("arch"))),
        "layer removed": ("chip_r18_layer4", lambda d: _edit_header(d, lambda h: h["metadata"].pop("layer"))),
        "largest file deleted": ("resnet18_vars", lambda d: os.remove(_largest_file(d))),
        "largest file truncated": ("resnet18_vars", lambda d: open(_largest_file(d), "r+b").truncate(100)),
        "chip data file deleted": ("chip_r18_layer4", lambda d: os.remove(_largest_file(d))),
    }
    for name, (src, edit) in tampered.items():
        dst = root / ("tampered_" + name.replace(" ", "_"))
        shutil.copytree(f[src], dst)
        edit(str(dst))
    f.tampered = {name: str(root / ("tampered_" + name.replace(" ", "_"))) for name in tampered}

    # data folders: boxes.json nested 100 000 deep, not UTF-8
    for name, text in (("deep", b'{"images": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
                       ("latin1", '{"images": [{"file": "caf\xe9.png", "label": 281}]}'.encode("latin-1"))):
        os.makedirs(f[f"json_{name}"])
        (root / f"json_{name}" / "boxes.json").write_bytes(text)
    (root / "earlier.png").write_bytes(b"an earlier overlay")
    (root / "a_file").write_bytes(b"not a folder")
    os.makedirs(f["busy"])
    (root / "busy" / "notes.txt").write_text("the user's own file")
    return f


# (case, argv(f), words, refused before any model loads)
ROUND2_CLI_CASES = [
    # 3: NaN / Inf weights, non-finite logits, CHIP models of the wrong shape
    ("NaN in a .pth (3)", lambda f: ["predict", f["ok.png"], *R18, "--weights", f["nan_fc.pth"]],
     ["fc.weight", "NaN or Inf"], False),
    ("Inf in a .safetensors (3)", lambda f: ["predict", f["ok.png"], *R18, "--weights", f["inf_conv.safetensors"]],
     ["layer2.0.conv1.weight", "NaN or Inf"], False),
    ("NaN in an orbax folder (3)", lambda f: ["predict", f["ok.png"], *R18, "--weights", f["nan_vars"]],
     ["params/units_0/conv1/kernel", "NaN or Inf"], False),
    ("infinite logits (3)", lambda f: ["predict", f["ok.png"], *R18, "--weights", f["huge_fc.npz"]],
     ["NaN or Inf logits"], False),
    ("CHIP model with NaN weights (3)", lambda f: ["explain", f["ok.png"], *R18, "--weights", f["resnet18.npz"],
                                                   "--chip-model", f["chip_nan"], "--out", f["earlier.png"]],
     ["weights", "NaN or Inf"], False),
    ("CHIP model with the wrong K (3)", lambda f: ["explain", f["ok.png"], *R18, "--weights", f["resnet18.npz"],
                                                   "--chip-model", f["chip_wrong_k"], "--out", f["earlier.png"]],
     ["(100, 1000)", "(512, 1000)"], False),
    ("CHIP model with 10 classes (3)", lambda f: ["explain", f["ok.png"], *R18, "--weights", f["resnet18.npz"],
                                                  "--chip-model", f["chip_10_classes"], "--out", f["earlier.png"]],
     ["(512, 10)", "(512, 1000)"], False),
    # 4: tampered or damaged orbax folders
    *[(f"converted folder: {name} (4)", lambda f, name=name: ["predict", f["ok.png"], *R18, "--weights",
                                                              f.tampered[name]], ["tampered_"], False)
      for name in ("format_version text", "format_version 0", "format_version removed", "metadata not a dict",
                   "largest file deleted", "largest file truncated")],
    *[(f"CHIP model: {name} (4)", lambda f, name=name: ["explain", f["ok.png"], *R18, "--weights", f["resnet18.npz"],
                                                        "--chip-model", f.tampered[name], "--out", f["earlier.png"]],
       ["tampered_"], False) for name in ("arch removed", "layer removed", "chip data file deleted")],
    # 5: option values checked (type, range, finiteness) before any model loads
    ("--memory-budget inf (5)", lambda f: ["explain", f["ok.png"], "--memory-budget", "inf", "--out", f["earlier.png"]],
     ["memory_budget", "--memory-budget", "finite"], True),
    ("--seed 10**20 (5)", lambda f: ["explain", f["ok.png"], "--seed", "99999999999999999999", "--out",
                                     f["earlier.png"]], ["seed", "9223372036854775807"], True),
    ("fit --batch-size 0 (5)", lambda f: ["fit", f["data"], "--out", f["fitted"], "--batch-size", "0"],
     ["batch_size", "[1, 4096]"], True),
    ("eval --option chip.seed=1.5 (5)", lambda f: ["eval", "--data", f["data"], "--methods", "chip", "--option",
                                                   "chip.seed=1.5", "--out", f["ev"]], ["seed", "1.5", "integer"], True),
    ("eval --tolerance nan (5)", lambda f: ["eval", "--data", f["data"], "--tolerance", "nan", "--out", f["ev"]],
     ["pointing_tolerance", "nan"], True),
    ("rise --masks 10**9 (5)", lambda f: ["explain", f["ok.png"], "--method", "rise", "--masks", "1000000000",
                                          "--out", f["earlier.png"]], ["num_masks", "--masks", "16777216"], True),
    ("boxes.json nested 100 000 deep (5)", lambda f: ["eval", "--data", f["json_deep"], "--out", f["ev"]],
     ["json_deep", "boxes.json", "too deeply"], True),
    # 6: the output checked before the work
    ("fit --out an existing file (6)", lambda f: ["fit", f["data"], "--out", f["a_file"]], ["a_file", "file"], True),
    ("fit --out a folder of other files (6)", lambda f: ["fit", f["data"], "--out", f["busy"]],
     ["busy", "holds other files"], True),
    ("explain --out a folder (6)", lambda f: ["explain", f["ok.png"], "--out", f["busy"]], ["is a folder"], True),
    ("explain --out .jpg (6)", lambda f: ["explain", f["ok.png"], "--out", f["o.jpg"]], [".png"], True),
    ("eval --out an existing file (6)", lambda f: ["eval", "--data", f["data"], "--out", f["a_file"]],
     ["a_file", "not a folder"], True),
    # 8: messages that name the file / the option
    ("boxes.json not UTF-8 (8)", lambda f: ["eval", "--data", f["json_latin1"], "--out", f["ev"]],
     ["json_latin1", "boxes.json", "UTF-8"], True),
    ("--memory-budget nan (8)", lambda f: ["explain", f["ok.png"], "--memory-budget", "nan", "--out",
                                           f["earlier.png"]], ["memory_budget", "--memory-budget"], True),
]


@pytest.mark.parametrize("case, argv, words, before_model", ROUND2_CLI_CASES, ids=[c[0] for c in ROUND2_CLI_CASES])
def test_round2_cli_prints_one_line_exits_2_and_keeps_earlier_files(case, argv, words, before_model, round2, capsys,
                                                                   request):
    if before_model:
        request.getfixturevalue("no_model")
    before = _snapshot(round2.root)
    one_error_line(argv(round2), capsys, *words)
    assert _snapshot(round2.root) == before  # nothing written, nothing changed (earlier.png, busy/, a_file, ...)


def test_round2_library_refuses_nan_weights_and_chip_shapes(round2, model):
    """Defect 3, library side: the same files through the Python API, typed errors naming the tensor/shapes."""
    with pytest.raises(WeightsError, match=r"fc\.weight holds 1 NaN or Inf"):
        cj.load_model("resnet18", weights=round2["nan_fc.pth"])
    with pytest.raises(WeightsError, match=r"layer2\.0\.conv1\.weight"):
        cjio.read_state_dict(round2["inf_conv.safetensors"])
    with pytest.raises(WeightsError, match="params/units_0/conv1/kernel"):
        cjio.load_variables(round2["nan_vars"])
    with pytest.raises(WeightsError, match="NaN or Inf"):
        CHIP.load(round2["chip_nan"])
    with pytest.raises(InputError, match=r"\(100, 1000\).*\(512, 1000\)"):
        CHIP.load(round2["chip_wrong_k"], model=model)
    with pytest.raises(InputError, match=r"\(512, 10\).*\(512, 1000\)"):
        cj.explain(model, jnp.zeros((1, 64, 64, 3)), chip_model=CHIP.load(round2["chip_10_classes"]), target=281)


# --- 1: results that never go stale --------------------------------------------------------------


def _box_folder(root, boxes):
    import json

    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(7)
    entries = []
    for i, b in enumerate(boxes):
        Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(root / f"im{i}.png")
        entries.append({"file": f"im{i}.png", "label": 281, "boxes": [b]})
    (root / "boxes.json").write_text(json.dumps({"images": entries}))


def test_eval_rerun_recomputes_samples_whose_boxes_or_pixels_changed(model, tmp_path):
    import json

    import chipjax.eval as E

    data, out = tmp_path / "data", tmp_path / "ev"
    _box_folder(data, [[0, 0, 20, 20], [30, 20, 64, 48], [0, 0, 64, 48]])
    run = lambda: E.evaluate(model, str(data), "cam@layer4", None, "pointing,box_acc", None, str(out),
                             progress=False, settings=E.Settings(batch_size=1, num_examples=0))
    first = run()
    assert first["computed"] == 3
    assert run()["computed"] == 0                       # nothing changed: nothing recomputed
    table = json.loads((data / "boxes.json").read_text())
    table["images"][1]["boxes"] = [[0, 0, 2, 2]]        # move one box
    (data / "boxes.json").write_text(json.dumps(table))
    moved = run()
    assert moved["computed"] == 1                       # only the edited sample
    records = {r["i"]: r for r in E.read_records(str(out / "records.jsonl"))}
    fresh = E.evaluate(model, str(data), "cam@layer4", None, "pointing,box_acc", None, str(tmp_path / "fresh"),
                       progress=False, settings=E.Settings(batch_size=1, num_examples=0))
    assert moved["summary"] == fresh["summary"]         # the table of the data as it is now
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(data / "im2.png")   # replace a photo's pixels
    assert run()["computed"] == 1
    assert records[1]["pointing"] == fresh_records(tmp_path / "fresh")[1]["pointing"]


def fresh_records(out):
    import chipjax.eval as E

    return {r["i"]: r for r in E.read_records(str(out / "records.jsonl"))}


def test_eval_rerun_after_an_image_is_deleted_needs_no_restart(files, tmp_path, capsys):
    data = tmp_path / "data"
    os.makedirs(data / "281")
    for i in range(3):
        Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(data / "281" / f"{i}.png")
    argv = ["eval", "--data", data, "--methods", "cam@layer4", "--metrics", "pointing", "--examples", "0",
            "--batch-size", "1", "--out", tmp_path / "ev", *R18, "--weights", files["resnet18.npz"], "-q"]
    assert main([str(a) for a in argv]) == 0
    os.remove(data / "281" / "0.png")
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    assert "| cam@layer4 | 2 |" in (tmp_path / "ev" / "results.md").read_text()


@pytest.mark.slow  # a ResNet-18 fit at 224 px
def test_fit_resume_starts_over_when_the_images_changed(model, tmp_path, monkeypatch):
    from chipjax import fit as F
    from chipjax.chip import ClassStatsAccumulator

    data = tmp_path / "data"
    os.makedirs(data / "281")
    rng = np.random.default_rng(8)
    for i in range(2):
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(data / "281" / f"{i}.png")
    added = []
    real_add = ClassStatsAccumulator.add
    monkeypatch.setattr(ClassStatsAccumulator, "add", lambda self, x, y=None: (added.append(len(x)),
                                                                               real_add(self, x, y))[1])
    fit = lambda: F.fit_folder(model, str(data), layer="layer4", num_masks=16, batch_size=1, progress=False,
                               checkpoint_dir=str(tmp_path / "progress"), checkpoint_every=1)
    first = fit()
    assert sum(added) == 2
    assert np.allclose(np.asarray(fit().weights), np.asarray(first.weights)) and sum(added) == 2  # resumed at the end
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(data / "281" / "0.png")
    changed = fit()
    assert sum(added) == 4                              # both images folded in again
    reference = F.fit_folder(model, str(data), layer="layer4", num_masks=16, batch_size=1, progress=False)
    np.testing.assert_allclose(np.asarray(changed.weights), np.asarray(reference.weights), rtol=1e-5, atol=1e-7)


# --- 6: work never lost at the end ------------------------------------------------------------------


@pytest.mark.slow  # a ResNet-18 fit at 224 px
def test_fit_progress_survives_a_failed_save_and_another_out(files, tmp_path, monkeypatch, capsys):
    from chipjax.chip import ClassStatsAccumulator

    monkeypatch.setenv("CHIPJAX_CACHE", str(tmp_path / "cache"))
    added = []
    real_add = ClassStatsAccumulator.add
    monkeypatch.setattr(ClassStatsAccumulator, "add", lambda self, x, y=None: (added.append(len(x)),
                                                                               real_add(self, x, y))[1])
    real_save = CHIP.save

    def disk_full(self, directory):
        raise OSError(28, "No space left on device")

    argv = lambda out: ["fit", files["data"], "--out", out, *R18, "--weights", files["resnet18.npz"],
                        "--layer", "layer4", "--masks", "16", "--batch-size", "1", "-q"]
    monkeypatch.setattr(CHIP, "save", disk_full)
    one_error_line(argv(tmp_path / "a"), capsys, "No space left")
    assert sum(added) == 1
    monkeypatch.setattr(CHIP, "save", real_save)
    assert main([str(a) for a in argv(tmp_path / "b")]) == 0   # another --out: the finished work is reused
    assert sum(added) == 1
    assert CHIP.load(tmp_path / "b").num_images == 1
    assert not os.listdir(tmp_path / "cache" / "fit")            # progress removed once the model is saved


# --- 2: photos in the orientation users see, 16-bit PNG, overlays in the photo's aspect -------------


def _exif_photo(path, orientation: int) -> np.ndarray:
    """Save a 20 × 40 asymmetric photo with EXIF Orientation ``orientation``; return the stored pixels."""
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:5, :10] = [255, 0, 0]                       # a red corner: top-left as stored
    stored[..., 2] = np.arange(40, dtype=np.uint8)[None, :] * 6
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, exif=exif.tobytes())
    return stored


def test_exif_orientation_is_applied_wherever_an_image_is_read(tmp_path):
    from chipjax.data import folder_source

    stored = _exif_photo(tmp_path / "phone.png", 6)     # 6: the camera was turned 90° clockwise
    upright = np.rot90(stored, k=-1)                    # what a viewer shows: rotated 90° clockwise, 40 × 20
    np.testing.assert_array_equal(to_rgb_uint8(tmp_path / "phone.png"), upright)
    np.testing.assert_array_equal(load_image(tmp_path / "phone.png").size, (20, 40))
    _exif_photo(tmp_path / "mirror.png", 2)             # 2: mirrored left-right
    np.testing.assert_array_equal(to_rgb_uint8(tmp_path / "mirror.png"), stored[:, ::-1])
    import json

    os.makedirs(tmp_path / "set")
    _exif_photo(tmp_path / "set" / "p.png", 6)
    (tmp_path / "set" / "boxes.json").write_text(json.dumps({"images": [
        {"file": "p.png", "label": 281, "boxes": [[0, 0, 20, 40]]}]}))
    sample = folder_source(tmp_path / "set")[0]          # the loader of fit and eval
    np.testing.assert_array_equal(sample.image, upright)
    np.testing.assert_array_equal(sample.boxes, [[0, 0, 20, 40]])   # the box of the upright photo, not clipped


def test_16_bit_png_with_small_values_is_not_read_as_8_bit(tmp_path):
    values = np.array([[0, 100, 255], [128, 200, 17]], np.uint16)
    Image.fromarray(values).save(tmp_path / "dim16.png")
    assert Image.open(tmp_path / "dim16.png").mode == "I;16"
    want = np.floor(values / 65535.0 * 255.0 + 0.5).astype(np.uint8)   # 255/65535 of full scale: nearly black
    np.testing.assert_array_equal(to_rgb_uint8(tmp_path / "dim16.png"), np.repeat(want[..., None], 3, axis=-1))


def test_map_on_photo_puts_the_view_back_in_the_photos_aspect():
    from chipjax.models.preprocess import resize_crop_view, stretch_view

    # resize the shorter side to 4, centre-crop 4 × 4: an 8 × 16 photo's columns 4..11 are seen
    heat = np.ones((4, 4), np.float32)
    on = cj.viz.map_on_photo(heat, resize_crop_view(4, 4), (8, 16))
    assert on.shape == (8, 16)
    np.testing.assert_array_equal(on[:, 4:12], 1.0)
    np.testing.assert_array_equal(on[:, :4], 0.0)
    np.testing.assert_array_equal(on[:, 12:], 0.0)
    # a stretched view: each view column covers 4 photo columns; a step map stays a step at the same place
    step = np.zeros((2, 2), np.float32)
    step[:, 1] = 1.0
    on = cj.viz.map_on_photo(step, stretch_view(2), (6, 8))
    assert on.shape == (6, 8)
    np.testing.assert_allclose(on[0], [0, 0, 0.125, 0.375, 0.625, 0.875, 1, 1], atol=1e-6)
    np.testing.assert_allclose(on, np.broadcast_to(on[0], (6, 8)))


def test_explain_overlays_the_photo_as_the_user_sees_it_and_names_ambiguous_classes(files, tmp_path, monkeypatch,
                                                                                    capsys):
    """Defects 2 (overlay aspect, EXIF) and 8 (``--class cardigan`` names the other cardigan)."""
    from chipjax import viz

    stored = _exif_photo(tmp_path / "phone.png", 6)
    seen = {}
    real = viz.overlay

    def capture(image, heatmap, **kw):
        seen["image"], seen["heatmap"] = np.asarray(image), np.asarray(heatmap)
        return real(image, heatmap, **kw)

    monkeypatch.setattr(viz, "overlay", capture)
    out = tmp_path / "o.png"
    code = main([str(a) for a in ["explain", tmp_path / "phone.png", *R18, "--weights", files["resnet18.npz"],
                                  "--method", "cam", "--layer", "layer4", "--class", "cardigan", "--out", out]])
    err = capsys.readouterr().err
    assert code == 0, err
    np.testing.assert_array_equal(seen["image"], np.rot90(stored, k=-1))   # upright, in its own 40 × 20 aspect
    assert seen["heatmap"].shape == (40, 20)
    labels = files.model.labels
    cardigans = [i for i, l in enumerate(labels) if l.lower() == "cardigan"]
    assert len(cardigans) == 2
    assert f"explaining class {cardigans[0]}" in err and f"--class {cardigans[1]}" in err
    assert out.is_file()


# --- 7: data that silently drops out -------------------------------------------------------------


def test_eval_reports_dropped_samples_and_skips_bad_ones_when_asked(files, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    _box_folder(data, [[0, 0, 20, 20], [500, 500, 600, 600], [0, 0, 64, 48]])   # im1's box is off the image
    shutil.copy(files["truncated.png"], data / "im2.png")                      # im2 is corrupt
    argv = ["eval", "--data", data, "--methods", "cam@layer4", "--metrics", "pointing,box_acc", "--examples", "0",
            "--batch-size", "1", "--out", tmp_path / "ev", *R18, "--weights", files["resnet18.npz"], "-q"]
    one_error_line(argv, capsys, "im2.png", "--skip-bad")                       # progress kept, and how to go on
    assert len(fresh_records(tmp_path / "ev")) == 2
    code = main([str(a) for a in argv + ["--skip-bad"]])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "1 sample(s) skipped" in err and "im2.png" in err
    assert "1 sample(s) dropped" in err and "im1.png" in err and "outside the image" in err
    md = (tmp_path / "ev" / "results.md").read_text()
    assert "| method @ layer | images | dropped | skipped |" in md
    assert "| cam@layer4 | 2 | 1 | 1 |" in md
    assert "im1.png (#1): every box lies outside the image" in md and "im2.png" in md
    records = fresh_records(tmp_path / "ev")
    assert records[1]["dropped"] and records[1]["pointing"] is None and "skipped" in records[2]


# --- properties over option values: accepted and reaching the model, or refused in one line -----------

_TEXTS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(2 ** 70), 2 ** 70).map(str),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "", "0x10", "1_000", "½", "0.5", "1", "2", "0", "-1", "2G",
                     "512M", "1.5GiB", "-2G", "nanG", "infM", "1e-300", " 3 "]),
    st.text(max_size=6),
)

# (command argv with {} for the value, the option, acceptance rule of the value's text)
def _int(t):
    try:
        return int(t)  # what argparse's type=int accepts
    except ValueError:
        return None


_IS_INT = lambda t: _int(t) is not None


def _float(t):
    try:
        v = float(t)
    except ValueError:
        return None
    return v if np.isfinite(v) else None


PROPERTY_FLAGS = {
    "explain --keep-prob": (lambda f, v: ["explain", f["ok.png"], "--keep-prob", v, "--out", f["p.png"]],
                            lambda t: _float(t) is not None and 0 < _float(t) < 1),
    "explain --lam-ratio": (lambda f, v: ["explain", f["ok.png"], "--lam-ratio", v, "--out", f["p.png"]],
                            lambda t: _float(t) is not None and 0 <= _float(t) < 1),
    "explain --masks": (lambda f, v: ["explain", f["ok.png"], "--masks", v, "--out", f["p.png"]],
                        lambda t: (_IS_INT(t) and 2 <= _int(t) <= 2 ** 24) or t.strip().lower() == "auto"),  # CHIP
    "explain --seed": (lambda f, v: ["explain", f["ok.png"], "--seed", v, "--out", f["p.png"]],
                       lambda t: _IS_INT(t) and 0 <= _int(t) < 2 ** 63),
    "explain --memory-budget": (lambda f, v: ["explain", f["ok.png"], "--memory-budget", v, "--out", f["p.png"]],
                                None),
    "predict --top": (lambda f, v: ["predict", f["ok.png"], "--top", v], lambda t: _IS_INT(t) and 1 <= _int(t) <= 10 ** 6),
    "fit --batch-size": (lambda f, v: ["fit", f["data"], "--out", f["pfit"], "--batch-size", v],
                         lambda t: _IS_INT(t) and 1 <= _int(t) <= 4096),
    "fit --keep-prob": (lambda f, v: ["fit", f["data"], "--out", f["pfit"], "--keep-prob", v],
                        lambda t: _float(t) is not None and 0 < _float(t) < 1),
    "fit --checkpoint-every": (lambda f, v: ["fit", f["data"], "--out", f["pfit"], "--checkpoint-every", v],
                               lambda t: _IS_INT(t) and 1 <= _int(t) <= 2 ** 31),
    "eval --tolerance": (lambda f, v: ["eval", "--data", f["data"], "--tolerance", v, "--out", f["pev"]],
                         lambda t: _float(t) is not None and 0 <= _float(t) <= 1e6),
    "eval --threshold": (lambda f, v: ["eval", "--data", f["data"], "--threshold", v, "--out", f["pev"]],
                         lambda t: _float(t) is not None and 0 <= _float(t) <= 1),
    "eval --steps": (lambda f, v: ["eval", "--data", f["data"], "--steps", v, "--out", f["pev"]],
                     lambda t: _IS_INT(t) and 2 <= _int(t) <= 10_000),
    "eval --option chip.seed": (lambda f, v: ["eval", "--data", f["data"], "--methods", "chip", "--option",
                                              f"chip.seed={v}", "--out", f["pev"]], None),
}


@pytest.mark.parametrize("flag", sorted(PROPERTY_FLAGS))
def test_option_values_are_accepted_or_refused_in_one_line_before_the_model(flag, files, no_model, capsys):
    argv, accepts = PROPERTY_FLAGS[flag]

    @settings(max_examples=25, deadline=None)
    @given(_TEXTS)
    def check(text):
        capsys.readouterr()
        try:
            code = main([str(a) for a in argv(files, text)])
        except ModelLoaded:
            accepted = True
        else:
            err = capsys.readouterr().err
            assert code == 2, (text, err)
            assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (text, err)
            accepted = False
        if accepts is not None:
            assert accepted == accepts(text), (flag, text)
        assert not os.path.exists(files["p.png"]) and not os.path.exists(files["pfit"])

    check()


# --- corruption: flipped bytes in a converted checkpoint, a CHIP model and an eval record store ---------


@pytest.mark.parametrize("what", ["converted checkpoint", "CHIP model"])
def test_flipped_bytes_in_a_checkpoint_are_detected_on_load(what, files, tmp_path):
    import shutil

    src = files["resnet18_vars"] if what == "converted checkpoint" else files["chip_r18_layer4"]
    load = (lambda d: cj.load_model("resnet18", weights=d)) if what == "converted checkpoint" else CHIP.load
    data_files = sorted(os.path.relpath(os.path.join(d, n), src) for d, _, names in os.walk(src) for n in names
                        if n != "chipjax.json")
    largest = os.path.relpath(_largest_file(src), src)
    cases = [(largest, at) for at in (0, 1, os.path.getsize(os.path.join(src, largest)) // 3,
                                      os.path.getsize(os.path.join(src, largest)) // 2, -1)]
    cases += [(rel, os.path.getsize(os.path.join(src, rel)) // 2) for rel in data_files if rel != largest]
    header = open(os.path.join(src, "chipjax.json"), "rb").read()
    cases += [("chipjax.json", header.index(key) + len(key) - 1)
              for key in (b'"arch": "resnet', b'"layer"', b'"files"') if key in header]
    assert len(cases) >= 8
    for n, (rel, at) in enumerate(cases):
        dst = tmp_path / f"copy{n}"
        shutil.copytree(src, dst)
        _flip(dst / rel, at)
        with pytest.raises((WeightsError, InputError)) as info:
            load(dst)
        assert "\n" not in str(info.value) and str(dst) in str(info.value), (rel, at, str(info.value))


def test_flipped_bytes_in_an_eval_record_store_are_detected_on_load(tmp_path, caplog):
    import json

    import chipjax.eval as E

    records = [{"i": i, "run": "cam@layer4", "name": f"im{i}.png", "pointing": bool(i % 2), "box_ok": True,
                "deletion_auc": 0.25 + i / 10} for i in range(4)]
    store = E.RecordStore(str(tmp_path), {"x": 1}, resume=True, every=100)
    store.add(records)
    store.flush()
    path = tmp_path / "records.jsonl"
    original = path.read_bytes()
    lines = original.split(b"\n")
    starts = np.cumsum([0] + [len(l) + 1 for l in lines[:-1]])
    offsets = [starts[0] + lines[0].index(b"0.25") + 3,      # a digit of a value: still valid JSON
               starts[1] + lines[1].index(b"pointing"),     # a key name
               starts[2] + lines[2].index(b"true") + 1,     # true -> tsue: not JSON
               starts[3] - 1]                               # the newline between two records
    for at in offsets:
        path.write_bytes(original)
        _flip(path, int(at))
        caplog.clear()
        with caplog.at_level("WARNING", logger="chipjax"):
            again = E.RecordStore(str(tmp_path), {"x": 1}, resume=True, every=100)
        loaded = list(again.records.values())
        assert all(r in records for r in loaded), at          # nothing damaged is loaded
        assert len(loaded) < len(records)                     # the damaged record will be computed again
        assert "damaged record" in caplog.text, at
    assert json.loads(lines[0])["crc"] == E.record_checksum(json.loads(lines[0]))
