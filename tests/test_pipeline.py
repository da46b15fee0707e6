"""The input pipeline on generated data: every source, order, process sharding, skip-and-report, resume."""
import importlib.util
import logging
import os

import numpy as np
import pytest
from PIL import Image

from chipjax import data as D
from chipjax import pipeline
from chipjax.errors import InputError

SYNSETS = ["n01440764", "n01443537", "n01484850"]  # class indices 0, 1, 2
PER_CLASS = 8
TFDS_DIR = os.path.join(os.path.dirname(__file__), "fixtures", "tfds_tiny")
HAVE_TFDS = importlib.util.find_spec("tensorflow_datasets") is not None and importlib.util.find_spec("array_record") is not None


class TinyView:
    """A stand-in model: view = resize to 16×16 (PIL bilinear), normalise = x / 255 (independent of chipjax)."""

    class spec:
        @staticmethod
        def view(rgb):
            return np.asarray(Image.fromarray(rgb).resize((16, 16), Image.BILINEAR))

        @staticmethod
        def normalize(view):
            return view.astype(np.float32) / 255.0


def image(i, h=20, w=28):
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """ImageNet layout: train/<synset>/<synset>_<k>.JPEG (24 images), val/ILSVRC2012_val_<n>.JPEG with
    LOC_val_solution.csv and an XML box folder, a labels file."""
    root = tmp_path_factory.mktemp("imagenet")
    n = 0
    for c, syn in enumerate(SYNSETS):
        os.makedirs(root / "train" / syn)
        for k in range(PER_CLASS):
            Image.fromarray(image(n)).save(root / "train" / syn / f"{syn}_{k}.JPEG", format="JPEG", quality=95)
            n += 1
    os.makedirs(root / "val")
    os.makedirs(root / "xml")
    rows = ["ImageId,PredictionString"]
    for j in range(6):
        name = f"ILSVRC2012_val_{j + 1:08d}"
        Image.fromarray(image(100 + j)).save(root / "val" / f"{name}.JPEG", format="JPEG", quality=95)
        syn = SYNSETS[j % 3]
        rows.append(f"{name},{syn} 2 3 10 12 {syn} 0 0 5 5")
        (root / "xml" / f"{name}.xml").write_text(
            f"<annotation><size><width>28</width><height>20</height></size><object><name>{syn}</name>"
            f"<bndbox><xmin>2</xmin><ymin>3</ymin><xmax>10</xmax><ymax>12</ymax></bndbox></object></annotation>")
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    lines = ["file,label"] + [f"{syn}/{syn}_{k}.JPEG,{syn}" for syn in SYNSETS for k in range(PER_CLASS)]
    (root / "train_labels.csv").write_text("\n".join(lines) + "\n")
    return root


def expected(source, indices):
    """What the loader must deliver for ``indices``: read and prepared one by one, here."""
    return np.stack([TinyView.spec.normalize(TinyView.spec.view(source[i].image)) for i in indices])


def collect(source, **kw):
    out = list(pipeline.batches(source, TinyView(), **kw))
    return out, np.concatenate([b.indices for b in out]) if out else np.zeros(0, int)


@pytest.mark.parametrize("workers", [0, 2])
def test_class_folders_in_source_order(imagenet, workers):
    src = D.folder_source(imagenet / "train")
    out, idx = collect(src, batch_size=5, num_workers=workers, process_index=0, process_count=1)
    assert [len(b.labels) for b in out] == [5, 5, 5, 5, 4]
    np.testing.assert_array_equal(idx, np.arange(24))
    np.testing.assert_array_equal(np.concatenate([b.labels for b in out]), np.repeat([0, 1, 2], PER_CLASS))
    np.testing.assert_allclose(np.concatenate([np.asarray(b.x) for b in out]), expected(src, range(24)), atol=1e-6)
    assert out[-1].position == 24 and out[0].names[0] == f"{SYNSETS[0]}/{SYNSETS[0]}_0.JPEG"


def test_labels_file_ilsvrc_csv_and_xml_sources(imagenet):
    listed = D.labels_file_source(imagenet / "train", imagenet / "train_labels.csv")
    out, idx = collect(listed, batch_size=8, num_workers=2, process_index=0, process_count=1)
    np.testing.assert_array_equal(np.concatenate([b.labels for b in out]), np.repeat([0, 1, 2], PER_CLASS))
    for boxes in (imagenet / "LOC_val_solution.csv", imagenet / "xml"):
        val = D.ilsvrc_source(imagenet / "val", boxes)
        out, idx = collect(val, batch_size=4, num_workers=2, process_index=0, process_count=1)
        np.testing.assert_array_equal(np.concatenate([b.labels for b in out]), [0, 1, 2, 0, 1, 2])
        np.testing.assert_allclose(np.concatenate([np.asarray(b.x) for b in out]), expected(val, range(6)), atol=1e-6)
        assert out[0].names[0] == "ILSVRC2012_val_00000001"


def test_bundled_composites_and_a_plain_list():
    from chipjax import evalsets

    samples = evalsets.composite_set(6, seed=0, size=48)
    out, idx = collect(samples, batch_size=4, num_workers=2, process_index=0, process_count=1)
    np.testing.assert_array_equal(np.concatenate([b.labels for b in out]), [s.label for s in samples])
    np.testing.assert_allclose(np.concatenate([np.asarray(b.x) for b in out]), expected(samples, range(6)), atol=1e-6)


@pytest.mark.skipif(not HAVE_TFDS, reason="tensorflow-datasets / array-record not installed (pip install chipjax[tfds])")
def test_tfds_source():
    src = D.tfds_source(os.path.join(TFDS_DIR, "chipjax_tiny_fixture"), split="validation")
    out, idx = collect(src, batch_size=2, num_workers=2, process_index=0, process_count=1)
    np.testing.assert_array_equal(np.concatenate([b.labels for b in out]), [0, 1, 2])
    np.testing.assert_allclose(np.concatenate([np.asarray(b.x) for b in out]), expected(src, range(3)), atol=1e-6)


def test_seeded_order_is_a_fixed_permutation_and_processes_split_it(imagenet):
    src = D.folder_source(imagenet / "train")
    _, a = collect(src, batch_size=7, num_workers=2, seed=3, process_index=0, process_count=1)
    _, b = collect(src, batch_size=3, num_workers=0, seed=3, process_index=0, process_count=1)
    _, c = collect(src, batch_size=7, num_workers=2, seed=4, process_index=0, process_count=1)
    np.testing.assert_array_equal(a, b)  # same seed: same order, whatever the batch size or worker count
    assert sorted(a.tolist()) == list(range(24)) and a.tolist() != list(range(24)) and a.tolist() != c.tolist()
    shares = [collect(src, batch_size=4, num_workers=2, seed=3, process_index=p, process_count=3)[1] for p in range(3)]
    np.testing.assert_array_equal(np.sort(np.concatenate(shares)), np.arange(24))  # disjoint, covering
    for p, share in enumerate(shares):
        np.testing.assert_array_equal(share, a[p::3])  # every third position of the seeded order
    # resume: start skips positions of this share
    _, rest = collect(src, batch_size=4, num_workers=2, seed=3, process_index=1, process_count=3, start=3)
    np.testing.assert_array_equal(rest, shares[1][3:])
    with pytest.raises(InputError, match="process_index"):
        collect(src, batch_size=4, process_index=3, process_count=3)


def test_corrupt_image_mid_run_is_skipped_counted_and_reported(tmp_path, caplog):
    for c in range(2):
        os.makedirs(tmp_path / str(c))
        for k in range(5):
            Image.fromarray(image(10 * c + k)).save(tmp_path / str(c) / f"{k}.png")
    bad = tmp_path / "0" / "3.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated mid-file
    (tmp_path / "1" / "1.png").write_bytes(b"not an image at all")
    src = D.folder_source(tmp_path)
    report = pipeline.LoadReport()
    with caplog.at_level(logging.WARNING, logger="chipjax"):
        out, idx = collect(src, batch_size=4, num_workers=2, report=report, process_index=0, process_count=1)
    assert [len(b.labels) for b in out] == [4, 4]
    np.testing.assert_array_equal(idx, [0, 1, 2, 4, 5, 7, 8, 9])
    assert out[-1].position == 10
    assert report.loaded == 8 and [s.index for s in report.skipped] == [3, 6]
    assert report.skipped[0].name == str(bad) and report.skipped[1].name == str(tmp_path / "1" / "1.png")
    summary = report.summary()
    assert "skipped 2 unreadable" in summary and str(bad) in summary
    assert sum("skipped unreadable image" in r.message for r in caplog.records) == 2
    back = pipeline.LoadReport.from_state(report.state())
    assert back == report


def test_unlabelled_image_refused_when_labels_are_required(tmp_path):
    Image.fromarray(image(0)).save(tmp_path / "a.png")
    with pytest.raises(InputError, match="no class label"):
        collect(D.folder_source(tmp_path), batch_size=2, require_labels=True, process_index=0, process_count=1)


def test_zoo_model_preprocessing_is_the_models_own(imagenet):
    import chipjax as cj

    model = cj.load_model("resnet18", weights=None, seed=0)
    src = D.folder_source(imagenet / "train")
    (batch,) = list(pipeline.batches(src[:3], model, batch_size=3, num_workers=2, process_index=0, process_count=1))
    want = np.concatenate([np.asarray(model.preprocess(s.image)) for s in src[:3]])
    np.testing.assert_allclose(np.asarray(batch.x), want, atol=1e-6)
