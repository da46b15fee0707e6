"""chipjax.models.preprocess: views (what the network sees of a photo) and where the photo's boxes land in them."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from chipjax import metrics as M
from chipjax.models import preprocess as pp



@pytest.mark.parametrize("hw", [(480, 640), (512, 300), (224, 224)])
def test_stretch_view_boxes_scale_like_resize_boxes(hw):
    boxes = np.array([[10, 20, 200, 150], [0, 0, hw[1], hw[0]]], np.float64)
    got = pp.boxes_in_view(boxes, hw, pp.stretch_view(224))
    np.testing.assert_allclose(got, M.resize_boxes(boxes, hw, (224, 224)), atol=1e-9)


def test_resize_crop_view_boxes_follow_the_centre_crop():
    # 480x640 photo: shorter side to 256 -> 256x341, centre crop 224 -> rows 16..240, columns 58..282
    view = pp.resize_crop_view(224, 256)
    boxes = np.array([[0, 0, 640, 480], [300, 0, 340, 30], [0, 0, 20, 20]], np.float64)
    got = pp.boxes_in_view(boxes, (480, 640), view)
    s = 256 / 480
    left = round((341 - 224) / 2)
    np.testing.assert_allclose(got[0], [0, 0, 224, 224])
    np.testing.assert_allclose(got[1], [300 * 341 / 640 - left, 0, 340 * 341 / 640 - left, 30 * s - 16])
    assert got[2][2] == got[2][0] == 0  # cropped away: zero area


@pytest.mark.parametrize("view", [pp.stretch_view(224), pp.resize_crop_view(224, 256), pp.resize_crop_view(96, 128)])
@pytest.mark.parametrize("hw", [(480, 640), (600, 400)])
def test_probe_of_an_unknown_view_agrees_with_the_exact_transform(view, hw):
    wrapped = lambda rgb: view(rgb)  # noqa: E731  (not recognisable: measured by the probe)
    exact = view.transform(hw)
    probed = pp.view_box_transform(wrapped, hw)
    assert probed[2] == exact[2]
    box = np.array([0.3 * hw[1], 0.4 * hw[0], 0.8 * hw[1], 0.9 * hw[0]])
    moved = lambda t: box * np.tile(t[0], 2) + np.tile(t[1], 2)  # noqa: E731
    np.testing.assert_allclose(moved(probed), moved(exact), atol=0.25)  # within a quarter pixel


# --- runs, options, records ----------------------------------------------------------------------------


def test_views_are_values_that_carry_their_geometry():
    a, b = pp.resize_crop_view(224, 256), pp.resize_crop_view(224, 256)
    assert a == b and hash(a) == hash(b) and a != pp.stretch_view(224)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.size = 96
    rgb = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    assert pp.stretch_view(32)(rgb).shape == (32, 32, 3)
    # torchvision's Resize(40) + CenterCrop(32) on PIL, written out with PIL: 48x80 -> 40x66, crop rows 4..36
    want = np.asarray(Image.fromarray(rgb).resize((66, 40), Image.BILINEAR))[4:36, 17:49]
    np.testing.assert_array_equal(pp.resize_crop_view(32, 40)(rgb), want)
    scale, offset, hw = pp.resize_crop_view(32, 40).transform((48, 80))
    np.testing.assert_allclose(scale, [66 / 80, 40 / 48]) and np.testing.assert_allclose(offset, [-17, -4])
    assert hw == (32, 32)
