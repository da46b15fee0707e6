"""Tests of chipjax.data: folder layouts, ILSVRC XML/CSV boxes, synsets, the tensorflow-datasets source."""
from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
from PIL import Image

from chipjax import data as D
from chipjax.errors import ChipjaxError, ImageError, InputError

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def write_png(path, h=6, w=8, value=0) -> np.ndarray:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rows, cols = np.mgrid[0:h, 0:w]
    img = np.stack([np.full_like(rows, value), 20 * cols, 30 * rows], -1).astype(np.uint8)
    Image.fromarray(img).save(path, format="PNG")  # PNG content whatever the extension: lossless
    return img


# --- synsets / labels ----------------------------------------------------------------------------


def test_shipped_synsets_are_the_sorted_1000():
    synsets = D.imagenet_synsets()
    assert len(synsets) == 1000 and len(set(synsets)) == 1000
    assert synsets == sorted(synsets)
    assert synsets[0] == "n01440764" and synsets[-1] == "n15075141"


# Imagenette's ten synsets and their names (as torchvision.datasets.Imagenette lists them): an
# independent reference for the synset order (importing torchvision here would cost seconds).
IMAGENETTE = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888257": "parachute",
}


def test_synset_index_agrees_with_class_names():
    from chipjax.models.labels import imagenet_labels

    names = imagenet_labels()
    table = D.synset_to_index()
    for wnid, name in IMAGENETTE.items():
        assert names[table[wnid]] == name, wnid
    assert table["n02123045"] == 281 and names[281] == "tabby"


def test_resolve_label():
    assert D.resolve_label(281) == 281
    assert D.resolve_label("281") == 281
    assert D.resolve_label("n01440764") == 0
    assert D.resolve_label("tench") == 0
    assert D.resolve_label("great_white_shark") == 2
    assert D.resolve_label(None) is None
    for bad in ("n99999999", "not a class", 1000, -1, 2.5):
        with pytest.raises(InputError):
            D.resolve_label(bad)


def test_user_synset_list(tmp_path):
    path = tmp_path / "synsets.txt"
    path.write_text("n00000002 two\nn00000001 one\n")
    assert D.synset_to_index(path) == {"n00000002": 0, "n00000001": 1}
    assert D.resolve_label("n00000001", synsets=path) == 1
    (tmp_path / "bad.txt").write_text("tench\n")
    with pytest.raises(InputError):
        D.imagenet_synsets(tmp_path / "bad.txt")


# --- folders -------------------------------------------------------------------------------------


def test_folder_source_json(tmp_path):
    a = write_png(str(tmp_path / "a.png"), value=1)
    write_png(str(tmp_path / "sub" / "b.png"), h=10, w=4, value=2)
    (tmp_path / "boxes.json").write_text(
        json.dumps(
            {
                "images": [
                    {"file": "a.png", "label": 281, "boxes": [[1, 2, 5, 6], [0, 0, 8, 6]]},
                    {"file": "sub/b.png", "label": "n01440764", "boxes": [[0, 0, 9, 99]]},  # clipped to 4 x 10
                    {"file": "a.png"},
                ]
            }
        )
    )
    src = D.folder_source(tmp_path)
    assert len(src) == 3
    s0, s1, s2 = list(src)
    np.testing.assert_array_equal(s0.image, a)
    assert s0.label == 281 and s0.name == "a.png"
    np.testing.assert_array_equal(s0.boxes, [[1, 2, 5, 6], [0, 0, 8, 6]])
    assert s0.boxes.dtype == np.float32
    assert s1.image.shape == (10, 4, 3) and s1.label == 0
    np.testing.assert_array_equal(s1.boxes, [[0, 0, 4, 10]])
    assert s2.label is None and s2.boxes.shape == (0, 4)
    assert src[-1].name == "a.png" and len(src[0:2]) == 2


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"file": "missing.png"}, "not found"),
        ({"file": "a.png", "label": "no such class"}, "class name"),
        ({"file": "a.png", "boxes": [[5, 0, 1, 3]]}, "x0 <= x1"),
        ({"file": "a.png", "boxes": [[1, 2, 3]]}, "x0, y0, x1, y1"),
    ],
)
def test_folder_source_json_errors(tmp_path, entry, message):
    write_png(str(tmp_path / "a.png"))
    (tmp_path / "boxes.json").write_text(json.dumps({"images": [entry]}))
    with pytest.raises(InputError, match=message):
        D.folder_source(tmp_path)


def test_folder_source_class_folders(tmp_path):
    write_png(str(tmp_path / "n01440764" / "x.png"))
    write_png(str(tmp_path / "n01440764" / "y.jpg"))
    write_png(str(tmp_path / "281" / "z.png"))
    write_png(str(tmp_path / "goldfish" / "w.png"))
    (tmp_path / "281" / "notes.txt").write_text("not an image")
    src = D.folder_source(tmp_path)
    assert [(s.name, s.label) for s in src] == [("281/z.png", 281), ("goldfish/w.png", 1), ("n01440764/x.png", 0), ("n01440764/y.jpg", 0)]
    assert all(s.boxes.shape == (0, 4) and s.image.dtype == np.uint8 and s.image.shape == (6, 8, 3) for s in src)


def test_folder_source_flat_and_errors(tmp_path):
    write_png(str(tmp_path / "flat" / "b.png"))
    write_png(str(tmp_path / "flat" / "a.png"))
    src = D.folder_source(tmp_path / "flat")
    assert [s.name for s in src] == ["a.png", "b.png"] and src[0].label is None
    write_png(str(tmp_path / "mixed" / "loose.png"))
    write_png(str(tmp_path / "mixed" / "tench" / "a.png"))
    with pytest.raises(InputError, match="loose images"):
        D.folder_source(tmp_path / "mixed")
    write_png(str(tmp_path / "badclass" / "zebra crossing" / "a.png"))
    with pytest.raises(InputError, match="zebra crossing"):
        D.folder_source(tmp_path / "badclass")
    with pytest.raises(InputError):
        D.folder_source(tmp_path / "nowhere")


def test_broken_image_raises_image_error_on_access(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    src = D.folder_source(tmp_path)  # lazy: nothing is read yet
    with pytest.raises(ImageError):
        src[0]


# --- ILSVRC --------------------------------------------------------------------------------------

XML = """<annotation>
  <folder>val</folder><filename>{name}</filename>
  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>
  {objects}
</annotation>"""
OBJECT = "<object><name>{synset}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"


def write_xml(path, name, w, h, objects):
    objs = "".join(OBJECT.format(synset=s, x0=a, y0=b, x1=c, y1=d) for s, (a, b, c, d) in objects)
    path.write_text(XML.format(name=name, w=w, h=h, objects=objs))


def test_ilsvrc_xml_boxes(tmp_path):
    write_xml(tmp_path / "ILSVRC2012_val_00000001.xml", "ILSVRC2012_val_00000001", 8, 6, [("n01440764", (1, 2, 3, 4)), ("n01440764", (0, 0, 7, 5))])
    # the "%s" file name some ILSVRC files carry: the id comes from the file name; another synset is dropped
    write_xml(tmp_path / "ILSVRC2012_val_00000002.xml", "%s", 8, 6, [("n01443537", (2, 1, 4, 3)), ("n01440764", (0, 0, 1, 1))])
    write_xml(tmp_path / "ILSVRC2012_val_00000003.xml", "x", 8, 6, [])  # no objects: skipped
    boxes = D.ilsvrc_xml_boxes(tmp_path)
    assert sorted(boxes) == ["ILSVRC2012_val_00000001", "ILSVRC2012_val_00000002"]
    synset, b = boxes["ILSVRC2012_val_00000001"]
    assert synset == "n01440764"
    np.testing.assert_array_equal(b, [[1, 2, 4, 5], [0, 0, 8, 6]])  # inclusive corners + 1
    synset, b = boxes["ILSVRC2012_val_00000002"]
    assert synset == "n01443537"
    np.testing.assert_array_equal(b, [[2, 1, 5, 4]])
    np.testing.assert_array_equal(D.ilsvrc_xml_boxes(tmp_path, inclusive=False)["ILSVRC2012_val_00000002"][1], [[2, 1, 4, 3]])


def test_ilsvrc_csv_boxes(tmp_path):
    path = tmp_path / "LOC_val_solution.csv"
    path.write_text(
        "ImageId,PredictionString\n"
        "ILSVRC2012_val_00008726,n02119789 255 142 454 329 n02119789 44 21 322 295 \n"
        "ILSVRC2012_val_00000001,n01751748 111 108 441 332 n01440764 1 1 2 2\n"
    )
    boxes = D.ilsvrc_csv_boxes(path)
    assert boxes["ILSVRC2012_val_00008726"][0] == "n02119789"
    np.testing.assert_array_equal(boxes["ILSVRC2012_val_00008726"][1], [[255, 142, 455, 330], [44, 21, 323, 296]])
    assert boxes["ILSVRC2012_val_00000001"][0] == "n01751748"
    np.testing.assert_array_equal(boxes["ILSVRC2012_val_00000001"][1], [[111, 108, 442, 333]])
    (tmp_path / "bad.csv").write_text("ImageId,PredictionString\nx,n01440764 1 2 3\n")
    with pytest.raises(InputError, match="line 2"):
        D.ilsvrc_csv_boxes(tmp_path / "bad.csv")
    (tmp_path / "noheader.csv").write_text("a,b\n")
    with pytest.raises(InputError, match="header"):
        D.ilsvrc_csv_boxes(tmp_path / "noheader.csv")


def test_ilsvrc_source_from_csv_and_xml(tmp_path):
    images = tmp_path / "val"
    img = write_png(str(images / "ILSVRC2012_val_00000001.JPEG"), h=6, w=8, value=7)
    write_png(str(images / "ILSVRC2012_val_00000002.JPEG"))  # not annotated: left out
    csv = tmp_path / "LOC_val_solution.csv"
    csv.write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n01443537 1 2 7 5 n01443537 0 0 20 20\nILSVRC2012_val_00000009,n01440764 0 0 1 1\n")
    src = D.ilsvrc_source(images, csv)
    assert len(src) == 1
    s = src[0]
    assert s.name == "ILSVRC2012_val_00000001" and s.label == 1
    np.testing.assert_array_equal(s.image, img)
    np.testing.assert_array_equal(s.boxes, [[1, 2, 8, 6], [0, 0, 8, 6]])  # +1, then clipped to the 8 x 6 image
    xml_dir = tmp_path / "xml"
    xml_dir.mkdir()
    write_xml(xml_dir / "ILSVRC2012_val_00000001.xml", "ILSVRC2012_val_00000001", 8, 6, [("n01443537", (1, 2, 7, 5))])
    s = D.ilsvrc_source(images, xml_dir)[0]
    assert s.label == 1
    np.testing.assert_array_equal(s.boxes, [[1, 2, 8, 6]])
    with pytest.raises(InputError, match="none of the"):
        D.ilsvrc_source(tmp_path / "xml", csv)


# --- tensorflow-datasets -------------------------------------------------------------------------

TFDS_DIR = os.path.join(FIXTURES, "tfds_tiny")
HAVE_TFDS = importlib.util.find_spec("tensorflow_datasets") is not None and importlib.util.find_spec("array_record") is not None


@pytest.mark.skipif(not HAVE_TFDS, reason="tensorflow-datasets / array-record not installed (pip install chipjax[tfds])")
@pytest.mark.parametrize("how", ["version_dir", "dataset_dir", "name"])
def test_tfds_source_reads_fixture(how):
    if how == "version_dir":
        src = D.tfds_source(os.path.join(TFDS_DIR, "chipjax_tiny_fixture", "1.0.0"), split="validation")
    elif how == "dataset_dir":
        src = D.tfds_source(os.path.join(TFDS_DIR, "chipjax_tiny_fixture"), split="validation")
    else:
        src = D.tfds_source("chipjax_tiny_fixture", split="validation", data_dir=TFDS_DIR)
    assert len(src) == 3
    rows, cols = np.mgrid[0:24, 0:32]
    # the fixture (tests/fixtures/make_tfds_fixture.py): red 50 * i, green 8 * column, blue 10 * row; boxes in pixels
    want_boxes = [[[4, 2, 20, 12]], [[0, 0, 32, 24], [8, 6, 16, 18]], [[30, 20, 32, 24]]]
    for i, s in enumerate(src):
        assert s.image.dtype == np.uint8 and s.image.shape == (24, 32, 3)
        np.testing.assert_array_equal(s.image, np.stack([np.full_like(rows, 50 * i), 8 * cols, 10 * rows], -1))
        assert s.label == i % 3
        assert s.name == f"img{i}.png"
        np.testing.assert_allclose(s.boxes, want_boxes[i], atol=1e-4)
    sliced = D.tfds_source(os.path.join(TFDS_DIR, "chipjax_tiny_fixture"), split="validation[1:]")
    assert len(sliced) == 2 and sliced[0].name == "img1.png"


@pytest.mark.skipif(not HAVE_TFDS, reason="tensorflow-datasets / array-record not installed (pip install chipjax[tfds])")
def test_tfds_source_errors(tmp_path):
    with pytest.raises(InputError, match="dataset_info.json"):
        D.tfds_source(tmp_path, split="validation")
    with pytest.raises(InputError, match="cannot open"):
        D.tfds_source(os.path.join(TFDS_DIR, "chipjax_tiny_fixture"), split="train")


def test_tfds_missing_package_message(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tfds(name, *args, **kwargs):
        if name == "tensorflow_datasets" or name.startswith("tensorflow_datasets."):
            raise ImportError("No module named 'tensorflow_datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tfds)
    with pytest.raises(ChipjaxError, match=r"pip install chipjax\[tfds\]"):
        D.tfds_source("imagenet2012")


def test_load_source_names_and_folders(tmp_path):
    from chipjax import evalsets

    photos = D.load_source("photos")
    assert len(photos.samples) == len(evalsets.photo_set()) and photos.accept is evalsets.acceptable_labels
    assert [s.name for s in D.load_source("composites", num_images=3).samples] == [s.name for s in evalsets.composite_set(3, seed=0)]
    two = D.load_source("two-object", num_images=3).samples
    assert len(two) == 3 and np.array_equal(two[0].image, two[1].image)
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / name)
    (tmp_path / "boxes.json").write_text(json.dumps({"images": [
        {"file": "a.png", "label": 967, "boxes": [[1, 2, 10, 12]]}, {"file": "b.png", "label": "tabby"}]}))
    folder = D.load_source(str(tmp_path), num_images=1)
    assert len(folder.samples) == 1 and folder.samples[0].label == 967 and folder.accept(967) == (967,)
    with pytest.raises(InputError, match="unknown data"):
        D.load_source(str(tmp_path / "missing"))
    with pytest.raises(InputError, match="--boxes"):
        D.load_source("ilsvrc:" + str(tmp_path))


