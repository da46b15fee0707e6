"""Evaluation sets that need no download: real photos with hand-drawn boxes, and composites.

* :func:`photo_set`: the real photos bundled with scikit-image, matplotlib and scikit-learn,
  one :class:`~chipjax.data.Sample` per (photo, class) with that class's boxes, drawn by hand in
  ``chipjax/assets/photo_boxes.json``.
* :func:`composite_set`: objects cut out of those photos (the hand box, with a soft rounded-corner
  mask) pasted at a random place and scale onto backgrounds that hold none of the pasted classes:
  grey textures tinted at random, regions of the photos away from every object, smooth noise. The
  box is the pasted rectangle, so it is exact.
* :func:`two_object_composites`: two objects of different classes side by side on one canvas, one
  sample per object (same image, each with its own label and box): a map of class c should peak on
  c's object.

Boxes are ``(x0, y0, x1, y1)`` in pixels, x1/y1 exclusive. Labels are ImageNet indices in
torchvision order; a photo's entry may list several acceptable labels (the sample carries the
first; :func:`acceptable_labels` gives them all). Composites are deterministic: sample ``i`` of
seed ``s`` depends only on ``(s, i)``, so a shorter set is a prefix of a longer one.

``photo_boxes.json`` format: ``{"photos": [{name, source, labels, boxes, paste, note}],
"backgrounds": [{source, box, note}]}`` where ``source`` is ``"skimage:NAME"`` (a function of
``skimage.data``; for a stereo pair, its left view), ``"matplotlib:FILE"`` (matplotlib sample data)
or ``"sklearn:FILE"`` (``sklearn.datasets.load_sample_image``), ``paste`` says whether the object is
used in composites (its crop alone is recognised by EfficientNet-Lite0), and ``boxes[0]`` is the
object that is pasted.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import NamedTuple, Sequence

import numpy as np
from PIL import Image

from .errors import ImageError, InputError

__all__ = [
    "photo_entries",
    "background_entries",
    "load_source",
    "photo_set",
    "acceptable_labels",
    "paste_objects",
    "sample_rng",
    "draw_background",
    "soft_mask",
    "paste",
    "composite_set",
    "two_object_composites",
]

NUM_CLASSES = 1000
COMPOSITE_STREAM = 1
TWO_OBJECT_STREAM = 2


class PasteObject(NamedTuple):
    """An object cut out of a photo: ``rgb`` uint8 ``(h, w, 3)``, the hand box's content."""

    name: str
    label: int
    labels: tuple[int, ...]
    rgb: np.ndarray


def _sample_type():
    """``chipjax.data.Sample`` (image uint8 (H, W, 3), label int, boxes float32 (G, 4), name str)."""
    try:
        from .data import Sample
    except ImportError:  # chipjax.data not written yet: same fields
        return _FallbackSample
    return Sample


class _FallbackSample(NamedTuple):
    image: np.ndarray
    label: int
    boxes: np.ndarray
    name: str


def _make_sample(image: np.ndarray, label: int, boxes, name: str):
    return _sample_type()(image=image, label=int(label), boxes=np.asarray(boxes, np.float32).reshape(-1, 4), name=name)


# --------------------------------------------------------------------------- photos and their boxes


@lru_cache(maxsize=1)
def _boxes_file() -> dict:
    text = resources.files("chipjax").joinpath("assets/photo_boxes.json").read_text("utf-8")
    return json.loads(text)


def _check_box(box: Sequence[float], where: str) -> tuple[int, int, int, int]:
    if len(box) != 4:
        raise InputError(f"{where}: a box is [x0, y0, x1, y1], got {box!r}")
    x0, y0, x1, y1 = (int(v) for v in box)
    if not (x0 < x1 and y0 < y1):
        raise InputError(f"{where}: box {box!r} is empty; need x0 < x1 and y0 < y1")
    return x0, y0, x1, y1


def _check_labels(labels: Sequence[int], where: str) -> tuple[int, ...]:
    labels = tuple(int(v) for v in labels)
    if not labels or any(not 0 <= v < NUM_CLASSES for v in labels):
        raise InputError(f"{where}: labels must be a non-empty list of ImageNet indices 0..999, got {labels!r}")
    return labels


@lru_cache(maxsize=1)
def photo_entries() -> tuple[dict, ...]:
    """The hand-labelled photo entries, checked: ``{name, source, labels (tuple), boxes (tuple of
    (x0, y0, x1, y1) ints), paste (bool), note}``; boxes are not yet checked against photo sizes."""
    out = []
    for i, entry in enumerate(_boxes_file()["photos"]):
        where = f"photo_boxes.json photos[{i}] ({entry.get('name', '?')})"
        boxes = tuple(_check_box(b, where) for b in entry["boxes"])
        if not boxes:
            raise InputError(f"{where}: needs at least one box")
        out.append(
            dict(
                name=str(entry["name"]),
                source=str(entry["source"]),
                labels=_check_labels(entry["labels"], where),
                boxes=boxes,
                paste=bool(entry.get("paste", False)),
                note=str(entry.get("note", "")),
            )
        )
    return tuple(out)


@lru_cache(maxsize=1)
def background_entries() -> tuple[dict, ...]:
    """Background regions ``{source, box, note}``: photo regions that hold no pasted class."""
    return tuple(
        dict(source=str(e["source"]), box=_check_box(e["box"], f"photo_boxes.json backgrounds[{i}]"), note=str(e.get("note", "")))
        for i, e in enumerate(_boxes_file()["backgrounds"])
    )


def _read_source(source: str):
    kind, _, name = source.partition(":")
    if kind == "skimage":
        import skimage.data

        loader = getattr(skimage.data, name, None)
        if loader is None:
            raise ImageError(f"skimage.data has no image {name!r} (source {source!r}); check the scikit-image version")
        image = loader()
        return image[0] if isinstance(image, tuple) else image  # a stereo pair: its left view
    if kind == "matplotlib":
        from matplotlib import cbook

        return Image.open(cbook.get_sample_data(name, asfileobj=False))
    if kind == "sklearn":
        try:
            from sklearn.datasets import load_sample_image
        except ImportError:
            raise ImageError(f"photo {source!r} ships with scikit-learn: pip install scikit-learn") from None
        return load_sample_image(name)
    raise InputError(f"unknown photo source {source!r}; use skimage:NAME, matplotlib:FILE or sklearn:FILE")


@lru_cache(maxsize=None)
def load_source(source: str) -> np.ndarray:
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
    return [_make_sample(load_source(e["source"]), e["labels"][0], e["boxes"], e["name"]) for e in photo_entries()]


def acceptable_labels(label: int) -> tuple[int, ...]:
    """Every label that counts for a sample labelled ``label`` (its entry's list), else ``(label,)``."""
    for entry in photo_entries():
        if entry["labels"][0] == int(label):
            return entry["labels"]
    return (int(label),)


@lru_cache(maxsize=1)
def paste_objects() -> tuple[PasteObject, ...]:
    """The objects composites are made of: ``boxes[0]`` of every entry marked ``paste``."""
    objects = []
    for e in photo_entries():
        if e["paste"]:
            x0, y0, x1, y1 = e["boxes"][0]
            crop = np.array(load_source(e["source"])[y0:y1, x0:x1])
            crop.setflags(write=False)
            objects.append(PasteObject(e["name"], e["labels"][0], e["labels"], crop))
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
    x0, y0, x1, y1 = entry["box"]
    region = load_source(entry["source"])[y0:y1, x0:x1]
    side = int(min(region.shape[:2]) * rng.uniform(0.5, 1.0))
    top = int(rng.integers(region.shape[0] - side + 1))
    left = int(rng.integers(region.shape[1] - side + 1))
    canvas = _resize(region[top : top + side, left : left + side], size, size)
    if np.array_equal(canvas[..., 0], canvas[..., 1]) and np.array_equal(canvas[..., 0], canvas[..., 2]):
        tint = rng.uniform(0.45, 1.0, size=3)
        canvas = (canvas.astype(np.float32) * tint + 0.5).astype(np.uint8)
    return canvas


def soft_mask(h: int, w: int, feather: float = 0.08, power: float = 4.0) -> np.ndarray:
    """float32 ``(h, w)`` alpha in [0, 1]: a superellipse ``|u|^p + |v|^p <= 1`` filling the
    rectangle, its rim faded over ``feather`` (fraction of the half-sides) so pasted edges are soft."""
    v = (np.arange(h, dtype=np.float32) + 0.5) / h * 2.0 - 1.0
    u = (np.arange(w, dtype=np.float32) + 0.5) / w * 2.0 - 1.0
    radius = (np.abs(u)[None, :] ** power + np.abs(v)[:, None] ** power) ** (1.0 / power)
    return np.clip((1.0 - radius) / feather, 0.0, 1.0).astype(np.float32)


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


def _place(rng: np.random.Generator, obj_hw: tuple[int, int], long_side: float, area: tuple[int, int, int, int]):
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


def _check_set_args(n: int, size: int) -> None:
    if int(n) < 0:
        raise InputError(f"n must be >= 0, got {n}")
    if int(size) < 16:
        raise InputError(f"size must be at least 16 pixels, got {size}")


def composite_set(n: int = 200, seed: int = 0, size: int = 224, scale: tuple[float, float] = (0.3, 0.7), soft: bool = True) -> list:
    """``n`` composites: one object of :func:`paste_objects` (chosen uniformly) pasted on
    :func:`draw_background`, its longer side ``scale`` (uniform range) of the canvas side.

    Returns ``Sample``\\s with ``image`` uint8 ``(size, size, 3)``, ``boxes`` float32 ``(1, 4)`` (the
    pasted rectangle), ``label`` the object's label, ``name`` ``"composite-{seed}-{i}:{object}"``.
    """
    _check_set_args(n, size)
    objects = paste_objects()
    samples = []
    for i in range(int(n)):
        rng = sample_rng(seed, COMPOSITE_STREAM, i)
        canvas = draw_background(rng, size)
        obj = objects[int(rng.integers(len(objects)))]
        box = _place(rng, obj.rgb.shape[:2], rng.uniform(*scale) * size, (0, 0, size, size))
        samples.append(_make_sample(paste(canvas, obj.rgb, box, soft), obj.label, [box], f"composite-{seed}-{i}:{obj.name}"))
    return samples


def _two_distinct(rng: np.random.Generator, objects: Sequence[PasteObject]) -> tuple[PasteObject, PasteObject]:
    """Two objects whose acceptable label sets do not meet."""
    first = objects[int(rng.integers(len(objects)))]
    others = [o for o in objects if not set(o.labels) & set(first.labels)]
    return first, others[int(rng.integers(len(others)))]


def two_object_composites(n: int = 50, seed: int = 0, size: int = 224, scale: tuple[float, float] = (0.3, 0.45), soft: bool = True) -> list:
    """``n`` canvases, each with two objects of different classes, one in the left half and one in
    the right half (so their boxes are disjoint); ``2 n`` samples, the two of canvas ``i`` at
    ``2i`` and ``2i + 1``, sharing one image, each with its own object's label and box.

    ``name`` is ``"two-{seed}-{i}:{object}"``. Objects' longer sides are ``scale`` of the canvas
    side (shrunk to fit a half).
    """
    _check_set_args(n, size)
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
