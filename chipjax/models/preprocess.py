"""Image loading and preprocessing, numpy + PIL only.

Two steps, kept apart so overlays show exactly what the network saw:

* a *view*: any image -> uint8 ``(S, S, 3)`` (resize, optional centre crop): a :class:`View`, which also
  maps the photo's boxes into it (:func:`boxes_in_view`);
* a *normalisation*: uint8 view -> float32 ``(S, S, 3)`` as the weights expect.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from functools import lru_cache
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import ImageError, InputError

log = logging.getLogger("chipjax")

#: Largest intermediate (H · W) of :func:`resize_crop_view` resized as a whole; beyond it (extreme
#: aspect ratios such as 1 × 100 000) only the part that survives the crop is resampled.
MAX_RESIZE_PIXELS = 2 ** 26

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file fully (so truncation shows now), or raise :class:`ImageError`."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageError(f"image file not found: {path}")
    if os.path.isdir(path):
        raise ImageError(f"{path} is a folder, not an image file")
    if os.path.getsize(path) == 0:
        raise ImageError(f"image file is empty: {path}")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            img = Image.open(path)
            img.load()
            img = _upright(img)
    except Image.DecompressionBombError as e:
        raise ImageError(
            f"{path} is too large to open safely ({e}); downscale it, or raise PIL.Image.MAX_IMAGE_PIXELS "
            f"if you trust the file"
        ) from None
    except UnidentifiedImageError:
        raise ImageError(f"{path} is not an image PIL can read (PNG, JPEG, BMP, TIFF, ...)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"image file {path} is damaged or truncated ({e}); re-export or re-download it") from None
    for w in caught:  # a big but allowed image: a note for -v, not a second stderr line
        if issubclass(w.category, Image.DecompressionBombWarning):
            log.info("%s: %s", path, w.message)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return img


def _upright(img: Image.Image) -> Image.Image:
    """The image as the user sees it: rotated/mirrored as its EXIF Orientation tag says (1..8), tag dropped."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001  an unreadable EXIF block: keep the pixels as stored
        return img
    if orientation in (None, 1):
        return img
    from PIL import ImageOps

    return ImageOps.exif_transpose(img)


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode.startswith("I;16"):  # 16-bit file: scaled by 65535 whatever its largest value
        return _array_to_rgb(np.asarray(img), full_scale=65535.0)
    if img.mode.startswith("I") or img.mode == "F":  # 32-bit integer or float: the array rules below
        return _array_to_rgb(np.asarray(img))
    if img.mode in ("La", "RGBa"):  # premultiplied alpha: un-premultiply first
        img = img.convert("LA" if img.mode == "La" else "RGBA")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    try:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except ValueError as e:
        raise ImageError(f"cannot convert an image of mode {img.mode} to RGB ({e}); save it as RGB or RGBA") from None


def _array_to_rgb(arr: np.ndarray, full_scale: float | None = None) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise InputError(f"expected an image array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape {arr.shape}")
    if arr.shape[-1] not in (1, 3, 4):
        raise InputError(f"expected 1, 3 or 4 colour channels (channels last), got shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InputError(f"image has no pixels: shape {arr.shape}")
    if arr.dtype == np.uint8:
        out = arr
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise InputError("image array contains NaN or Inf; clean it before explaining")
        scale = 255.0 if arr.max() <= 1.0 else 1.0
        out = np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
        if arr.min() < 0:
            raise InputError(f"image array has negative values (min {arr.min()}); give uint8, uint16 or float in [0, 1]")
        hi = full_scale or (1.0 if arr.dtype == bool else 65535.0 if arr.max() > 255 else 255.0)
        out = np.clip(arr.astype(np.float64) / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
    else:
        raise InputError(f"unsupported image dtype {arr.dtype}; use uint8 or float in [0, 1]")
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    elif out.shape[-1] == 4:
        alpha = out[..., 3:].astype(np.float32) / 255.0
        out = (out[..., :3] * alpha + 255.0 * (1.0 - alpha) + 0.5).astype(np.uint8)
    return np.ascontiguousarray(out)


def to_rgb_uint8(image) -> np.ndarray:
    """A path, PIL image or array -> uint8 ``(H, W, 3)``.

    Grayscale, palette, RGBA/LA/PA (composited on white), CMYK, YCbCr, LAB, HSV and 16-bit
    images are converted: a 16-bit file is always ``v / 65535`` (also when its values stay ≤ 255),
    array integers above 255 are read as 16-bit, floats as [0, 1] when their maximum is ≤ 1, else
    as [0, 255]. Files are turned upright by their EXIF Orientation tag (as photo viewers show
    them) before anything else: every reader of image files (``explain``, ``fit``, ``eval``, the
    data sources) goes through here.
    """
    if isinstance(image, (str, os.PathLike)):
        try:
            return _pil_to_rgb(load_image(image))
        except InputError as e:
            if isinstance(e, ImageError):
                raise
            raise type(e)(f"{os.fspath(image)}: {e}") from None
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image)
    if hasattr(image, "shape"):
        return _array_to_rgb(np.asarray(image))
    raise InputError(f"expected a path, PIL image or HxWx3 array, got {type(image).__name__}")


def resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear (PIL, antialiased) resize of uint8 ``(H, W, 3)`` to ``size = (H', W')``."""
    h, w = size
    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR), dtype=np.uint8)


@dataclasses.dataclass(frozen=True)
class View:
    """What the network sees of a photo, and where the photo's boxes land in it.

    ``View(size)`` resizes the whole photo to ``(size, size)`` (nothing is cropped); ``View(size, resize_to)``
    is torchvision's ``Resize(resize_to)`` (shorter side) then ``CenterCrop(size)``.

    ``view(rgb)``: uint8 ``(H, W, 3)`` -> uint8 ``(size, size, 3)``. :meth:`transform` and :meth:`boxes` carry
    the same geometry for points and boxes (exact, no probing).
    """

    size: int
    resize_to: int | None = None

    def _resized_hw(self, h: int, w: int) -> tuple[int, int]:
        to = self.resize_to
        return (to, max(1, int(to * w / h))) if h <= w else (max(1, int(to * h / w)), to)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        size = self.size
        if self.resize_to is None:
            return resize(rgb, (size, size))
        h, w = rgb.shape[:2]
        nh, nw = self._resized_hw(h, w)
        top = int(round((nh - size) / 2.0))
        left = int(round((nw - size) / 2.0))
        if nh * nw > MAX_RESIZE_PIXELS:  # resample only the crop's source region (equal up to 1 grey level)
            sy, sx = h / nh, w / nw
            box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
            return np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR, box=box), dtype=np.uint8)
        img = resize(rgb, (nh, nw))
        return img[top : top + size, left : left + size]

    def transform(self, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """``scale (2,)``, ``offset (2,)`` (x then y) and the view's ``(S_h, S_w)`` for a photo of ``hw``: a point
        at continuous coordinate ``u`` (pixel edges, ``0 .. W``) lands at ``scale · u + offset``."""
        h, w = int(hw[0]), int(hw[1])
        s = int(self.size)
        if self.resize_to is None:
            return np.array([s / w, s / h]), np.zeros(2), (s, s)
        nh, nw = self._resized_hw(h, w)
        top, left = int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))
        return np.array([nw / w, nh / h]), np.array([-left, -top], dtype=np.float64), (s, s)

    def boxes(self, boxes, hw: tuple[int, int]) -> np.ndarray:
        """Boxes ``(G, 4)`` of an ``hw`` photo in this view's pixels, clipped to it (a box the view crops away
        becomes zero-area and never matches)."""
        return _moved_boxes(boxes, *self.transform(hw))


def stretch_view(size: int) -> View:
    """View that resizes the whole image to ``(size, size)``: nothing is cropped."""
    return View(int(size))


def resize_crop_view(size: int, resize_to: int) -> View:
    """torchvision's ``Resize(resize_to)`` (shorter side) then ``CenterCrop(size)``."""
    return View(int(size), int(resize_to))


def _moved_boxes(boxes, scale: np.ndarray, offset: np.ndarray, view_hw: tuple[int, int]) -> np.ndarray:
    sh, sw = view_hw
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    moved = b * np.tile(scale, 2) + np.tile(offset, 2)
    return np.clip(moved, 0.0, np.array([sw, sh, sw, sh], np.float64))


def _probe_axis(profile: np.ndarray, n_src: int) -> tuple[float, float]:
    """Fit ``src_centre(j) = c·j + d`` to a viewed ramp profile; return (scale, offset) for pixel edges."""
    n = len(profile)
    src = profile / 255.0 * (n_src - 1)
    lo, hi = int(0.1 * n), max(int(0.1 * n) + 2, int(0.9 * n))
    j = np.arange(n, dtype=np.float64)[lo:hi]
    c, d = np.polyfit(j, src[lo:hi], 1)
    # source centre (index i ↔ edge coordinate i + 0.5) of view pixel j (edge coordinate j + 0.5)
    scale = 1.0 / c
    return scale, 0.5 - scale * (d + 0.5)


@lru_cache(maxsize=256)
def probe_view_transform(view: Callable, h: int, w: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """:meth:`View.transform` of any other view function, measured by viewing two linear ramps (accurate to a
    small fraction of a pixel); cached per (view, photo size)."""
    xs = np.rint(np.arange(w) * 255.0 / max(1, w - 1)).astype(np.uint8)
    ys = np.rint(np.arange(h) * 255.0 / max(1, h - 1)).astype(np.uint8)
    ramp = np.zeros((h, w, 3), np.uint8)
    ramp[..., 0] = xs[None, :]
    ramp[..., 1] = ys[:, None]
    seen = np.asarray(view(ramp), np.float64)
    sx, ox = _probe_axis(seen[..., 0].mean(axis=0), w)
    sy, oy = _probe_axis(seen[..., 1].mean(axis=1), h)
    return np.array([sx, sy]), np.array([ox, oy]), (seen.shape[0], seen.shape[1])


def view_box_transform(view: Callable, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """How ``view`` (uint8 ``(H, W, 3)`` -> ``(S_h, S_w, 3)``) moves pixel edges: ``scale (2,)``, ``offset (2,)``
    (x then y) and ``(S_h, S_w)``; a :class:`View` says so itself, any other function is probed
    (:func:`probe_view_transform`)."""
    if isinstance(view, View):
        return view.transform(hw)
    return probe_view_transform(view, int(hw[0]), int(hw[1]))


def boxes_in_view(boxes, hw: tuple[int, int], view: Callable) -> np.ndarray:
    """Boxes ``(G, 4)`` of an ``hw`` photo in the pixels of ``view(photo)``, clipped to it (:meth:`View.boxes`;
    any other view function through :func:`view_box_transform`)."""
    if isinstance(view, View):
        return view.boxes(boxes, hw)
    return _moved_boxes(boxes, *view_box_transform(view, hw))


def mean_std_normalize(mean, std) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 ``(..., 3)`` -> float32 ``((x / 255) - mean) / std``."""
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)

    def normalize(view: np.ndarray) -> np.ndarray:
        return ((view.astype(np.float32) / 255.0) - mean) / std

    return normalize
