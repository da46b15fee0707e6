"""chipjax.evalsets: hand-boxed real photos and composites (no model needed)."""
import numpy as np
import pytest

from chipjax import evalsets as ev
from chipjax.errors import ImageError, InputError
from chipjax.models.labels import imagenet_labels


@pytest.fixture(scope="module")
def photos():
    return ev.photo_set()


def _box_inside(box, h, w):
    x0, y0, x1, y1 = box
    return 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h


def test_photo_entries_load_with_valid_labels_and_names():
    entries = ev.photo_entries()
    assert len(entries) >= 9
    names = [e.name for e in entries]
    assert len(set(names)) == len(names)
    firsts = [e.labels[0] for e in entries]
    assert len(set(firsts)) == len(firsts), "acceptable_labels looks entries up by their first label"
    n_classes = len(imagenet_labels())
    for e in entries:
        assert e.source.split(":")[0] in {"skimage", "matplotlib", "sklearn"}
        assert all(0 <= label < n_classes for label in e.labels)
        assert len(set(e.labels)) == len(e.labels)
        assert e.note
        assert ev.acceptable_labels(e.labels[0]) == e.labels
    assert ev.acceptable_labels(1) == (1,)
    assert sum(e.paste for e in entries) >= 5


def test_known_photo_labels_make_sense():
    names = imagenet_labels()
    by_name = {e.name: e for e in ev.photo_entries()}
    assert names[by_name["chelsea-cat"].labels[0]] == "tabby"
    assert "espresso" in [names[i] for i in by_name["coffee-espresso"].labels]
    assert [names[i] for i in by_name["astronaut-shuttle"].labels] == ["space shuttle"]


def test_photo_set_boxes_inside_their_photos(photos):
    assert [s.name for s in photos] == [e.name for e in ev.photo_entries()]
    for sample, entry in zip(photos, ev.photo_entries()):
        h, w, c = sample.image.shape
        assert sample.image.dtype == np.uint8 and c == 3 and h >= 200 and w >= 200
        assert sample.boxes.dtype == np.float32 and sample.boxes.shape == (len(entry.boxes), 4)
        assert sample.label == entry.labels[0]
        for box in sample.boxes:
            assert _box_inside(box, h, w), (sample.name, box, (h, w))
            x0, y0, x1, y1 = box.astype(int)
            assert (x1 - x0) * (y1 - y0) < 0.96 * h * w  # a box, not the whole photo
        # the photos are real, varied images (not blank or broken loads)
        assert sample.image.std() > 20


def test_two_entries_share_the_astronaut_photo(photos):
    by_name = {s.name: s for s in photos}
    shuttle, helmet = by_name["astronaut-shuttle"], by_name["astronaut-helmet"]
    assert shuttle.image is helmet.image
    (sx0, sy0, sx1, sy1), (hx0, hy0, hx1, hy1) = shuttle.boxes[0], helmet.boxes[0]
    assert sx1 <= hx0 or hx1 <= sx0 or sy1 <= hy0 or hy1 <= sy0  # disjoint


def test_photo_images_are_read_only(photos):
    with pytest.raises(ValueError):
        photos[0].image[0, 0, 0] = 1


def test_backgrounds_inside_their_photos():
    for entry in ev.background_entries():
        image = ev.bundled_photo(entry.source)
        assert _box_inside(entry.box, *image.shape[:2]), entry


def test_sklearn_photos_match_load_sample_image():
    from sklearn.datasets import load_sample_image

    for name in ("china.jpg", "flower.jpg"):
        np.testing.assert_array_equal(ev.bundled_photo(f"sklearn:{name}"), load_sample_image(name))


def test_bad_boxes_and_sources_raise_input_errors():
    with pytest.raises(InputError, match="empty"):
        ev._check_box([10, 10, 10, 20], "test")
    with pytest.raises(InputError, match="x0, y0, x1, y1"):
        ev._check_box([1, 2, 3], "test")
    with pytest.raises(InputError, match="outside"):
        ev._check_inside((0, 0, 50, 30), (20, 40, 3), "test")
    with pytest.raises(InputError, match="0..999"):
        ev._check_labels([1000], "test")
    with pytest.raises(InputError, match="unknown photo source"):
        ev.bundled_photo("flickr:cat.jpg")
    with pytest.raises(ImageError, match="skimage.data has no image"):
        ev.bundled_photo("skimage:no_such_photo")
    with pytest.raises(ImageError, match="no sample image"):
        ev.bundled_photo("sklearn:no_such_photo.jpg")


def test_composites_deterministic_per_seed():
    a = ev.composite_set(n=12, seed=3, size=64)
    b = ev.composite_set(n=12, seed=3, size=64)
    c = ev.composite_set(n=12, seed=4, size=64)
    assert [s.image.tobytes() for s in a] == [s.image.tobytes() for s in b]
    assert [s.boxes.tobytes() for s in a] == [s.boxes.tobytes() for s in b]
    assert [s.name for s in a] == [s.name for s in b]
    assert sum(x.image.tobytes() != y.image.tobytes() for x, y in zip(a, c)) >= 11
    prefix = ev.composite_set(n=5, seed=3, size=64)
    assert [s.image.tobytes() for s in prefix] == [s.image.tobytes() for s in a[:5]]


def test_composites_shapes_labels_and_boxes():
    size = 64
    samples = ev.composite_set(n=40, seed=0, size=size)
    objects = {o.name: o for o in ev.paste_objects()}
    for s in samples:
        assert s.image.shape == (size, size, 3) and s.image.dtype == np.uint8
        assert s.boxes.shape == (1, 4) and s.boxes.dtype == np.float32
        assert _box_inside(s.boxes[0], size, size)
        obj = objects[s.name.split(":")[1]]
        assert s.label == obj.label
        x0, y0, x1, y1 = s.boxes[0]
        long_side = max(x1 - x0, y1 - y0)
        assert 0.4 * size - 1 <= long_side <= 0.8 * size + 1
    assert len({s.label for s in samples}) >= 4  # several classes get drawn


def test_pasted_region_differs_from_background_and_outside_is_untouched():
    size, seed = 64, 7
    for i, s in enumerate(ev.composite_set(n=20, seed=seed, size=size)):
        background = ev.draw_background(ev.sample_rng(seed, ev.COMPOSITE_STREAM, i), size)
        x0, y0, x1, y1 = s.boxes[0].astype(int)
        inside = np.zeros((size, size), bool)
        inside[y0:y1, x0:x1] = True
        assert np.array_equal(s.image[~inside], background[~inside])
        diff = np.abs(s.image[inside].astype(np.float32) - background[inside].astype(np.float32)).mean()
        assert diff > 8.0, (s.name, diff)


def test_paste_hard_puts_the_resized_object_exactly():
    canvas = np.zeros((32, 32, 3), np.uint8)
    obj = np.full((10, 20, 3), 200, np.uint8)
    out = ev.paste(canvas, obj, (4, 6, 24, 16), soft=False)
    assert (out[6:16, 4:24] == 200).all()
    out[6:16, 4:24] = 0
    assert not out.any()
    assert not canvas.any()  # the input is not modified


def test_soft_mask_fades_only_at_the_rim():
    mask = ev.soft_mask(40, 60, feather=0.1)
    assert mask.shape == (40, 60) and mask.dtype == np.float32
    assert mask.min() >= 0.0 and mask.max() == 1.0
    assert (mask[5:-5, 5:-5] == 1.0).all()
    assert mask[0, 30] < 0.2 and mask[20, 0] < 0.2 and mask[0, 0] < 0.02
    np.testing.assert_allclose(mask, mask[::-1, ::-1], atol=1e-6)


def test_two_object_composites_pairs_share_image_with_disjoint_boxes():
    size = 64
    samples = ev.two_object_composites(n=15, seed=1, size=size)
    assert len(samples) == 30
    for left, right in zip(samples[0::2], samples[1::2]):
        assert left.image is right.image
        assert left.image.shape == (size, size, 3)
        assert left.name.split(":")[0] == right.name.split(":")[0]
        assert not set(ev.acceptable_labels(left.label)) & set(ev.acceptable_labels(right.label))
        assert _box_inside(left.boxes[0], size, size) and _box_inside(right.boxes[0], size, size)
        assert left.boxes[0][2] <= right.boxes[0][0]  # side by side, disjoint: left's x1 <= right's x0
    again = ev.two_object_composites(n=15, seed=1, size=size)
    assert [s.image.tobytes() for s in again] == [s.image.tobytes() for s in samples]
    other = ev.two_object_composites(n=15, seed=2, size=size)
    assert [s.image.tobytes() for s in other] != [s.image.tobytes() for s in samples]


def test_composite_arguments_checked():
    with pytest.raises(InputError, match="n must be"):
        ev.composite_set(n=-1)
    with pytest.raises(InputError, match="size"):
        ev.composite_set(n=1, size=8)
    with pytest.raises(InputError, match="scale"):
        ev.two_object_composites(n=1, scale=(0.5, 1.5))
    assert ev.composite_set(n=0) == []


def test_save_preview_writes_a_small_png(tmp_path):
    from PIL import Image

    path = tmp_path / "preview.png"
    ev.save_preview(str(path), samples=ev.composite_set(n=3, seed=0, size=64), columns=3, thumb=1.5)
    image = Image.open(path)
    assert image.format == "PNG" and image.size[0] > 50
    assert path.stat().st_size < 400_000


def test_coloured_squares_boxes_enclose_exactly_the_square_of_the_label_colour():
    images, labels, boxes = ev.coloured_squares(12, seed=3, size=40)
    assert images.shape == (12, 40, 40, 3) and images.dtype == np.float32 and labels.shape == (12,)
    assert set(labels.tolist()) <= {0, 1}
    for image, label, box in zip(images, labels, boxes):
        colour = (0.9, 0.1, 0.1) if label == 0 else (0.1, 0.1, 0.9)
        rows, cols = np.nonzero(np.all(np.isclose(image, colour), axis=-1))  # the background is in [0.3, 0.7]
        np.testing.assert_array_equal(box, [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
        assert 10 <= box[2] - box[0] <= 13 and box[2] - box[0] == box[3] - box[1]
    again = ev.coloured_squares(12, seed=3, size=40)
    np.testing.assert_array_equal(again[0], images)
    with pytest.raises(InputError, match="coloured_squares"):
        ev.coloured_squares(0, seed=0)
