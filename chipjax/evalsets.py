"""Evaluation sets that need no download: real photos with hand-drawn boxes, and composites.

* :func:`photo_set`: the real photos bundled with scikit-image, matplotlib and scikit-learn,
  one :class:`~chipjax.data.Sample` per (photo, class) with that class's boxes, drawn by hand in
  ``chipjax/assets/photo_boxes.json``.
* :func:`composite_set`: objects cut out of those photos (the hand box, its rim faded so the paste
  has no hard edge) pasted at a random place and scale onto backgrounds that hold none of the
  pasted classes: grey textures tinted at random, regions of the photos away from every object,
  smooth noise. The box is the pasted rectangle, so it is exact.
* :func:`two_object_composites`: two objects of different classes side by side on one canvas, one
  sample per object (same image, each with its own label and box): a map of class c should peak on
  c's object.

Boxes are ``(x0, y0, x1, y1)`` in pixels, x1/y1 exclusive. Labels are ImageNet indices in
torchvision order; a photo's entry may list several acceptable labels (the sample carries the
first; :func:`acceptable_labels` gives them all). Composites are deterministic: sample ``i`` of
seed ``s`` depends only on ``(s, i)``, so a shorter set is a prefix of a longer one.

``photo_boxes.json`` format: ``{"photos": [{name, source, labels, boxes, paste, note}],
"backgrounds": [{source, box, note}]}``. ``source`` is ``"skimage:NAME"`` (a function of
``skimage.data``; for a stereo pair, its left view), ``"matplotlib:FILE"`` (matplotlib sample data)
or ``"sklearn:FILE"`` (the file ``sklearn.datasets.load_sample_image`` reads). ``paste`` says
whether the object is used in composites (pasted at 55-70 % of the canvas, EfficientNet-Lite0 still
ranks one of its labels in its top 5 on most backgrounds); ``boxes[0]`` is the object pasted.

Images of :func:`photo_set` and :func:`two_object_composites` are shared, read-only arrays: copy
before writing into them.
"""
from __future__ import annotations

import importlib.util
import io
import json
import os
from functools import lru_cache
from importlib import resources
from typing import NamedTuple, Sequence

import numpy as np
from PIL import Image

from .errors import ImageError, InputError
from .samples import Sample

__all__ = [
    "coloured_squares",
    "photo_entries",
    "background_entries",
    "bundled_photo",
    "photo_set",
    "acceptable_labels",
    "paste_objects",
    "sample_rng",
    "draw_background",
    "soft_mask",
    "paste",
    "composite_set",
    "two_object_composites",
    "save_preview",
    "PhotoEntry",
    "BackgroundEntry",
    "PasteObject",
]

NUM_CLASSES = 1000
COMPOSITE_STREAM = 1
TWO_OBJECT_STREAM = 2


class PhotoEntry(NamedTuple):
    """One (photo, class) entry of ``photo_boxes.json``; boxes ``(x0, y0, x1, y1)`` ints."""

    name: str
    source: str
    labels: tuple[int, ...]
    boxes: tuple[tuple[int, int, int, int], ...]
    paste: bool
    note: str


class BackgroundEntry(NamedTuple):
    """A photo region ``box = (x0, y0, x1, y1)`` that holds none of the pasted classes."""

    source: str
    box: tuple[int, int, int, int]
    note: str


class PasteObject(NamedTuple):
    """An object cut out of a photo: ``rgb`` uint8 ``(h, w, 3)``, the hand box's content."""

    name: str
    label: int
    labels: tuple[int, ...]
    rgb: np.ndarray


def _make_sample(image: np.ndarray, label: int, boxes, name: str):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return Sample(image=image, label=int(label), boxes=boxes, name=name)


# --------------------------------------------------------------------------- photos and their boxes


@lru_cache(maxsize=1)
def _boxes_file() -> dict:
    text = resources.files("chipjax").joinpath("assets/photo_boxes.json").read_text("utf-8")
    return json.loads(text)


def _check_box(box: Sequence[float], where: str) -> tuple[int, int, int, int]:
    if len(box) != 4:
        raise InputError(f"{where}: a box is [x0, y0, x1, y1], got {box!r}")
    x0, y0, x1, y1 = (int(v) for v in box)
    if not (0 <= x0 < x1 and 0 <= y0 < y1):
        raise InputError(f"{where}: box {box!r} is empty or negative; need 0 <= x0 < x1 and 0 <= y0 < y1")
    return x0, y0, x1, y1


def _check_inside(box: tuple[int, int, int, int], shape: tuple[int, ...], where: str) -> None:
    if box[2] > shape[1] or box[3] > shape[0]:
        raise InputError(f"{where}: box {box} reaches outside its {shape[1]}x{shape[0]} photo; redraw it")


def _check_labels(labels: Sequence[int], where: str) -> tuple[int, ...]:
    labels = tuple(int(v) for v in labels)
    if not labels or any(not 0 <= v < NUM_CLASSES for v in labels):
        raise InputError(f"{where}: labels must be a non-empty list of ImageNet indices 0..999, got {labels!r}")
    return labels


@lru_cache(maxsize=1)
def photo_entries() -> tuple[PhotoEntry, ...]:
    """The hand-labelled (photo, class) entries, checked (boxes non-empty, labels in 0..999)."""
    out = []
    for i, entry in enumerate(_boxes_file()["photos"]):
        where = f"photo_boxes.json photos[{i}] ({entry.get('name', '?')})"
        boxes = tuple(_check_box(b, where) for b in entry["boxes"])
        if not boxes:
            raise InputError(f"{where}: needs at least one box")
        labels = _check_labels(entry["labels"], where)
        paste = bool(entry.get("paste", False))
        note = str(entry.get("note", ""))
        out.append(PhotoEntry(str(entry["name"]), str(entry["source"]), labels, boxes, paste, note))
    return tuple(out)


@lru_cache(maxsize=1)
def background_entries() -> tuple[BackgroundEntry, ...]:
    """Background regions: photo regions (and grey textures) that hold no pasted class."""
    entries = _boxes_file()["backgrounds"]
    return tuple(
        BackgroundEntry(str(e["source"]), _check_box(e["box"], f"photo_boxes.json backgrounds[{i}]"), str(e.get("note", "")))
        for i, e in enumerate(entries)
    )


def _sklearn_sample_path(name: str) -> str:
    """Path of scikit-learn's sample image ``name`` (what ``load_sample_image`` reads), found without
    importing scikit-learn (``sklearn.datasets`` takes seconds to import)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImageError(f"photo sklearn:{name} ships with scikit-learn: pip install scikit-learn")
    path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "images", name)
    if not os.path.isfile(path):
        raise ImageError(f"scikit-learn has no sample image {name!r} (looked for {path})")
    return path


def _read_source(source: str):
    kind, _, name = source.partition(":")
    if kind == "skimage":
        import skimage.data

        loader = getattr(skimage.data, name, None)
        if loader is None:
            raise ImageError(f"skimage.data has no image {name!r} (source {source!r}); upgrade scikit-image")
        image = loader()
        return image[0] if isinstance(image, tuple) else image  # a stereo pair: its left view
    if kind == "matplotlib":
        from matplotlib import cbook

        return Image.open(cbook.get_sample_data(name, asfileobj=False))
    if kind == "sklearn":
        return Image.open(_sklearn_sample_path(name))
    raise InputError(f"unknown photo source {source!r}; use skimage:NAME, matplotlib:FILE or sklearn:FILE")


@lru_cache(maxsize=None)
def bundled_photo(source: str) -> np.ndarray:
    """A bundled photo as read-only uint8 ``(H, W, 3)`` (grey photos get three equal channels)."""
    from .models.preprocess import to_rgb_uint8

    rgb = np.array(to_rgb_uint8(_read_source(source)), np.uint8)
    rgb.setflags(write=False)
    return rgb


def photo_set() -> list:
    """The real photos with hand boxes: one ``Sample`` per (photo, class) entry of the JSON.

    ``image`` is the original photo (uint8 ``(H, W, 3)``), ``boxes`` float32 ``(G, 4)`` of that
    class in original pixels, ``label`` the entry's first label, ``name`` the entry's name.
    """
    samples = []
    for entry in photo_entries():
        image = bundled_photo(entry.source)
        for box in entry.boxes:
            _check_inside(box, image.shape, f"photo_boxes.json entry {entry.name}")
        samples.append(_make_sample(image, entry.labels[0], entry.boxes, entry.name))
    return samples


def acceptable_labels(label: int) -> tuple[int, ...]:
    """Every label that counts for a sample labelled ``label`` (its entry's list), else ``(label,)``."""
    for entry in photo_entries():
        if entry.labels[0] == int(label):
            return entry.labels
    return (int(label),)


@lru_cache(maxsize=1)
def paste_objects() -> tuple[PasteObject, ...]:
    """The objects composites are made of: ``boxes[0]`` of every entry marked ``paste``."""
    objects = []
    for entry in photo_entries():
        if entry.paste:
            x0, y0, x1, y1 = entry.boxes[0]
            crop = np.array(bundled_photo(entry.source)[y0:y1, x0:x1])
            crop.setflags(write=False)
            objects.append(PasteObject(entry.name, entry.labels[0], entry.labels, crop))
    return tuple(objects)


# --------------------------------------------------------------------------- composites


def sample_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """The generator of sample ``index`` of one set: depends only on ``(seed, stream, index)``."""
    return np.random.default_rng([int(seed), int(stream), int(index)])


def _resize(rgb: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((w, h), Image.BILINEAR), np.uint8)


def _smooth_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    cells = int(rng.integers(3, 9))
    lo = rng.uniform(20, 120)
    coarse = rng.uniform(lo, lo + rng.uniform(40, 135), size=(cells, cells, 3))
    return np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((size, size), Image.BICUBIC), np.uint8)


def draw_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A uint8 ``(size, size, 3)`` canvas with none of the pasted classes.

    One of :func:`background_entries` (a random square crop of 50–100 % of the region's shorter
    side, resized; grey regions tinted by a random colour) or smooth colour noise, chosen uniformly.
    """
    entries = background_entries()
    pick = int(rng.integers(len(entries) + 1))
    if pick == len(entries):
        return _smooth_noise(rng, size)
    entry = entries[pick]
    x0, y0, x1, y1 = entry.box
    region = bundled_photo(entry.source)[y0:y1, x0:x1]
    side = int(min(region.shape[:2]) * rng.uniform(0.5, 1.0))
    top = int(rng.integers(region.shape[0] - side + 1))
    left = int(rng.integers(region.shape[1] - side + 1))
    canvas = _resize(region[top : top + side, left : left + side], size, size)
    if np.array_equal(canvas[..., 0], canvas[..., 1]) and np.array_equal(canvas[..., 0], canvas[..., 2]):
        tint = rng.uniform(0.45, 1.0, size=3)
        canvas = (canvas.astype(np.float32) * tint + 0.5).astype(np.uint8)
    return canvas


def soft_mask(h: int, w: int, feather: float = 0.1) -> np.ndarray:
    """float32 ``(h, w)`` alpha in [0, 1]: 1 inside the rectangle, fading linearly to 0 over a rim
    ``feather`` x the shorter side wide (product of a row ramp and a column ramp, so corners are
    soft too); hides the paste's hard edge but keeps the object's corners."""
    rim = max(1.0, feather * min(h, w))

    def ramp(n: int) -> np.ndarray:
        centres = np.arange(n, dtype=np.float32) + 0.5
        return np.clip(np.minimum(centres, n - centres) / rim, 0.0, 1.0)

    return (ramp(h)[:, None] * ramp(w)[None, :]).astype(np.float32)


def paste(canvas: np.ndarray, obj: np.ndarray, box: Sequence[int], soft: bool = True) -> np.ndarray:
    """``canvas`` uint8 ``(S, S, 3)`` with ``obj`` resized into ``box = (x0, y0, x1, y1)`` (inside
    the canvas), blended through :func:`soft_mask` when ``soft``; a new array, pixels outside the box
    unchanged."""
    x0, y0, x1, y1 = (int(v) for v in box)
    h, w = y1 - y0, x1 - x0
    out = np.array(canvas, np.uint8)
    patch = _resize(obj, h, w).astype(np.float32)
    if soft:
        alpha = soft_mask(h, w)[..., None]
        patch = alpha * patch + (1.0 - alpha) * out[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = np.clip(patch + 0.5, 0, 255).astype(np.uint8)
    return out


def _place(rng: np.random.Generator, obj_hw: tuple[int, int], long_side: float, area: tuple[int, ...]) -> tuple:
    """A box for an object of shape ``obj_hw`` whose longer side is ``long_side`` px (shrunk to fit),
    at a uniform random position inside ``area = (x0, y0, x1, y1)``."""
    ax0, ay0, ax1, ay1 = area
    oh, ow = obj_hw
    scale = min(long_side / max(oh, ow), (ax1 - ax0) / ow, (ay1 - ay0) / oh)
    h, w = max(1, int(round(oh * scale))), max(1, int(round(ow * scale)))
    h, w = min(h, ay1 - ay0), min(w, ax1 - ax0)
    x0 = ax0 + int(rng.integers(ax1 - ax0 - w + 1))
    y0 = ay0 + int(rng.integers(ay1 - ay0 - h + 1))
    return (x0, y0, x0 + w, y0 + h)


def _check_set_args(n: int, size: int, scale: tuple[float, float]) -> None:
    if int(n) < 0:
        raise InputError(f"n must be >= 0, got {n}")
    if int(size) < 16:
        raise InputError(f"size must be at least 16 pixels, got {size}")
    if not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise InputError(f"scale must be (low, high) with 0 < low <= high <= 1 (fractions of the canvas), got {scale}")


def composite_set(
    n: int = 200, seed: int = 0, size: int = 224, scale: tuple[float, float] = (0.4, 0.8), soft: bool = True
) -> list:
    """``n`` composites: one object of :func:`paste_objects` (chosen uniformly) pasted on
    :func:`draw_background`, its longer side ``scale`` (uniform range) of the canvas side.

    Returns ``Sample``\\s with ``image`` uint8 ``(size, size, 3)``, ``boxes`` float32 ``(1, 4)`` (the
    pasted rectangle), ``label`` the object's label, ``name`` ``"composite-{seed}-{i}:{object}"``.
    """
    _check_set_args(n, size, scale)
    objects = paste_objects()
    samples = []
    for i in range(int(n)):
        rng = sample_rng(seed, COMPOSITE_STREAM, i)
        canvas = draw_background(rng, size)
        obj = objects[int(rng.integers(len(objects)))]
        box = _place(rng, obj.rgb.shape[:2], rng.uniform(*scale) * size, (0, 0, size, size))
        image = paste(canvas, obj.rgb, box, soft)
        samples.append(_make_sample(image, obj.label, [box], f"composite-{seed}-{i}:{obj.name}"))
    return samples


def _two_distinct(rng: np.random.Generator, objects: Sequence[PasteObject]) -> tuple[PasteObject, PasteObject]:
    """Two objects whose acceptable label sets do not meet."""
    first = objects[int(rng.integers(len(objects)))]
    others = [o for o in objects if not set(o.labels) & set(first.labels)]
    return first, others[int(rng.integers(len(others)))]


def two_object_composites(
    n: int = 50, seed: int = 0, size: int = 224, scale: tuple[float, float] = (0.4, 0.5), soft: bool = True
) -> list:
    """``n`` canvases, each with two objects of different classes, one in the left half and one in
    the right half (so their boxes are disjoint); ``2 n`` samples, the two of canvas ``i`` at
    ``2i`` and ``2i + 1``, sharing one image, each with its own object's label and box.

    ``name`` is ``"two-{seed}-{i}:{object}"``. Objects' longer sides are ``scale`` of the canvas
    side (shrunk to fit a half).
    """
    _check_set_args(n, size, scale)
    objects = paste_objects()
    half = int(size) // 2
    samples = []
    for i in range(int(n)):
        rng = sample_rng(seed, TWO_OBJECT_STREAM, i)
        canvas = draw_background(rng, size)
        pair = _two_distinct(rng, objects)
        placed = []
        for obj, area in zip(pair, [(0, 0, half, size), (half, 0, size, size)]):
            box = _place(rng, obj.rgb.shape[:2], rng.uniform(*scale) * size, area)
            canvas = paste(canvas, obj.rgb, box, soft)
            placed.append((obj, box))
        canvas.setflags(write=False)
        samples.extend(_make_sample(canvas, obj.label, [box], f"two-{seed}-{i}:{obj.name}") for obj, box in placed)
    return samples


# --------------------------------------------------------------------------- review image


def save_preview(
    path: str, samples: Sequence | None = None, columns: int = 5, thumb: float = 3.0, dpi: int = 80
) -> None:
    """Draw ``samples`` (default: :func:`photo_set`, 6 composites and 2 two-object canvases)
    in a grid, each with its boxes and label names, and save it to ``path`` (for reviewing boxes).

    ``python -m chipjax.evalsets PATH`` writes it too.
    """
    from matplotlib.figure import Figure  # no pyplot: leaves the user's backend alone
    from matplotlib.patches import Rectangle

    from .models.labels import imagenet_labels

    if samples is None:
        samples = photo_set() + composite_set(6, seed=0) + two_object_composites(2, seed=0)
    names = imagenet_labels()
    rows = -(-len(samples) // columns)
    fig = Figure(figsize=(columns * thumb, rows * thumb * 0.9))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, sample in zip(axes.ravel(), samples):
        ax.imshow(sample.image)
        for x0, y0, x1, y1 in np.asarray(sample.boxes):
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color="yellow", lw=1.5))
        label_text = " / ".join(names[i] for i in acceptable_labels(sample.label))
        ax.set_title(f"{sample.name}\n{label_text}", fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    buffer.seek(0)
    Image.open(buffer).convert("RGB").quantize(256).save(path, optimize=True)  # palette PNG: small file


if __name__ == "__main__":
    import sys

    save_preview(sys.argv[1] if len(sys.argv) > 1 else "photo_boxes_preview.png")


def coloured_squares(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A toy set for training tiny networks (the tutorials): ``n`` images, each one red (label 0) or blue
    (label 1) square of side ``size // 4`` to ``size // 4 + 3`` pixels on a grey noise background.

    Returns images ``(n, size, size, 3)`` float32 in [0, 1], labels ``(n,)`` int, boxes ``(n, 4)``
    ``(x0, y0, x1, y1)`` of each square (exclusive ends); the same ``seed`` gives the same set.
    """
    if n < 1 or size < 8:
        raise InputError(f"coloured_squares needs n >= 1 and size >= 8; got n={n}, size={size}")
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.3, 0.7, (n, size, size, 3)).astype(np.float32)
    labels = rng.integers(0, 2, n)
    boxes = np.zeros((n, 4), np.float32)
    for i in range(n):
        side = int(rng.integers(size // 4, size // 4 + 4))
        x0, y0 = rng.integers(0, size - side, 2)
        images[i, y0:y0 + side, x0:x0 + side] = (0.9, 0.1, 0.1) if labels[i] == 0 else (0.1, 0.1, 0.9)
        boxes[i] = (x0, y0, x0 + side, y0 + side)
    return images, labels, boxes
