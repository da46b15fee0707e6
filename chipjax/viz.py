"""Figures: heat-map overlays, method grids, deletion/insertion curves, channel bars, box previews.

Every figure is a plain :class:`matplotlib.figure.Figure` drawn by the Agg canvas: no pyplot,
no global figure state, so it works headless and from several threads. matplotlib is imported
inside the functions, so ``import chipjax`` stays light.

Each figure function returns the Figure and, given ``out=PATH``, also writes it as a PNG of a
documented pixel size (sizes are rounded ``inches · dpi``; each docstring gives its formula).
The output folder is checked *before* anything is drawn, and the file is written to a temporary
file in that folder and then moved over ``PATH`` with :func:`os.replace` (:func:`chipjax.jobs.atomic_write`), so a failure never
leaves a half-written or damaged file behind.

Arrays may be NumPy or JAX arrays; images are ``uint8 (H, W, 3)`` and heat maps ``(H, W)``
in [0, 1] (what :func:`chipjax.explain` returns), at any resolution: they are resized
(bilinear) to the photo they are laid over.

Over 500 lines on purpose: every figure the CLI, the runner and the notebooks draw, with their shared
input checks and the one atomic PNG writer; each figure function is short.
"""
from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from .errors import InputError
from .heatmaps import upsample
from .jobs import atomic_write

if TYPE_CHECKING:  # annotations only: matplotlib is imported inside the functions
    from matplotlib.figure import Figure

__all__ = [
    "overlay", "overlay_rgb", "method_grid", "curves", "channel_bars", "box_preview",
    "resize_bilinear", "method_label", "overlay_title",
]

OVERLAY_SIZE_IN = (5.0, 4.2)
OVERLAY_TITLE_CHARS = 50   # longer titles wrap onto more lines
CURVES_SIZE_IN = (5.0, 4.0)
GRID_CELL_IN = 2.0
GRID_HEADER_IN = 0.3
BARS_HEIGHT_IN = 4.0
BOX_WIDTH_IN = 5.0

GROUND_TRUTH_COLOR = "lime"
PREDICTION_COLOR = "red"

_METHOD_LABELS = {
    "chip": "CHIP", "refined-chip": "Refined CHIP", "cam": "CAM", "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++", "scorecam": "Score-CAM", "ablationcam": "Ablation-CAM", "rise": "RISE",
}


# ----------------------------------------------------------------------------- pure helpers

def method_label(method: str) -> str:
    """Display name of a method: ``"gradcam" -> "Grad-CAM"``; unknown names are returned unchanged."""
    return _METHOD_LABELS.get(str(method).lower(), str(method))


def resize_bilinear(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``(h, w)`` to ``size = (H, W)``, float32 NumPy.

    ``jax.image.resize`` through :func:`chipjax.heatmaps.upsample`: half-pixel centres
    (``align_corners=False``) with edge clamping, no antialiasing, as the maps themselves are upsampled.
    """
    values = np.asarray(values, dtype=np.float32)
    size = tuple(int(s) for s in size)
    if values.shape == size:
        return values.copy()
    return np.asarray(upsample(jnp.asarray(values)[None], size)[0], dtype=np.float32)


def overlay_rgb(image, heatmap, alpha: float = 0.5, cmap="jet") -> np.ndarray:
    """Blend a coloured heat map into a photo: ``round((1 − α)·image + α·255·cmap(heatmap)[..., :3])``.

    Args:
      image: ``uint8 (H, W, 3)``.
      heatmap: ``(h, w)`` (or ``(1, h, w)``) in [0, 1]; resized (bilinear) to ``(H, W)`` when needed.
      alpha: weight of the colour map, in [0, 1] (0 = photo only, 1 = colour map only).
      cmap: a matplotlib colour-map name or Colormap.
    Returns:
      ``uint8 (H, W, 3)``.
    """
    image = _as_image(image)
    colour = _colormap(cmap)(_as_heatmap(heatmap, image.shape[:2]))[..., :3] * 255.0
    alpha = _as_fraction(alpha, "alpha")
    blend = (1.0 - alpha) * image.astype(np.float64) + alpha * colour
    return np.clip(np.rint(blend), 0, 255).astype(np.uint8)


def overlay_title(class_name=None, score=None, method=None, layer=None) -> str:
    """``"espresso (0.93) — CHIP @ head"``: the parts that are given, in that order."""
    what = "" if class_name is None else str(class_name)
    if score is not None:
        what = f"{what} ({float(score):.2f})".strip()
    how = "" if method is None else method_label(method)
    if layer is not None:
        layers = [layer] if isinstance(layer, str) else list(layer)
        how = f"{how} @ {' + '.join(map(str, layers))}".strip()
    return " — ".join(part for part in (what, how) if part)


# ----------------------------------------------------------------------------- figures

def overlay(image, heatmap, *, title: str | None = None, class_name: str | None = None,
            score: float | None = None, method: str | None = None, layer=None, alpha: float = 0.5,
            cmap="jet", colorbar: bool = True, out=None, dpi: float = 100) -> "Figure":
    """The photo with the heat map on top, a colour bar and a title.

    Args:
      image: ``uint8 (H, W, 3)``.
      heatmap: ``(h, w)`` in [0, 1], any resolution (resized bilinearly to ``(H, W)``).
      title: the title; by default built by :func:`overlay_title` from ``class_name``, ``score``,
        ``method`` and ``layer`` (a name or a list of names), e.g. ``"espresso (0.93) — CHIP @ head"``;
        wrapped at 50 characters a line.
      alpha, cmap: see :func:`overlay_rgb`.
      colorbar: draw the colour bar (0 to 1) beside the photo.
      out: PNG path to write, or None.
      dpi: pixels per inch.
    Returns:
      The Figure: ``round(5·dpi) × round(4.2·dpi)`` pixels (500 × 420 at dpi=100).
    """
    path = _check_out(out)
    blended = overlay_rgb(image, heatmap, alpha, cmap)
    fig = _new_figure(OVERLAY_SIZE_IN, dpi)
    ax = fig.add_subplot()
    ax.imshow(blended)
    ax.set_axis_off()
    text = overlay_title(class_name, score, method, layer) if title is None else str(title)
    if text:
        ax.set_title(textwrap.fill(text, OVERLAY_TITLE_CHARS), fontsize=11)
    if colorbar:
        # an inset in axes coordinates follows the photo's aspect-fitted box, so the bar is as tall as the photo
        fig.colorbar(_unit_scalar_mappable(cmap), cax=ax.inset_axes((1.04, 0.0, 0.05, 1.0)), label="relevance")
    return _finish(fig, path)


def method_grid(images: Sequence, maps: Mapping[str, object], *, row_titles: Sequence[str] | None = None,
                alpha: float = 0.5, cmap="jet", out=None, dpi: float = 100) -> "Figure":
    """A grid of overlays: one row per image, columns = the photo, then one column per method.

    Args:
      images: ``B`` photos, each ``uint8 (H_b, W_b, 3)``.
      maps: ``{method: (B, h, w)}`` heat maps in [0, 1] (resized to each photo), in column order.
      row_titles: ``B`` labels written left of the rows, or None.
      alpha, cmap: see :func:`overlay_rgb`.
      out: PNG path to write, or None.
    Returns:
      The Figure: ``round(2·(M + 1)·dpi) × round((2·B + 0.3)·dpi)`` pixels for ``M`` methods
      (e.g. 600 × 430 for two images and two methods at dpi=100).
    """
    path = _check_out(out)
    photos = [_as_image(image, f"images[{i}]") for i, image in enumerate(images)]
    n_rows = len(photos)
    if n_rows == 0:
        raise InputError("method_grid got no images; pass a list of uint8 (H, W, 3) photos")
    stacks = {name: _as_map_stack(stack, n_rows, name) for name, stack in maps.items()}
    if row_titles is not None and len(row_titles) != n_rows:
        raise InputError(f"row_titles has {len(row_titles)} entries for {n_rows} images; give one per image")
    columns = ["image"] + [method_label(name) for name in stacks]
    fig = _new_figure((GRID_CELL_IN * len(columns), GRID_CELL_IN * n_rows + GRID_HEADER_IN), dpi)
    axes = fig.subplots(n_rows, len(columns), squeeze=False)
    for row, photo in enumerate(photos):
        cells = [photo] + [overlay_rgb(photo, stack[row], alpha, cmap) for stack in stacks.values()]
        for col, cell in enumerate(cells):
            ax = axes[row, col]
            ax.imshow(cell)
            _bare_axes(ax)
            if row == 0:
                ax.set_title(columns[col], fontsize=10)
        if row_titles is not None:
            axes[row, 0].set_ylabel(str(row_titles[row]), fontsize=9)
    return _finish(fig, path)


def curves(curves: Mapping[str, tuple], *, kind: str = "deletion", auc: Mapping[str, float] | None = None,
           out=None, dpi: float = 100) -> "Figure":
    """Deletion or insertion curves, one line per method, with the area under each in the legend.

    Args:
      curves: ``{method: (fractions (T,), scores (T,))}``: the fraction of pixels deleted (or
        inserted) and the target-class score at each step.
      kind: ``"deletion"`` (lower area is better) or ``"insertion"`` (higher is better).
      auc: ``{method: area}`` to print; a method missing here gets the trapezoidal area of its curve.
      out: PNG path to write, or None.
    Returns:
      The Figure: ``round(5·dpi) × round(4·dpi)`` pixels (500 × 400 at dpi=100).
    """
    from . import metrics

    path = _check_out(out)
    if kind not in ("deletion", "insertion"):
        raise InputError(f"kind must be 'deletion' or 'insertion', got {kind!r}")
    auc = {} if auc is None else dict(auc)
    lines = {name: _as_curve(curve, name) for name, curve in curves.items()}
    fig = _new_figure(CURVES_SIZE_IN, dpi)
    ax = fig.add_subplot()
    for name, (fractions, scores) in lines.items():
        area = float(auc[name]) if name in auc else float(metrics.auc(fractions, scores))
        ax.plot(fractions, scores, label=f"{method_label(name)} (AUC {area:.3f})")
    better = "lower" if kind == "deletion" else "higher"
    ax.set_title(f"{kind.capitalize()} ({better} AUC is better)")
    ax.set_xlabel(f"fraction of pixels {'deleted' if kind == 'deletion' else 'inserted'}")
    ax.set_ylabel("class score")
    ax.grid(alpha=0.3)
    if lines:
        ax.legend(fontsize=8)
    return _finish(fig, path)


def channel_bars(weights, *, k: int = 20, class_name: str | None = None, out=None, dpi: float = 100) -> "Figure":
    """The ``k`` channels with the largest ``|CHIP weight|`` for one class, as bars (red > 0, blue < 0).

    Channels whose weight is exactly zero (switched off by the lasso) are left out, so fewer than
    ``k`` bars may be drawn.

    Args:
      weights: ``(K,)`` weights of one class (``W[:, c]``), or a pair ``(indices (n,), values (n,))``.
      k: how many channels to show at most.
      class_name: named in the title.
      out: PNG path to write, or None.
    Returns:
      The Figure: ``round(max(6, 0.25·k + 1)·dpi) × round(4·dpi)`` pixels (600 × 400 for k=20 at dpi=100).
    """
    path = _check_out(out)
    indices, values, n_channels = _as_channel_weights(weights)
    k = int(k)
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    order = np.argsort(-np.abs(values), kind="stable")[:k]
    order = order[values[order] != 0]
    fig = _new_figure((max(6.0, 0.25 * k + 1.0), BARS_HEIGHT_IN), dpi)
    ax = fig.add_subplot()
    shown = values[order]
    ax.bar(np.arange(len(order)), shown, color=np.where(shown > 0, "tab:red", "tab:blue"))
    ax.set_xticks(np.arange(len(order)), [str(i) for i in indices[order]], rotation=90, fontsize=8)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("channel")
    ax.set_ylabel("CHIP weight")
    of = f" of {n_channels}" if n_channels is not None else ""
    head = f"{class_name}: " if class_name is not None else ""
    ax.set_title(f"{head}top {len(order)}{of} channels by |weight|" if len(order) else f"{head}all weights are zero")
    return _finish(fig, path)


def box_preview(image, boxes, labels: Sequence[str] | None = None, pred_box=None, *, out=None,
                dpi: float = 100) -> "Figure":
    """The photo with ground-truth boxes (green) and predicted boxes (red), edge to edge.

    Args:
      image: ``uint8 (H, W, 3)``.
      boxes: ``(G, 4)`` ground-truth boxes ``x0, y0, x1, y1`` in pixel coordinates (pixel edges:
        ``(0, 0, W, H)`` is the whole photo).
      labels: ``G`` names written at the boxes' top-left corners, or None.
      pred_box: ``(4,)`` or ``(P, 4)`` predicted boxes, or None.
      out: PNG path to write, or None.
    Returns:
      The Figure, with the photo's aspect: ``w = round(5·dpi)`` by ``round(w·H/W)`` pixels
      (500 × 375 for a 640 × 480 photo at dpi=100).
    """
    path = _check_out(out)
    photo = _as_image(image)
    truth = _as_boxes(boxes, "boxes")
    predicted = _as_boxes(np.empty((0, 4)) if pred_box is None else pred_box, "pred_box")
    if labels is not None and len(labels) != len(truth):
        raise InputError(f"labels has {len(labels)} entries for {len(truth)} boxes; give one per box")
    height, width = photo.shape[:2]
    dpi = _as_dpi(dpi)
    width_px = round(BOX_WIDTH_IN * dpi)
    fig = _new_figure((width_px / dpi, max(1, round(width_px * height / width)) / dpi), dpi, layout=None)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.imshow(photo, extent=(0, width, height, 0))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    _draw_boxes(ax, truth, GROUND_TRUTH_COLOR, labels)
    _draw_boxes(ax, predicted, PREDICTION_COLOR, None)
    _box_legend(ax, len(truth) > 0, len(predicted) > 0)
    return _finish(fig, path)


# ----------------------------------------------------------------------------- drawing helpers

def _draw_boxes(ax, boxes: np.ndarray, colour: str, labels) -> None:
    from matplotlib.patches import Rectangle

    for i, (x0, y0, x1, y1) in enumerate(boxes):
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=2))
        if labels is not None:
            ax.text(x0, y0, str(labels[i]), color="black", fontsize=8, va="bottom",
                    bbox=dict(facecolor=colour, edgecolor="none", pad=1))


def _box_legend(ax, has_truth: bool, has_prediction: bool) -> None:
    from matplotlib.lines import Line2D

    entries = [(GROUND_TRUTH_COLOR, "ground truth")] * has_truth + [(PREDICTION_COLOR, "prediction")] * has_prediction
    if entries:
        ax.legend([Line2D([], [], color=c, linewidth=2) for c, _ in entries], [n for _, n in entries],
                  loc="upper right", fontsize=8, framealpha=0.8)


def _bare_axes(ax) -> None:
    """No ticks and no frame, but (unlike ``set_axis_off``) the y label still shows."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _unit_scalar_mappable(cmap):
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    return ScalarMappable(norm=Normalize(0.0, 1.0), cmap=_colormap(cmap))


def _colormap(cmap):
    import matplotlib
    from matplotlib.colors import Colormap

    if isinstance(cmap, Colormap):
        return cmap
    try:
        return matplotlib.colormaps[str(cmap)]
    except KeyError:
        raise InputError(f"unknown colour map {cmap!r}; use a matplotlib name such as 'jet', 'viridis' or 'inferno'") from None


# ----------------------------------------------------------------------------- figure + file

def _as_dpi(dpi) -> float:
    dpi = float(dpi)
    if not np.isfinite(dpi) or dpi <= 0:
        raise InputError(f"dpi must be a positive number, got {dpi}")
    return dpi


def _new_figure(size_in: tuple[float, float], dpi, layout: str | None = "constrained") -> "Figure":
    """A Figure on an Agg canvas rendering ``round(size_in · dpi)`` pixels exactly.

    Agg truncates ``inches · dpi`` to whole pixels, so the inches are nudged up by at most one ulp
    where the floating-point product falls just short of the intended pixel count.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = _as_dpi(dpi)
    inches = []
    for size in size_in:
        pixels = max(1, round(size * dpi))
        side = pixels / dpi
        while side * dpi < pixels:
            side = np.nextafter(side, np.inf)
        inches.append(float(side))
    fig = Figure(figsize=tuple(inches), dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _interp_matrix(n_out: int, scale: float, offset: float, n_in: int) -> np.ndarray:
    """``(n_out, n_in)`` bilinear weights: output pixel ``i`` (centre ``i + 0.5``) samples the input at
    ``scale · (i + 0.5) + offset`` (edge coordinates); rows outside ``[0, n_in]`` are zero."""
    u = scale * (np.arange(n_out, dtype=np.float64) + 0.5) + offset
    inside = (u >= 0.0) & (u <= n_in)
    c = np.clip(u - 0.5, 0.0, n_in - 1.0)
    lo = np.floor(c).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = c - lo
    out = np.zeros((n_out, n_in), np.float32)
    rows = np.arange(n_out)
    np.add.at(out, (rows, lo), (1.0 - frac) * inside)
    np.add.at(out, (rows, hi), frac * inside)
    return out


def map_on_photo(heatmap, view, hw: tuple[int, int]) -> np.ndarray:
    """A map of the network's view ``(S_h, S_w)`` resampled onto the photo it was viewed from: ``(H, W)``.

    ``view`` is the model's view (``model.spec.view``: uint8 ``(H, W, 3)`` -> ``(S_h, S_w, 3)``, a resize
    and/or a centre crop); each photo pixel takes the bilinear value of the view pixel it became, and the
    parts of the photo the view cropped away are 0. So an overlay shows the photo in its own aspect ratio
    with the map where the network looked, not the network's squashed square.
    """
    from .models.preprocess import view_box_transform

    heat = np.asarray(heatmap, np.float32)
    h, w = int(hw[0]), int(hw[1])
    scale, offset, (sh, sw) = view_box_transform(view, (h, w))
    if heat.shape != (sh, sw):
        heat = resize_bilinear(heat, (sh, sw))
    rows = _interp_matrix(h, float(scale[1]), float(offset[1]), sh)
    cols = _interp_matrix(w, float(scale[0]), float(offset[0]), sw)
    return np.clip(rows @ heat @ cols.T, 0.0, 1.0)


def check_out(out) -> Path | None:
    """Validate a figure's output path before anything is computed or drawn (see :func:`_check_out`)."""
    return _check_out(out)


def _check_out(out) -> Path | None:
    """Validate an output path before anything is drawn: its folder must exist and be writable."""
    if out is None:
        return None
    path = Path(os.fspath(out)).expanduser()
    folder = path.parent
    if not folder.is_dir():
        raise InputError(f"output folder {str(folder)!r} does not exist; create it or write elsewhere")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"output folder {str(folder)!r} is not writable; choose a folder you can write to")
    if path.is_dir():
        raise InputError(f"output path {str(path)!r} is a folder; give a file name such as {str(path / 'figure.png')!r}")
    if path.suffix.lower() != ".png":
        raise InputError(f"output path {str(path)!r} must end in .png (figures are written as PNG)")
    return path


def _finish(fig, path: Path | None):
    if path is not None:
        _write_png(fig, path)
    return fig


def _write_png(fig, path: Path) -> None:
    """Render ``fig`` at its own size and dpi to ``path`` atomically (:func:`chipjax.jobs.atomic_write`).

    The canvas is printed directly (not ``savefig``), so the user's ``savefig.*`` rcParams
    (bbox "tight", dpi) cannot change the documented pixel size.
    """
    atomic_write(path, fig.canvas.print_png)


# ----------------------------------------------------------------------------- input checks

def _as_image(image, name: str = "image") -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3 or 0 in array.shape:
        raise InputError(f"{name} must be a uint8 (H, W, 3) RGB array, got {array.dtype} {array.shape}; "
                         "convert with np.asarray(PIL.Image.open(path).convert('RGB'))")
    return array


def _as_heatmap(heatmap, size: tuple[int, int], name: str = "heatmap") -> np.ndarray:
    """``(h, w)`` finite values in [0, 1] (float rounding tolerated), resized to ``size``."""
    array = np.asarray(heatmap, dtype=np.float32)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or 0 in array.shape:
        raise InputError(f"{name} must be a 2-D (H, W) map, got shape {array.shape}; "
                         "pick one map of a batch, e.g. maps[0]")
    if not np.all(np.isfinite(array)):
        raise InputError(f"{name} has NaN or infinite values; normalise it with chipjax.heatmaps.normalize01")
    low, high = float(array.min()), float(array.max())
    if low < -1e-5 or high > 1 + 1e-5:
        raise InputError(f"{name} must lie in [0, 1], got [{low:.4g}, {high:.4g}]; "
                         "normalise it with chipjax.heatmaps.normalize01")
    return np.clip(resize_bilinear(array, size), 0.0, 1.0)


def _as_map_stack(stack, n_images: int, name: str) -> np.ndarray:
    array = np.asarray(stack, dtype=np.float32)
    if array.ndim != 3 or array.shape[0] != n_images:
        raise InputError(f"maps[{name!r}] must have shape (B, H, W) with B = {n_images} images, got {array.shape}")
    return array


def _as_fraction(value, name: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise InputError(f"{name} must lie in [0, 1], got {value}")
    return value


def _as_curve(curve, name: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        fractions, scores = curve
    except (TypeError, ValueError):
        raise InputError(f"curves[{name!r}] must be a pair (fractions (T,), scores (T,))") from None
    fractions = np.asarray(fractions, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if fractions.ndim != 1 or fractions.shape != scores.shape or fractions.size < 2:
        raise InputError(f"curves[{name!r}] needs 1-D fractions and scores of one length T >= 2, "
                         f"got {fractions.shape} and {scores.shape}")
    if not (np.all(np.isfinite(fractions)) and np.all(np.isfinite(scores))):
        raise InputError(f"curves[{name!r}] has NaN or infinite values")
    return fractions, scores


def _as_channel_weights(weights) -> tuple[np.ndarray, np.ndarray, int | None]:
    """``(indices (n,), values (n,), K or None)`` from ``(K,)`` weights or an ``(indices, values)`` pair."""
    if isinstance(weights, tuple) and len(weights) == 2 and all(np.ndim(part) == 1 for part in weights):
        indices = np.asarray(weights[0])
        values = np.asarray(weights[1], dtype=np.float64)
        if indices.shape != values.shape or not np.issubdtype(indices.dtype, np.integer):
            raise InputError(f"(indices, values) must be integer and float arrays of one length, "
                             f"got {indices.dtype} {indices.shape} and {values.shape}")
        n_channels = None
    else:
        values = np.asarray(weights, dtype=np.float64)
        if values.ndim != 1:
            raise InputError(f"weights must be (K,) for one class, got shape {values.shape}; pass W[:, class_index]")
        indices = np.arange(values.size)
        n_channels = values.size
    if not np.all(np.isfinite(values)):
        raise InputError("channel weights have NaN or infinite values")
    return indices, values, n_channels


def _as_boxes(boxes, name: str) -> np.ndarray:
    array = np.asarray(boxes, dtype=np.float64)
    if array.ndim == 1 and array.shape == (4,):
        array = array[None]
    if array.ndim != 2 or array.shape[1] != 4:
        raise InputError(f"{name} must be (N, 4) boxes x0, y0, x1, y1 (or one (4,) box), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise InputError(f"{name} has NaN or infinite coordinates")
    if np.any(array[:, 2] < array[:, 0]) or np.any(array[:, 3] < array[:, 1]):
        raise InputError(f"{name} must be x0, y0, x1, y1 with x1 >= x0 and y1 >= y0; "
                         "convert (x, y, w, h) boxes with x1 = x + w, y1 = y + h")
    return array
