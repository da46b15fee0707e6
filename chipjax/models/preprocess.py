"""Image loading and preprocessing, numpy + PIL only.

Two steps, kept apart so overlays show exactly what the network saw:

* a *view*: any image -> uint8 ``(S, S, 3)`` (resize, optional centre crop);
* a *normalisation*: uint8 view -> float32 ``(S, S, 3)`` as the weights expect.
"""
from __future__ import annotations

import logging
import os
import warnings
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


def stretch_view(size: int) -> Callable[[np.ndarray], np.ndarray]:
    """View that resizes the whole image to ``(size, size)``: nothing is cropped."""

    def view(rgb: np.ndarray) -> np.ndarray:
        return resize(rgb, (size, size))

    return view


def resize_crop_view(size: int, resize_to: int) -> Callable[[np.ndarray], np.ndarray]:
    """torchvision's ``Resize(resize_to)`` (shorter side) then ``CenterCrop(size)``."""

    def view(rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        if h <= w:
            nh, nw = resize_to, max(1, int(resize_to * w / h))
        else:
            nh, nw = max(1, int(resize_to * h / w)), resize_to
        top = int(round((nh - size) / 2.0))
        left = int(round((nw - size) / 2.0))
        if nh * nw > MAX_RESIZE_PIXELS:  # resample only the crop's source region (equal up to 1 grey level)
            sy, sx = h / nh, w / nw
            box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
            return np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR, box=box), dtype=np.uint8)
        img = resize(rgb, (nh, nw))
        return img[top : top + size, left : left + size]

    return view


def mean_std_normalize(mean, std) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 ``(..., 3)`` -> float32 ``((x / 255) - mean) / std``."""
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)

    def normalize(view: np.ndarray) -> np.ndarray:
        return ((view.astype(np.float32) / 255.0) - mean) / std

    return normalize
