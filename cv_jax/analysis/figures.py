"""Pure plotting functions for a trained run: numpy arrays in, PNG files (or uint8 images) out.

Grids of kernels and feature maps are composed as arrays (one tile per filter or channel,
``scale`` x nearest-neighbour upscaled, ``gap`` background pixels between tiles), so their
pixel size follows from the tile counts. Figures with titles use matplotlib (Agg backend) and
are ``figsize`` x ``DPI`` pixels: :data:`PANEL_INCHES` per image panel, ``2.5 + 0.5 K`` inches
(at most 20) per confusion-matrix panel for ``K`` classes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

DPI = 100
PANEL_INCHES = (1.5, 1.75)  # width, height of one titled image in a grid figure
BACKGROUND = 255  # colour of the gaps between tiles
WRONG_COLOR = "red"
RIGHT_COLOR = "black"
MAX_ANNOTATED_CLASSES = 25  # confusion matrices with more classes are drawn without numbers


def grid_shape(count: int) -> tuple[int, int]:
    """``(rows, columns)`` of a near-square grid for ``count`` tiles: ceil(sqrt) columns."""
    if count < 1:
        raise ValueError(f"a grid needs at least one tile, got {count}")
    columns = math.ceil(math.sqrt(count))
    return math.ceil(count / columns), columns


def to_unit_range(x: np.ndarray, axis: tuple[int, ...] | None = None) -> np.ndarray:
    """Min-max scaling of ``x`` to [0, 1] over ``axis``; a constant slice becomes 0."""
    x = np.asarray(x, np.float64)
    low = x.min(axis=axis, keepdims=True)
    span = x.max(axis=axis, keepdims=True) - low
    return np.divide(x - low, span, out=np.zeros_like(x), where=span > 0)


def to_uint8(unit: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 [0, 255], rounded."""
    return np.round(np.clip(unit, 0.0, 1.0) * 255).astype(np.uint8)


def kernel_tiles(kernel: np.ndarray) -> np.ndarray:
    """A conv kernel (HWIO ``[kh, kw, C, O]``) -> ``O`` uint8 RGB tiles ``[O, kh, kw, 3]``.

    Each output filter is min-max scaled on its own over all its weights. With ``C == 3`` the
    input channels are shown as RGB; otherwise as gray, the mean over the input channels.
    """
    kernel = np.asarray(kernel, np.float64)
    if kernel.ndim != 4:
        raise ValueError(f"a conv kernel has 4 dims [kh, kw, C, O], got shape {kernel.shape}")
    filters = np.moveaxis(kernel, -1, 0)  # [O, kh, kw, C]
    if filters.shape[-1] != 3:
        filters = filters.mean(axis=-1, keepdims=True).repeat(3, axis=-1)
    return to_uint8(to_unit_range(filters, axis=(1, 2, 3)))


def feature_tiles(maps: np.ndarray, count: int, colormap: str = "viridis") -> np.ndarray:
    """The first ``count`` channels of one image's feature maps ``[H, W, C]`` as uint8 RGB
    tiles ``[min(count, C), H, W, 3]``.

    Each channel is min-max scaled on its own; 1x1 maps (a single pixel has no range) are
    scaled together, so that the tiles compare the channels.
    """
    import matplotlib

    maps = np.asarray(maps, np.float64)
    if maps.ndim != 3:
        raise ValueError(f"feature maps of one image are [H, W, C], got shape {maps.shape}")
    channels = np.moveaxis(maps[..., :count], -1, 0)  # [n, H, W]
    axis = (1, 2) if maps.shape[0] * maps.shape[1] > 1 else None
    colours = matplotlib.colormaps[colormap](to_unit_range(channels, axis=axis))
    return to_uint8(colours[..., :3])


def tile_grid(tiles: np.ndarray, scale: int = 1, gap: int = 2) -> np.ndarray:
    """uint8 tiles ``[N, h, w, 3]`` -> one uint8 image, row-major on a :func:`grid_shape` grid.

    The image is ``rows * (h * scale + gap) + gap`` by ``columns * (w * scale + gap) + gap``
    pixels; unused cells stay background.
    """
    count, h, w, _ = tiles.shape
    rows, columns = grid_shape(count)
    cell_h, cell_w = h * scale + gap, w * scale + gap
    grid = np.full((rows * cell_h + gap, columns * cell_w + gap, 3), BACKGROUND, np.uint8)
    big = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    for i, tile in enumerate(big):
        top, left = gap + (i // columns) * cell_h, gap + (i % columns) * cell_w
        grid[top:top + h * scale, left:left + w * scale] = tile
    return grid


def save_png(image: np.ndarray, path: str) -> str:
    """Writes a uint8 ``[H, W, 3]`` array as a PNG (creating its folder); returns ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path: str) -> str:
    """Saves at :data:`DPI` without cropping (so the size is figsize x DPI) and closes."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)
    return path


def image_grid(images: np.ndarray, titles: Sequence[str], wrong: Sequence[bool],
               path: str) -> str:
    """uint8 images ``[N, H, W, 3]`` (or ``[N, H, W, 1]``, shown grey) on a :func:`grid_shape`
    grid, each under its title; the ``wrong`` ones get a red title and frame. Returns
    ``path``."""
    if not len(images) == len(titles) == len(wrong):
        raise ValueError(f"{len(images)} images, {len(titles)} titles and {len(wrong)} "
                         "wrong flags; give one of each per image")
    plt = _pyplot()
    rows, columns = grid_shape(len(images))
    fig, axes = plt.subplots(rows, columns, squeeze=False,
                             figsize=(columns * PANEL_INCHES[0], rows * PANEL_INCHES[1]))
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title, bad in zip(axes.flat, images, titles, wrong, strict=False):
        color = WRONG_COLOR if bad else RIGHT_COLOR
        ax.axis("on")
        if image.shape[-1] == 1:
            ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            ax.imshow(image, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=7, color=color)
        for spine in ax.spines.values():
            spine.set_edgecolor(color)
            spine.set_linewidth(2.5 if bad else 0.5)
    fig.tight_layout()
    return _save_figure(fig, path)


def confusion_panel_inches(num_classes: int) -> float:
    """Side of one confusion-matrix panel in inches: grows with the class count, at most 20."""
    return min(20.0, 2.5 + 0.5 * num_classes)


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], path: str) -> str:
    """Two panels: the counts (rows: true class, columns: predicted) and the row-normalised
    matrix (each row divided by its class's example count: per-class recall)."""
    matrix = np.asarray(matrix)
    k = len(class_names)
    if matrix.shape != (k, k):
        raise ValueError(f"confusion matrix of shape {matrix.shape} for {k} class names")
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    plt = _pyplot()
    side = confusion_panel_inches(k)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side, side))
    _confusion_axes(axes[0], matrix, class_names, "counts", lambda v: f"{int(v)}")
    _confusion_axes(axes[1], normalised, class_names, "row-normalised (recall)",
                    lambda v: f"{v:.2f}")
    fig.tight_layout()
    return _save_figure(fig, path)


def _confusion_axes(ax, values: np.ndarray, class_names: Sequence[str], title: str,
                    text) -> None:
    """One confusion-matrix panel: a heat map with class-name ticks and (few classes) values."""
    ax.imshow(values, cmap="Blues", vmin=0)
    k = len(class_names)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(k), class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if k > MAX_ANNOTATED_CLASSES:
        return
    threshold = values.max() / 2 if values.size else 0
    for (i, j), value in np.ndenumerate(values):
        ax.text(j, i, text(value), ha="center", va="center", fontsize=7,
                color="white" if value > threshold else "black")
