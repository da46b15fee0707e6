"""Data sources: image folders with boxes, ILSVRC box files, tensorflow-datasets.

Every source is a sized, indexable, lazily loading sequence of :class:`Sample`; an image is read only
when its sample is asked for.

Box convention (as in :mod:`chipjax.metrics`): ``(x0, y0, x1, y1)`` float pixel coordinates of the
*original* image, ``x`` the column, ``x1``/``y1`` exclusive (a box covering the whole ``(H, W)`` image is
``(0, 0, W, H)``). ILSVRC files store inclusive corners (``xmax`` is the last pixel column); their readers
add 1. tensorflow-datasets stores ``(ymin, xmin, ymax, xmax)`` fractions of the image size; the tfds
source multiplies them out. To compare boxes with maps at the network's input size, map them with
:func:`chipjax.metrics.resize_boxes` / :func:`chipjax.metrics.crop_boxes` the way the model's view
resized/cropped the image.

Class labels are ImageNet-1k indices ``0..999`` (the sorted order of the 1000 ILSVRC-2012 synsets,
``n01440764`` … ``n15075141``, shipped as ``chipjax/assets/imagenet_synsets.txt``), except in
:func:`tfds_source`, which gives the data set's own label.

The registry: :func:`load_source` turns a name (a bundled set of :mod:`chipjax.evalsets`, ``tfds:…``,
``ilsvrc:…``, a folder) into an :class:`EvalSource` (samples and which predictions count as right), as
``chipjax eval`` and ``chipjax fit`` take them.

Over 500 lines on purpose: it is the whole data-source layer (folders, labels files, ILSVRC XML and CSV
boxes, tensorflow-datasets and the registry over them); the readers share :class:`Source`, the label and
box helpers, and each is a few dozen lines that a split would scatter over files.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import xml.etree.ElementTree as ET
from functools import lru_cache
from importlib import resources
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from . import evalsets
from .errors import ChipjaxError, InputError
from .samples import Sample

__all__ = [
    "Sample",
    "Source",
    "IMAGE_EXTENSIONS",
    "imagenet_synsets",
    "synset_to_index",
    "resolve_label",
    "folder_source",
    "labels_file_source",
    "ilsvrc_xml_boxes",
    "ilsvrc_csv_boxes",
    "ilsvrc_source",
    "tfds_source",
    "BUNDLED_SETS",
    "EvalSource",
    "load_source",
    "exact_label",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_SYNSET = re.compile(r"^n\d{8}$")
BoxTable = Mapping[str, "tuple[str, np.ndarray]"]


class Source(Sequence[Sample]):
    """A sized, indexable sequence of samples, each loaded on access by ``load(i)``."""

    def __init__(self, size: int, load: Callable[[int], Sample], description: str,
                 name_of: Callable[[int], str] | None = None, digest: Callable[[int], str] | None = None):
        self._size = int(size)
        self._load = load
        self._name_of = name_of
        self._digest = digest
        self.description = description

    def name_of(self, i: int) -> str:
        """Where sample ``i`` comes from (its file path when the source has files), without reading it."""
        return self._name_of(int(i)) if self._name_of is not None else f"{self.description}[{int(i)}]"

    def digest(self, i: int) -> str | None:
        """A hash of sample ``i``'s content (image bytes, label, boxes) without decoding the image, or
        ``None`` when this source cannot tell it cheaply (results then depend on its description only)."""
        return None if self._digest is None else self._digest(int(i))

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._size))]
        i = int(i)
        if i < 0:
            i += self._size
        if not 0 <= i < self._size:
            raise IndexError(f"sample {i} out of range for a source of {self._size}")
        return self._load(i)

    def __iter__(self) -> Iterator[Sample]:
        return (self._load(i) for i in range(self._size))

    def __repr__(self) -> str:
        return f"Source({self.description}, {self._size} samples)"


# --- labels --------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _read_synsets(path: str | None) -> tuple[str, ...]:
    if path is None:
        text = resources.files("chipjax").joinpath("assets/imagenet_synsets.txt").read_text("utf-8")
        where = "chipjax/assets/imagenet_synsets.txt"
    else:
        if not os.path.isfile(path):
            raise InputError(f"synset list not found: {path}; give a text file with one synset (n01440764) per line")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        where = path
    synsets = tuple(line.split()[0] for line in text.splitlines() if line.strip())
    bad = [s for s in synsets if not _SYNSET.match(s)]
    if bad:
        raise InputError(f"{where}: {bad[0]!r} is not a WordNet synset id like n01440764 (first word of each line)")
    if len(set(synsets)) != len(synsets):
        raise InputError(f"{where}: some synsets are listed twice")
    return synsets


def imagenet_synsets(path: str | os.PathLike | None = None) -> list[str]:
    """The synsets in class-index order: the shipped ILSVRC-2012 list (1000, sorted) or the file ``path``
    (one synset per line, first word of the line, in class-index order)."""
    return list(_read_synsets(None if path is None else os.fspath(path)))


def synset_to_index(path: str | os.PathLike | None = None) -> dict[str, int]:
    """``{synset: class index}``: ``n01440764 -> 0`` … ``n15075141 -> 999`` (or from the list in ``path``)."""
    return {s: i for i, s in enumerate(imagenet_synsets(path))}


@lru_cache(maxsize=1)
def _name_to_index() -> dict[str, int]:
    from .models.labels import imagenet_labels

    return {name.lower(): i for i, name in enumerate(imagenet_labels())}


def resolve_label(label, synsets: str | os.PathLike | None = None) -> int | None:
    """An ImageNet class index from an index (``281``, ``"281"``), a synset (``"n02123045"``) or a class
    name from :func:`chipjax.models.labels.imagenet_labels` (``"tabby"``; case and ``_``/space free).

    ``None`` stays ``None``. Raises :class:`InputError` for anything else.
    """
    if label is None:
        return None
    n_classes = len(imagenet_synsets(synsets))
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
        index = int(label)
    elif isinstance(label, str) and label.strip().isdigit():
        index = int(label.strip())
    elif isinstance(label, str) and _SYNSET.match(label.strip()):
        table = synset_to_index(synsets)
        if label.strip() not in table:
            raise InputError(f"synset {label!r} is not one of the {n_classes} classes; check the name or pass a synset list")
        return table[label.strip()]
    elif isinstance(label, str):
        key = label.strip().replace("_", " ").lower()
        names = _name_to_index()
        if key not in names:
            raise InputError(
                f"{label!r} is neither a class index, a synset (n02123045) nor an ImageNet class name "
                f"(see chipjax.models.labels.imagenet_labels()); rename it"
            )
        return names[key]
    else:
        raise InputError(f"a label must be an int, a synset or a class name; got {type(label).__name__} {label!r}")
    if not 0 <= index < n_classes:
        raise InputError(f"class index {index} is outside 0..{n_classes - 1}")
    return index


# --- boxes ---------------------------------------------------------------------------------------
def _boxes_array(boxes, where: str) -> np.ndarray:
    try:
        b = np.asarray(boxes if boxes is not None else [], dtype=np.float32)
    except (TypeError, ValueError):
        raise InputError(f"{where}: boxes must be a list of [x0, y0, x1, y1] numbers") from None
    if b.size == 0:
        return np.zeros((0, 4), np.float32)
    if b.ndim != 2 or b.shape[1] != 4:
        raise InputError(f"{where}: boxes must be a list of [x0, y0, x1, y1]; got shape {b.shape}")
    if not np.isfinite(b).all() or (b[:, 2] < b[:, 0]).any() or (b[:, 3] < b[:, 1]).any():
        raise InputError(f"{where}: every box needs finite x0 <= x1 and y0 <= y1 (x1, y1 exclusive); got {b.tolist()}")
    return b


def _clip_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.clip(boxes, 0.0, np.array([width, height, width, height], np.float32)).astype(np.float32)


def _load_rgb(path: str) -> np.ndarray:
    from .models.preprocess import to_rgb_uint8

    return to_rgb_uint8(path)


def _records_source(records: Sequence[tuple[str, int | None, np.ndarray, str]], description: str) -> Source:
    """Source over ``(path, label, boxes, name)`` records; boxes are clipped to the image once it is read."""

    def load(i: int) -> Sample:
        path, label, boxes, name = records[i]
        image = _load_rgb(path)
        return Sample(image, label, _clip_boxes(boxes, *image.shape[:2]), name)

    def digest(i: int) -> str:
        path, label, boxes, name = records[i]
        return record_digest(path, label, boxes, name)

    return Source(len(records), load, description, name_of=lambda i: records[i][0], digest=digest)


def record_digest(path: str, label, boxes, name: str) -> str:
    """sha256 (first 16 hex digits) of an image file's bytes and its label, boxes and name.

    An unreadable file digests as ``missing:…`` (the sample is reported when it is loaded).
    """
    import hashlib

    h = hashlib.sha256(f"{name}|{label}|{np.asarray(boxes, np.float32).round(3).tolist()}|".encode())
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        return f"missing:{type(e).__name__}"
    return h.hexdigest()[:16]


# --- folders -------------------------------------------------------------------------------------
def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _listdir(path: str) -> tuple[list[str], list[str]]:
    """(sorted sub-folder names, sorted image file names) of ``path``."""
    dirs, files = [], []
    with os.scandir(path) as it:
        for entry in it:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                dirs.append(entry.name)
            elif entry.is_file() and _is_image(entry.name):
                files.append(entry.name)
    return sorted(dirs), sorted(files)


def folder_source(root: str | os.PathLike, boxes_file: str = "boxes.json", synsets: str | os.PathLike | None = None) -> Source:
    """Images from a folder, in one of three layouts (checked in this order):

    1. ``root/boxes.json`` lists the images, their labels and boxes::

         {"images": [{"file": "a.jpg", "label": 281, "boxes": [[x0, y0, x1, y1], ...]}, ...]}

       ``file`` is relative to ``root`` (sub-folders allowed); ``label`` is a class index, a synset or a
       class name, or ``null``/absent; ``boxes`` (absent = none) are in the image's pixels, ``x1``/``y1``
       exclusive. Images are taken in the listed order.
    2. one sub-folder per class, named by a class index (``281``), a synset (``n02123045``) or a class
       name (``tabby`` / ``tabby_cat``…, see :func:`chipjax.models.labels.imagenet_labels`); no boxes.
    3. a flat folder of images: no labels, no boxes.

    Images are sorted by name within a folder. Nothing is read until a sample is asked for.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise InputError(f"image folder not found: {root}")
    json_path = os.path.join(root, boxes_file)
    if os.path.isfile(json_path):
        return _records_source(_json_records(root, json_path, synsets), f"{json_path}")
    dirs, files = _listdir(root)
    if dirs:
        if files:
            raise InputError(
                f"{root} holds both class sub-folders and loose images ({files[0]}, ...): move the images into "
                f"class folders, or list every image in {boxes_file}"
            )
        records = []
        for d in dirs:
            try:
                label = resolve_label(d, synsets)
            except InputError as e:
                raise InputError(f"class folder {os.path.join(root, d)}: {e}") from None
            for f in _listdir(os.path.join(root, d))[1]:
                records.append((os.path.join(root, d, f), label, np.zeros((0, 4), np.float32), f"{d}/{f}"))
        if not records:
            raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in the class folders of {root}")
        return _records_source(records, f"class folders in {root}")
    if not files:
        raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {root}, and no {boxes_file}")
    records = [(os.path.join(root, f), None, np.zeros((0, 4), np.float32), f) for f in files]
    return _records_source(records, f"images in {root}")


def labels_file_source(root: str | os.PathLike, labels_file: str | os.PathLike,
                       synsets: str | os.PathLike | None = None) -> Source:
    """Images listed with their labels in a text file: ``RELATIVE_PATH LABEL`` or ``RELATIVE_PATH,LABEL``
    per line (a first line ``file,label`` / ``path,label`` is a header; ``#`` starts a comment).

    ``LABEL`` is a class index, a synset or a class name (:func:`resolve_label`); paths are relative to
    ``root``. Images are taken in the listed order; no boxes. (The ILSVRC train ``LOC_train_solution``
    style and the classic ``train.txt``/``val.txt`` lists both read this way.)
    """
    root, labels_file = os.fspath(root), os.fspath(labels_file)
    if not os.path.isdir(root):
        raise InputError(f"image folder not found: {root}")
    if not os.path.isfile(labels_file):
        raise InputError(f"labels file not found: {labels_file}; give lines 'relative/path.jpg LABEL'")
    records = []
    with open(labels_file, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = [p.strip() for p in (line.split(",") if "," in line else line.rsplit(None, 1))]
            if line_no == 1 and parts[0].lower() in ("file", "path", "filename", "image"):
                continue
            where = f"{labels_file} line {line_no}"
            if len(parts) != 2 or not parts[0]:
                raise InputError(f"{where}: expected 'relative/path.jpg LABEL', got {line!r}")
            path = os.path.join(root, parts[0])
            if not os.path.isfile(path):
                raise InputError(f"{where}: image file not found: {path}")
            try:
                label = resolve_label(parts[1], synsets)
            except InputError as e:
                raise InputError(f"{where}: {e}") from None
            records.append((path, label, np.zeros((0, 4), np.float32), parts[0]))
    if not records:
        raise InputError(f"{labels_file} lists no images")
    return _records_source(records, f"{labels_file}")


def _json_records(root: str, json_path: str, synsets) -> list:
    try:
        with open(json_path, encoding="utf-8") as f:
            table = json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"{json_path} is not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{json_path} is not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from None
    except RecursionError:
        raise InputError(f"{json_path} nests its JSON too deeply to read; write it as "
                         f'{{"images": [{{"file": ..., "label": ..., "boxes": [...]}}, ...]}}') from None
    entries = table.get("images") if isinstance(table, dict) else None
    if not isinstance(entries, list):
        raise InputError(f'{json_path} must hold {{"images": [{{"file": ..., "label": ..., "boxes": [...]}}, ...]}}')
    records = []
    for n, entry in enumerate(entries):
        where = f"{json_path} images[{n}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise InputError(f'{where}: each entry needs "file" (a path relative to {root})')
        path = os.path.join(root, entry["file"])
        if not os.path.isfile(path):
            raise InputError(f"{where}: image file not found: {path}")
        try:
            label = resolve_label(entry.get("label"), synsets)
        except InputError as e:
            raise InputError(f"{where}: {e}") from None
        records.append((path, label, _boxes_array(entry.get("boxes"), where), entry["file"]))
    if not records:
        raise InputError(f"{json_path} lists no images")
    return records


# --- ILSVRC --------------------------------------------------------------------------------------
def _inclusive_to_exclusive(boxes: np.ndarray, inclusive: bool) -> np.ndarray:
    return boxes + np.array([0, 0, 1, 1], np.float32) if inclusive and len(boxes) else boxes


def _xml_text(node, tag: str, where: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None:
        raise InputError(f"{where}: <{tag}> is missing")
    return child.text.strip()


def ilsvrc_xml_boxes(xml_dir: str | os.PathLike, inclusive: bool = True) -> dict[str, tuple[str, np.ndarray]]:
    """Read ILSVRC (PASCAL VOC-style) box annotations: one ``.xml`` per image in ``xml_dir`` (recursive).

    The image id is the file name without ``.xml`` (e.g. ``ILSVRC2012_val_00000001``). The image's synset
    is the first ``<object>``'s ``<name>``; its boxes are those of every object with that synset. Files
    without objects are skipped. Corners are inclusive in ILSVRC (``inclusive=True``) and come out
    exclusive: ``x1 = xmax + 1``, clipped to ``<size>``.

    Returns:
      ``{image_id: (synset, float32 boxes (G, 4))}``.
    """
    xml_dir = os.fspath(xml_dir)
    if not os.path.isdir(xml_dir):
        raise InputError(f"ILSVRC annotation folder not found: {xml_dir}")
    out: dict[str, tuple[str, np.ndarray]] = {}
    for folder, _, names in os.walk(xml_dir):
        for name in sorted(names):
            if not name.lower().endswith(".xml"):
                continue
            path = os.path.join(folder, name)
            try:
                tree = ET.parse(path).getroot()
            except ET.ParseError as e:
                raise InputError(f"{path} is not valid XML ({e})") from None
            objects = tree.findall("object")
            if not objects:
                continue
            synset = _xml_text(objects[0], "name", path)
            corners = [
                [float(_xml_text(o, f"bndbox/{k}", path)) for k in ("xmin", "ymin", "xmax", "ymax")]
                for o in objects
                if _xml_text(o, "name", path) == synset
            ]
            boxes = _inclusive_to_exclusive(_boxes_array(corners, path), inclusive)
            size = tree.find("size")
            if size is not None and size.find("width") is not None and size.find("height") is not None:
                boxes = _clip_boxes(boxes, int(_xml_text(size, "height", path)), int(_xml_text(size, "width", path)))
            out[os.path.splitext(name)[0]] = (synset, boxes)
    if not out:
        raise InputError(f"no ILSVRC .xml annotations with objects in {xml_dir}")
    return out


def ilsvrc_csv_boxes(csv_path: str | os.PathLike, inclusive: bool = True) -> dict[str, tuple[str, np.ndarray]]:
    """Read ``LOC_val_solution.csv`` (Kaggle ILSVRC localisation): ``ImageId,PredictionString`` rows with
    ``"synset x0 y0 x1 y1 synset x0 y0 x1 y1 ..."``.

    Same rules and result as :func:`ilsvrc_xml_boxes` (first synset, its boxes, inclusive corners made
    exclusive; no image size here, so boxes are clipped only when the image is read).
    """
    csv_path = os.fspath(csv_path)
    if not os.path.isfile(csv_path):
        raise InputError(f"ILSVRC box file not found: {csv_path}")
    out: dict[str, tuple[str, np.ndarray]] = {}
    with open(csv_path, encoding="utf-8") as f:
        header = f.readline().strip().split(",")
        if [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise InputError(f"{csv_path}: expected the header 'ImageId,PredictionString', got {','.join(header)!r}")
        for line_no, line in enumerate(f, start=2):
            if not line.strip():
                continue
            image_id, _, prediction = line.strip().partition(",")
            tokens = prediction.split()
            where = f"{csv_path} line {line_no}"
            if not tokens or len(tokens) % 5:
                raise InputError(f"{where}: PredictionString must be groups of 'synset x0 y0 x1 y1'; got {prediction!r}")
            groups = [tokens[i : i + 5] for i in range(0, len(tokens), 5)]
            synset = groups[0][0]
            try:
                corners = [[float(v) for v in g[1:]] for g in groups if g[0] == synset]
            except ValueError:
                raise InputError(f"{where}: box corners must be numbers; got {prediction!r}") from None
            out[image_id.strip()] = (synset, _inclusive_to_exclusive(_boxes_array(corners, where), inclusive))
    if not out:
        raise InputError(f"{csv_path} has no rows")
    return out


def ilsvrc_source(
    images_dir: str | os.PathLike,
    boxes: BoxTable | str | os.PathLike,
    synsets: str | os.PathLike | None = None,
) -> Source:
    """ILSVRC images with their class and boxes.

    Args:
      images_dir: folder holding ``<image_id>.JPEG`` files (searched recursively, any image extension).
      boxes: ``{image_id: (synset, boxes)}`` from :func:`ilsvrc_xml_boxes` / :func:`ilsvrc_csv_boxes`, or
        a path: a folder of ``.xml`` files or a ``.csv`` file.
      synsets: optional synset list file (one per line, class-index order) instead of the shipped one.

    The samples are the annotated images found in ``images_dir``, sorted by id; labels are class
    indices of the synsets.
    """
    if isinstance(boxes, (str, os.PathLike)):
        path = os.fspath(boxes)
        boxes = ilsvrc_csv_boxes(path) if os.path.isfile(path) else ilsvrc_xml_boxes(path)
    images_dir = os.fspath(images_dir)
    if not os.path.isdir(images_dir):
        raise InputError(f"ILSVRC image folder not found: {images_dir}")
    files: dict[str, str] = {}
    for folder, _, names in os.walk(images_dir):
        for name in names:
            if _is_image(name):
                files.setdefault(os.path.splitext(name)[0], os.path.join(folder, name))
    ids = sorted(set(files) & set(boxes))
    if not ids:
        example = next(iter(boxes), "?")
        raise InputError(f"none of the {len(boxes)} annotated images (e.g. {example}.JPEG) is in {images_dir}")
    table = synset_to_index(synsets)
    records = []
    for image_id in ids:
        synset, b = boxes[image_id]
        if synset not in table:
            raise InputError(f"{image_id}: synset {synset} is not one of the {len(table)} classes; pass the right synset list")
        records.append((files[image_id], table[synset], np.asarray(b, np.float32).reshape(-1, 4), image_id))
    return _records_source(records, f"ILSVRC images in {images_dir}")


# --- tensorflow-datasets -------------------------------------------------------------------------
_NAME_KEYS = ("file_name", "image/filename", "filename", "image_id", "id")


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ChipjaxError(
            f"tensorflow-datasets is not installed ({e}); pip install chipjax[tfds] "
            f"(tensorflow-datasets and array-record; TensorFlow is not needed)"
        ) from None
    return tfds


def _builder_dir(path: str) -> str:
    """The folder holding ``dataset_info.json``: ``path`` itself or its newest version sub-folder."""
    if os.path.isfile(os.path.join(path, "dataset_info.json")):
        return path
    versions = [
        d for d in os.listdir(path) if re.match(r"^\d+\.\d+\.\d+$", d) and os.path.isfile(os.path.join(path, d, "dataset_info.json"))
    ]
    if not versions:
        raise InputError(f"{path} is not a prepared tensorflow-datasets folder: no dataset_info.json in it or in a version sub-folder (1.0.0/)")
    return os.path.join(path, max(versions, key=lambda v: tuple(int(p) for p in v.split("."))))


def _get(example: Mapping, key: str):
    """``example["a/b"]`` -> ``example["a/b"]`` if present, else ``example["a"]["b"]``; ``None`` if neither."""
    if key in example:
        return example[key]
    node = example
    for part in key.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def tfds_source(
    name_or_dir: str | os.PathLike,
    split: str = "validation",
    data_dir: str | os.PathLike | None = None,
    image_key: str = "image",
    label_key: str | None = "label",
    boxes_key: str | None = "objects/bbox",
) -> Source:
    """A prepared tensorflow-datasets split, read with ``array_record`` random access (no TensorFlow).

    Args:
      name_or_dir: a data set name (``"imagenet2012"``, ``"voc/2007"``), prepared under ``data_dir``
        (default ``~/tensorflow_datasets``; nothing is downloaded), or the folder of a prepared data set
        (the one holding ``dataset_info.json``, or its parent with version sub-folders).
      split: split name or slice (``"validation[:100]"``).
      image_key, label_key, boxes_key: feature paths (``a/b`` for nested features). Boxes are tfds
        ``BBoxFeature`` values ``(ymin, xmin, ymax, xmax)`` in ``[0, 1]``, returned as pixel
        ``(x0, y0, x1, y1)``. Missing label or boxes features give ``None`` / no boxes.

    The label is the data set's own class label (for ``imagenet2012`` that is the ImageNet index). The
    name is the example's ``file_name``/``image/filename``/``filename``/``id`` feature, else
    ``"<split>/<index>"``. Needs ``pip install chipjax[tfds]``.
    """
    tfds = _import_tfds()
    target = os.fspath(name_or_dir)
    try:
        if os.path.isdir(target):
            data = tfds.builder_from_directory(_builder_dir(target)).as_data_source(split=split)
        else:
            kwargs = {} if data_dir is None else {"data_dir": os.fspath(data_dir)}
            data = tfds.data_source(target, split=split, download=False, **kwargs)
    except ChipjaxError:
        raise
    except Exception as e:  # tfds raises many kinds: unknown name, missing files, bad split
        raise InputError(
            f"cannot open tensorflow-datasets {target!r} split {split!r}: {type(e).__name__}: {e}. "
            f"Prepare it first (tfds build --file_format=array_record) or pass the folder holding dataset_info.json"
        ) from None

    def load(i: int) -> Sample:
        example = data[i]
        image = _get(example, image_key)
        if image is None:
            raise InputError(f"{target}: examples have no {image_key!r} feature; pass image_key=one of {sorted(example)}")
        from .models.preprocess import to_rgb_uint8

        image = to_rgb_uint8(np.asarray(image))
        h, w = image.shape[:2]
        label = _get(example, label_key) if label_key else None
        raw = _get(example, boxes_key) if boxes_key else None
        yx = np.asarray(raw if raw is not None else [], np.float32).reshape(-1, 4)
        boxes = _clip_boxes(yx[:, [1, 0, 3, 2]] * np.array([w, h, w, h], np.float32), h, w)
        name = next((_get(example, k) for k in _NAME_KEYS if _get(example, k) is not None), None)
        if isinstance(name, (bytes, np.bytes_)):
            name = name.decode("utf-8", "replace")
        return Sample(image, None if label is None else int(label), boxes, f"{split}/{i}" if name is None else str(name))

    return Source(len(data), load, f"tfds {target} [{split}]")


#: The sets that ship with chipjax (:mod:`chipjax.evalsets`), by the name :func:`load_source` takes.
BUNDLED_SETS = ("photos", "composites", "two-object")


# ------------------------------------------------------------------------- the registry of named sources
@dataclasses.dataclass(frozen=True)
class EvalSource:
    """Samples to evaluate and which predictions count as right.

    Attributes:
      samples: a sequence of :class:`chipjax.data.Sample` (loaded on access).
      description: what they are, e.g. ``"composites(n=60, seed=0)"``.
      accept: label -> every class index that counts as a right prediction for it.
      boxes_are_masks: the boxes are the objects' exact pixel regions (composites: the pasted rectangles),
        so ``pxap`` can be measured.
    """

    samples: Sequence
    description: str
    accept: Callable[[int], tuple[int, ...]]
    boxes_are_masks: bool = False


def exact_label(label: int) -> tuple[int, ...]:
    """The ``accept`` of a source whose label is the only right prediction: ``label -> (label,)``."""
    return (int(label),)


def _first(samples, n: int | None):
    if n is None:
        return samples
    if int(n) < 1:
        raise InputError(f"the number of images must be at least 1, got {n}")
    return samples[: int(n)]


def load_source(spec, num_images: int | None = None, seed: int = 0, boxes: str | None = None,
                split: str = "validation") -> EvalSource:
    """An :class:`EvalSource` from a name, a path or a sequence of samples.

    ``spec``:
      * ``"photos"``: :func:`chipjax.evalsets.photo_set` (real photos, hand boxes);
      * ``"composites"``: :func:`chipjax.evalsets.composite_set` (``num_images`` of them, default 200,
        from ``seed``);
      * ``"two-object"``: :func:`chipjax.evalsets.two_object_composites` (each canvas gives two samples);
      * ``"tfds:NAME_OR_DIR"``: a prepared tensorflow-datasets ``split``;
      * ``"ilsvrc:IMAGES_DIR"``: ILSVRC images with ``boxes`` (the XML folder or ``LOC_val_solution.csv``);
      * a folder: :func:`folder_source` (``boxes.json``, class sub-folders or plain images);
      * a sequence of samples.

    ``num_images`` keeps the first ones (composites are made so that a shorter set is a prefix).
    """
    if not isinstance(spec, (str, os.PathLike)):
        samples = list(spec)
        return EvalSource(_first(samples, num_images), f"{len(samples)} given samples", exact_label)
    spec = os.fspath(spec)
    if spec == "photos":
        samples = evalsets.photo_set()
        return EvalSource(_first(samples, num_images), "photos", evalsets.acceptable_labels)
    if spec == "composites":
        n = 200 if num_images is None else int(num_images)
        return EvalSource(_first(evalsets.composite_set(n, seed=seed), n), f"composites(seed={seed})",
                          evalsets.acceptable_labels, boxes_are_masks=True)
    if spec == "two-object":
        n = 100 if num_images is None else int(num_images)
        canvases = max(1, math.ceil(n / 2))
        return EvalSource(_first(evalsets.two_object_composites(canvases, seed=seed), n),
                          f"two-object(seed={seed})", evalsets.acceptable_labels, boxes_are_masks=True)
    if spec.startswith("tfds:"):
        source = tfds_source(spec[5:], split=split)
        return EvalSource(_first(source, num_images), f"tfds {spec[5:]} {split}", exact_label)
    if spec.startswith("ilsvrc:"):
        if not boxes:
            raise InputError("an ILSVRC source needs its boxes: --boxes XML_FOLDER or LOC_val_solution.csv")
        source = ilsvrc_source(spec[7:], boxes)
        return EvalSource(_first(source, num_images), f"ilsvrc {spec[7:]}", exact_label)
    if os.path.isdir(spec):
        source = folder_source(spec)
        return EvalSource(_first(source, num_images), f"folder {spec}", exact_label)
    raise InputError(f"unknown data {spec!r}: use {', '.join(BUNDLED_SETS)}, tfds:NAME, ilsvrc:IMAGES_DIR "
                     f"(with --boxes) or an image folder")


