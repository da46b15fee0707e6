"""Tests of chipjax.viz: documented pixel sizes, the blend, safe writing, headless use."""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from chipjax import viz
from chipjax.errors import InputError


def _photo(h=32, w=48, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _ramp(h=8, w=8):
    return np.linspace(0.0, 1.0, h * w, dtype=np.float32).reshape(h, w)


def _png_size(path):
    with Image.open(path) as png:
        assert png.format == "PNG"
        return png.size  # (width, height)


def _png_pixels(path):
    with Image.open(path) as png:
        return np.asarray(png.convert("RGB")).astype(int)


# ----------------------------------------------------------------------------- the blend

def test_overlay_rgb_hand_computed_pixels():
    image = np.array([[[100, 40, 0], [100, 40, 0]]], dtype=np.uint8)   # (1, 2, 3)
    heat = np.array([[1.0, 0.0]], dtype=np.float32)                      # white, black in "gray"
    blend = viz.overlay_rgb(image, heat, alpha=0.25, cmap="gray")
    # 0.75·(100, 40, 0) + 0.25·255 = (138.75, 93.75, 63.75); 0.75·(100, 40, 0) + 0 = (75, 30, 0)
    np.testing.assert_array_equal(blend, [[[139, 94, 64], [75, 30, 0]]])
    assert blend.dtype == np.uint8


def test_overlay_rgb_alpha_extremes():
    image = _photo(4, 4)
    np.testing.assert_array_equal(viz.overlay_rgb(image, _ramp(4, 4), alpha=0.0), image)
    only_colour = viz.overlay_rgb(image, np.ones((4, 4)), alpha=1.0, cmap="gray")
    np.testing.assert_array_equal(only_colour, np.full((4, 4, 3), 255))


@pytest.mark.parametrize("src, dst", [((2, 3), (8, 12)), ((7, 5), (32, 48)), ((5, 5), (5, 9))])
def test_resize_bilinear_upsampling_matches_pil(src, dst):
    """PIL's BILINEAR (an independent implementation) on float images: when enlarging, its triangle filter
    with edge renormalisation is half-pixel bilinear with edge clamping, what the overlays need."""
    from PIL import Image

    values = np.random.default_rng(1).random(src).astype(np.float32)
    expected = np.asarray(Image.fromarray(values, mode="F").resize(dst[::-1], Image.BILINEAR))
    np.testing.assert_allclose(viz.resize_bilinear(values, dst), expected, atol=1e-5)


def test_overlay_rgb_resizes_heatmap_to_the_photo():
    image = _photo(32, 48)
    small = _ramp(4, 6)
    resized = np.asarray(jax.image.resize(jnp.asarray(small), (32, 48), method="bilinear", antialias=False))
    np.testing.assert_array_equal(viz.overlay_rgb(image, small), viz.overlay_rgb(image, viz.resize_bilinear(small, (32, 48))))
    # against jax's resize, float rounding may move a value across one colour-map bin (one LUT step)
    difference = np.abs(viz.overlay_rgb(image, small).astype(int) - viz.overlay_rgb(image, resized))
    assert difference.max() <= 3 and (difference == 0).mean() > 0.95


def test_constant_maps_give_finite_blends_and_nan_maps_are_refused(tmp_path):
    image = _photo(16, 16)
    for value in (0.0, 1.0):
        blend = viz.overlay_rgb(image, np.full((4, 4), value, np.float32), alpha=0.5)
        assert blend.shape == (16, 16, 3) and blend.dtype == np.uint8
    fig = viz.overlay(image, np.zeros((4, 4)), out=tmp_path / "flat.png")
    rgba = np.asarray(fig.canvas.buffer_rgba())
    assert np.isfinite(rgba.astype(float)).all()
    bad = _ramp(4, 4)
    bad[1, 2] = np.nan
    with pytest.raises(InputError, match="NaN"):
        viz.overlay(image, bad, out=tmp_path / "nan.png")
    assert not (tmp_path / "nan.png").exists()


def test_overlay_title_is_built_from_its_parts():
    assert viz.overlay_title("espresso", 0.934, "chip", "head") == "espresso (0.93) — CHIP @ head"
    assert viz.overlay_title(method="gradcam", layer=["features.6", "head"]) == "Grad-CAM @ features.6 + head"
    assert viz.overlay_title() == ""


# ----------------------------------------------------------------------------- documented sizes

def test_overlay_size_title_and_colorbar(tmp_path):
    out = tmp_path / "overlay.png"
    fig = viz.overlay(_photo(32, 48), _ramp(8, 8), class_name="espresso", score=0.93, method="chip",
                      layer="head", out=out)
    assert _png_size(out) == (500, 420)
    assert fig.axes[0].get_title() == "espresso (0.93) — CHIP @ head"
    assert len(fig.axes[0].child_axes) == 1  # the colour bar, inset beside the photo
    assert fig.axes[0].child_axes[0].get_ylabel() == "relevance"
    assert len(viz.overlay(_photo(), _ramp(), colorbar=False).axes[0].child_axes) == 0
    long = viz.overlay(_photo(), _ramp(), class_name="a very long class name " * 3, method="refined-chip",
                       layer=["features.6.0.conv_pw", "head"])
    lines = long.axes[0].get_title().splitlines()
    assert len(lines) > 1 and max(map(len, lines)) <= 50


def test_overlay_size_at_another_dpi(tmp_path):
    out = tmp_path / "overlay.png"
    viz.overlay(_photo(), _ramp(), out=out, dpi=50)
    assert _png_size(out) == (250, 210)


def test_method_grid_size(tmp_path):
    images = [_photo(32, 32, 0), _photo(40, 32, 1)]
    maps = {"chip": np.stack([_ramp(), _ramp().T]), "gradcam": np.zeros((2, 8, 8))}
    out = tmp_path / "grid.png"
    fig = viz.method_grid(images, maps, row_titles=["cat", "dog"], out=out)
    assert _png_size(out) == (600, 430)   # 2·(2+1) × (2·2 + 0.3) inches at dpi 100
    assert [ax.get_title() for ax in fig.axes[:3]] == ["image", "CHIP", "Grad-CAM"]
    assert fig.axes[3].get_ylabel() == "dog"
    out_one = tmp_path / "grid1.png"
    viz.method_grid(images[:1], {"chip": _ramp()[None]}, out=out_one)
    assert _png_size(out_one) == (400, 230)


def test_curves_size_and_auc_legend(tmp_path):
    t = np.linspace(0.0, 1.0, 11)
    data = {"chip": (t, 1.0 - t), "rise": (t, (1.0 - t) ** 2)}
    out = tmp_path / "curves.png"
    fig = viz.curves(data, kind="deletion", auc={"rise": 0.25}, out=out)
    assert _png_size(out) == (500, 400)
    labels = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    # chip: trapezoid area of 1 - t over [0, 1] is exactly 0.5; rise: the given 0.25
    assert labels == ["CHIP (AUC 0.500)", "RISE (AUC 0.250)"]
    assert "Insertion" in viz.curves(data, kind="insertion").axes[0].get_title()


def test_channel_bars_size_and_selection(tmp_path):
    weights = np.zeros(64)
    weights[[3, 10, 50, 7]] = [0.5, -0.9, 0.1, 0.2]
    out = tmp_path / "bars.png"
    fig = viz.channel_bars(weights, k=20, class_name="tabby", out=out)
    assert _png_size(out) == (600, 400)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["10", "3", "7", "50"]   # by |w|, zeros dropped
    np.testing.assert_allclose([bar.get_height() for bar in ax.patches], [-0.9, 0.5, 0.2, 0.1])
    assert ax.get_title() == "tabby: top 4 of 64 channels by |weight|"
    out_wide = tmp_path / "bars40.png"
    fig = viz.channel_bars((np.array([5, 9, 2]), np.array([0.1, 0.3, -0.2])), k=40, out=out_wide)
    assert _png_size(out_wide) == (1100, 400)   # max(6, 0.25·40 + 1) = 11 inches
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["9", "2", "5"]


def test_box_preview_size_and_box_positions(tmp_path):
    photo = np.zeros((48, 64, 3), np.uint8)               # black, so the boxes stand out
    out = tmp_path / "boxes.png"
    viz.box_preview(photo, [[16, 12, 48, 36]], labels=["cat"], pred_box=[0, 0, 64, 48], out=out)
    assert _png_size(out) == (500, 375)                    # 5 inches wide, the photo's 4:3 aspect
    pixels = _png_pixels(out)
    scale = 500 / 64
    row, left = int(24 * scale), int(round(16 * scale))   # middle of the ground-truth box's left edge
    edge = pixels[row, left - 1:left + 2]
    assert (edge[:, 1] > 200).any() and (edge[:, 0] < 60).all()    # green
    assert pixels[row, 250].sum() == 0                            # inside the box: the black photo
    assert pixels[187, 0, 0] > 200 and pixels[187, 0, 1] < 60      # the predicted whole-photo box: red


def test_sizes_are_exact_where_inches_times_dpi_falls_short(tmp_path):
    # a 29×256 photo needs 500 × round(500·29/256) = 500 × 57 px, and 0.57·100 = 56.999… in floating point
    out = tmp_path / "thin.png"
    viz.box_preview(np.zeros((29, 256, 3), np.uint8), np.empty((0, 4)), out=out)
    assert _png_size(out) == (500, 57)


# ----------------------------------------------------------------------------- safe writing

def test_missing_folder_raises_before_anything_is_written(tmp_path):
    missing = tmp_path / "nope"
    for call in (lambda out: viz.overlay(_photo(), _ramp(), out=out),
                 lambda out: viz.curves({"chip": ([0, 1], [1, 0])}, out=out),
                 lambda out: viz.box_preview(_photo(), [[0, 0, 4, 4]], out=out)):
        with pytest.raises(InputError, match="does not exist"):
            call(missing / "figure.png")
    assert not missing.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root (or Windows) can write to read-only folders")
def test_read_only_folder_raises(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(InputError, match="not writable"):
            viz.overlay(_photo(), _ramp(), out=locked / "figure.png")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_bad_output_names_are_refused(tmp_path):
    with pytest.raises(InputError, match=".png"):
        viz.overlay(_photo(), _ramp(), out=tmp_path / "figure.jpg")
    with pytest.raises(InputError, match="is a folder"):
        viz.overlay(_photo(), _ramp(), out=tmp_path)


def test_failed_render_leaves_the_existing_file_intact(tmp_path):
    out = tmp_path / "figure.png"
    out.write_bytes(b"old figure")
    with pytest.raises(InputError, match="2-D"):
        viz.overlay(_photo(), np.zeros((2, 8, 8)), out=out)          # invalid heatmap shape
    assert out.read_bytes() == b"old figure"
    assert list(tmp_path.iterdir()) == [out]


def test_failure_while_writing_leaves_the_existing_file_intact(tmp_path, monkeypatch):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    out = tmp_path / "figure.png"
    out.write_bytes(b"old figure")

    def half_written(self, handle, *args, **kwargs):
        handle.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(FigureCanvasAgg, "print_png", half_written)
    with pytest.raises(OSError, match="disk full"):
        viz.overlay(_photo(), _ramp(), out=out)
    assert out.read_bytes() == b"old figure"
    assert list(tmp_path.iterdir()) == [out]                          # no temporary file left behind
    monkeypatch.undo()
    viz.overlay(_photo(), _ramp(), out=out)                           # a good render replaces it
    assert _png_size(out) == (500, 420)
    assert list(tmp_path.iterdir()) == [out]


# ----------------------------------------------------------------------------- input errors

@pytest.mark.parametrize("call, message", [
    (lambda: viz.overlay(_photo().astype(np.float32), _ramp()), "uint8"),
    (lambda: viz.overlay(_photo(), _ramp() * 3), r"\[0, 1\]"),
    (lambda: viz.overlay(_photo(), _ramp(), alpha=1.5), "alpha"),
    (lambda: viz.overlay(_photo(), _ramp(), cmap="no-such-map"), "colour map"),
    (lambda: viz.overlay(_photo(), _ramp(), dpi=0), "dpi"),
    (lambda: viz.method_grid([_photo()], {"chip": np.zeros((2, 8, 8))}), "B = 1"),
    (lambda: viz.method_grid([_photo()], {"chip": np.zeros((1, 8, 8))}, row_titles=["a", "b"]), "row_titles"),
    (lambda: viz.method_grid([], {}), "no images"),
    (lambda: viz.curves({"chip": ([0, 1], [1, 0])}, kind="sideways"), "kind"),
    (lambda: viz.curves({"chip": ([0, 0.5, 1], [1, 0])}), "one length"),
    (lambda: viz.channel_bars(np.zeros((8, 3))), r"W\[:, class_index\]"),
    (lambda: viz.channel_bars(np.ones(8), k=0), "k must"),
    (lambda: viz.box_preview(_photo(), [[10, 0, 5, 4]]), "x1 >= x0"),
    (lambda: viz.box_preview(_photo(), [[0, 0, 4, 4]], labels=["a", "b"]), "labels"),
])
def test_bad_inputs_raise_input_error(call, message):
    with pytest.raises(InputError, match=message):
        call()


def test_all_zero_weights_render_an_empty_bar_chart():
    fig = viz.channel_bars(np.zeros(16), class_name="tabby")
    fig.canvas.draw()
    assert len(fig.axes[0].patches) == 0 and fig.axes[0].get_title() == "tabby: all weights are zero"


# ----------------------------------------------------------------------------- headless, lazy, threads

def test_import_is_light_and_figures_never_touch_pyplot():
    script = (
        "import sys, numpy as np\n"
        "import chipjax.viz as viz\n"
        "assert 'matplotlib' not in sys.modules, 'import chipjax.viz imported matplotlib'\n"
        "viz.overlay(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8)))\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'a figure imported pyplot'\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "MPLBACKEND"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env)


def test_figures_render_identically_from_threads():
    def render(seed):
        fig = viz.overlay(_photo(seed=seed), _ramp(), class_name=f"class {seed}")
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba()).copy()

    serial = [render(seed) for seed in range(3)]
    threaded = [None] * 3

    def work(i):
        threaded[i] = render(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for a, b in zip(serial, threaded):
        np.testing.assert_array_equal(a, b)
