"""On-device image augmentation, run inside the jitted train step.

``augment_batch(images, key, config.augment)`` takes a uint8 batch ``[B, H, W, C]`` and returns
a uint8 batch of the same shape. Every random choice is drawn per example from ``key`` (the
train step folds the step number into the run's key), so a (seed, step) pair fixes the batch
exactly, and every op is a pure ``jax.numpy`` function: the whole pipeline traces into the
jitted step, and each example in a batch gets its own draw.

Each op is switched off by its zero / empty value, and an op that is off is not traced at all:
with every op off, ``augment_batch`` returns its input unchanged (clean ablations). Missing
keys take ``base_config().augment``'s defaults; unknown keys are an error that lists
the valid ones.

The ops run in this fixed order (config keys in brackets; names follow Keras'
ImageDataGenerator where it has one):

1. Pad-and-crop [crop_padding, padding_mode]: pad every side by crop_padding pixels (numpy pad
   modes 'reflect' = dcb|abcd|cba, 'constant' = zeros, 'edge') and take a random crop of the
   original size, i.e. an integer translation by up to crop_padding pixels. Then flips:
   [flip] left-right with probability 1/2 (this is Keras' ``horizontal_flip``; the key keeps
   its name so that existing configs keep working and it pairs with ``eval.tta_flip``) or,
   with [flip_mode] 'alternate', airbench's alternating flip (:func:`alternating_flips`), and
   [vertical_flip] up-down with probability 1/2.
2. Affine warp [rotation_range, width_shift_range, height_shift_range, zoom_range,
   shear_range, fill_mode, cval]. One 3x3 matrix per image composes, about the image centre,
   zoom, then shear, then rotation, then shift; the image is resampled once (bilinear, with
   ``jax.scipy.ndimage.map_coordinates``). rotation_range r: angle ~ U(-r, r) degrees,
   positive = counter-clockwise. width/height_shift_range: shift ~ U(-r, r) * width/height
   pixels (fractions only; Keras' ">= 1 means pixels" form is not supported). zoom_range z:
   per-axis factors ~ U(1-z, 1+z), drawn independently for rows and columns, and as in Keras
   a factor > 1 shows more of the scene (content shrinks). shear_range s: angle ~ U(-s, s)
   degrees, a pure x-shear ``x' = x + tan(angle) * y`` (Keras' matrix also scales by
   cos(angle)). fill_mode (Keras' names and meanings, default 'nearest'): 'constant'
   (kkkk|abcd|kkkk with k = cval, in 0..255 pixel units), 'nearest' (aaaa|abcd|dddd),
   'reflect' (dcba|abcd|dcba), 'wrap' (abcd|abcd|abcd). The general form is public:
   ``affine_transform(images, matrices)`` warps by any per-image forward matrices, built with
   ``rotation_matrix``, ``shift_matrix``, ``scale_matrix``, ``shear_x_matrix``,
   ``shear_y_matrix`` and ``about_center``.
3. Colour, in this order: [brightness_range] (lo, hi): multiply by a factor ~ U(lo, hi)
   (Keras/PIL brightness; () = off). [contrast] c: blend with the mean of the grey image,
   factor ~ U(max(0, 1-c), 1+c). [saturation] s: blend with the grey image, same factor
   law. [hue] h <= 0.5: rotate the hue by ~ U(-h, h) turns (HSV). These three are
   torchvision's ColorJitter definitions, in a fixed order. [channel_shift_range] r: as
   Keras, add one intensity ~ U(-r, r) (0..255 units) to every channel, clipped to the
   image's own [min, max]. Each colour op clips to [0, 255].
4. [auto_augment] '' (off), 'randaugment' or 'trivialaugment_wide' (see below).
5. Occlusion: [cutout_size] L (DeVries & Taylor 2017): one L x L square per image, centre
   uniform over the image (the square is clipped at the border). Then random erasing
   (Zhong et al. 2017, torchvision's sampler) [erasing_prob, erasing_area, erasing_aspect]:
   with probability p, a rectangle of area ~ U(area) * H * W and aspect (h/w) log-uniform in
   erasing_aspect, placed uniformly inside the image; of 10 tries the first that fits
   (height < H and width < W) is used, none fitting means no erasing. [erasing_value] fills
   both: a pixel value '0'..'255' or 'random' (uniform integers 0..255 per pixel and
   channel). The fill is applied in pixel space, before normalisation: '0' is black, not the
   dataset mean.

Precision: steps 1 and 5 move or set whole pixels and keep the input dtype (uint8). When any
of steps 2-4 is on, the batch is converted to float32 (values 0..255) after step 1 and
converted back before step 5: rounded half to even and clipped to [0, 255], once. (A float
input batch keeps its dtype and is clipped but not rounded.)

Each random op is a jitted unit (structural settings static, numbers traced); inside the
jitted train step the units are simply inlined, and an eager caller such as the command line
compiles each unit once instead of dispatching it primitive by primitive. Each unit draws all
its per-example numbers with one or two PRNG calls.

RandAugment (Cubuk et al. 2019, arXiv:1909.13719) and TrivialAugment-wide (Müller & Hutter
2021, arXiv:2103.10158) follow torchvision's op lists and magnitude bins (31 bins, 0..30):

    op            RandAugment max      TrivialAugment-wide max   signed
    Identity      -                    -
    ShearX/Y      0.3 (tangent)        0.99                      yes
    TranslateX/Y  150/331 * W or H px  32 px                     yes   (truncated to int)
    Rotate        30 degrees           135 degrees               yes
    Brightness    0.9                  0.99                      yes   (factor 1 + m)
    Color         0.9                  0.99                      yes   (saturation, 1 + m)
    Contrast      0.9                  0.99                      yes   (factor 1 + m)
    Sharpness     0.9                  0.99                      yes   (factor 1 + m)
    Posterize     8 - round(b / 7.5)   8 - round(b / 5) bits
    Solarize      threshold 255 - 8.5 b (both)                         invert pixels >= t
    AutoContrast  -                    -
    Equalize      -                    -

Magnitude of bin b: ``linspace(0, max, 31)[b]``; a signed op negates it with probability 1/2.
RandAugment applies [randaugment_num_ops] N ops, each drawn uniformly (with replacement) per
image, all at bin [randaugment_magnitude] M (torchvision's defaults N=2, M=9). TrivialAugment
applies one uniformly drawn op per image at a uniformly drawn bin. Per image, a lax.switch
over the op table gives a matrix (identity for non-geometric ops) for one nearest-neighbour
warp with constant fill ``cval`` (torchvision's defaults), then a second lax.switch applies the
pixel op (identity for geometric ops). After each op the image is clipped and rounded to
integer levels, as torchvision's uint8 ops are. Differences from torchvision: shears are about
pixel (0, 0) rather than the corner, and grey levels are not truncated to integers.

``python -m cv_jax.tools.augmentations --config=... --out=grid.png`` draws a grid of a recipe's
augmented training images.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from cv_jax.config import (
    AUTO_AUGMENT_POLICIES,
    FILL_MODES,
    PADDING_MODES,
    base_config,
    check_augment_keys,
    parse_fill_value,
)

NUM_MAGNITUDE_BINS = 31
POLICY_OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
              "Brightness", "Color", "Contrast", "Sharpness", "Posterize", "Solarize",
              "AutoContrast", "Equalize")
GEOMETRIC_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
# fold_in constants for the ops' keys (crop and flip keep split(key), as before).
_AFFINE, _VFLIP, _COLOUR, _POLICY, _CUTOUT, _ERASE = range(101, 107)


# ---------------------------------------------------------------------------------------------
# Config


def settings(cfg: Mapping[str, Any] | mlc.ConfigDict) -> mlc.ConfigDict:
    """``cfg`` over the defaults of ``base_config().augment``; unknown keys raise."""
    given = cfg.to_dict() if isinstance(cfg, mlc.ConfigDict) else dict(cfg)
    check_augment_keys(given)
    merged = base_config().augment.to_dict()
    merged.update(given)
    return mlc.ConfigDict(merged)


def _choose(name: str, value: str, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(map(repr, valid))}")
    return value


# ---------------------------------------------------------------------------------------------
# Crop and flips (exact pixel permutations; any dtype)


@jax.jit
def random_flip(images: jax.Array, key: jax.Array) -> jax.Array:
    """Mirrors each image left-right with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1, :], images)


@jax.jit
def alternating_flips(key: jax.Array, indices: jax.Array, epoch: jax.Array) -> jax.Array:
    """airbench's alternating flip (arXiv:2404.00498, section 3.6): whether to mirror each
    example (by its ``indices`` in the training set) in ``epoch``. Each example gets one fixed
    random choice from ``key``, used in even epochs; odd epochs use the opposite one, so every
    image is seen both ways in any two consecutive epochs."""
    first = jax.vmap(lambda i: jax.random.bernoulli(jax.random.fold_in(key, i)))(indices)
    return jnp.logical_xor(first, epoch % 2 == 1)


@jax.jit
def flip_where(images: jax.Array, flips: jax.Array) -> jax.Array:
    """Mirrors left-right the images where ``flips`` [B] is True."""
    return jnp.where(flips[:, None, None, None], images[:, :, ::-1, :], images)


@jax.jit
def random_vertical_flip(images: jax.Array, key: jax.Array) -> jax.Array:
    """Mirrors each image top-bottom with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, ::-1, :, :], images)


def random_crop(images: jax.Array, key: jax.Array, padding: int,
                mode: str = "reflect") -> jax.Array:
    """Pads each side by ``padding`` pixels and takes a random crop of the original size.

    This is random translation by up to ``padding`` pixels in each direction; ``mode`` is
    numpy's pad mode ('reflect', 'constant' for zeros, 'edge').
    """
    _choose("padding_mode", mode, PADDING_MODES)
    if padding == 0:
        return images
    return _random_crop(images, key, padding=padding, mode=mode)


@functools.partial(jax.jit, static_argnames=("padding", "mode"))
def _random_crop(images: jax.Array, key: jax.Array, *, padding: int, mode: str) -> jax.Array:
    b, h, w, _ = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)), mode=mode)
    offsets = jax.random.randint(key, (b, 2), 0, 2 * padding + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, image.shape[-1]))

    return jax.vmap(crop)(padded, offsets)


# ---------------------------------------------------------------------------------------------
# Affine warps. Matrices are 3x3, act on homogeneous pixel coordinates (row, col, 1) and are
# *forward* maps: content at input position p moves to output position M @ p.


def _affine(a, b, c, d, e, f) -> jax.Array:
    """Stacks broadcastable entries into matrices [[a, b, c], [d, e, f], [0, 0, 1]]."""
    a, b, c, d, e, f = jnp.broadcast_arrays(*(jnp.asarray(x, jnp.float32)
                                              for x in (a, b, c, d, e, f)))
    zero, one = jnp.zeros_like(a), jnp.ones_like(a)
    return jnp.stack([jnp.stack([a, b, c], -1), jnp.stack([d, e, f], -1),
                      jnp.stack([zero, zero, one], -1)], -2)


def rotation_matrix(degrees) -> jax.Array:
    """Counter-clockwise rotation (as seen on screen) about pixel (0, 0); see about_center."""
    t = jnp.deg2rad(jnp.asarray(degrees, jnp.float32))
    return _affine(jnp.cos(t), -jnp.sin(t), 0, jnp.sin(t), jnp.cos(t), 0)


def shift_matrix(rows, cols) -> jax.Array:
    """Moves content down by ``rows`` and right by ``cols`` pixels (like np.roll)."""
    return _affine(1, 0, rows, 0, 1, cols)


def scale_matrix(rows, cols) -> jax.Array:
    """Scales content by ``rows`` vertically and ``cols`` horizontally (> 1 magnifies)."""
    return _affine(rows, 0, 0, 0, cols, 0)


def shear_x_matrix(tangent) -> jax.Array:
    """Horizontal shear: x' = x + tangent * y."""
    return _affine(1, 0, 0, tangent, 1, 0)


def shear_y_matrix(tangent) -> jax.Array:
    """Vertical shear: y' = y + tangent * x."""
    return _affine(1, tangent, 0, 0, 1, 0)


def about_center(matrices: jax.Array, height: int, width: int) -> jax.Array:
    """The same transform with its fixed point at the image centre instead of pixel (0, 0)."""
    cy, cx = (height - 1) / 2, (width - 1) / 2
    return shift_matrix(cy, cx) @ matrices @ shift_matrix(-cy, -cx)


def invert_affine(matrices: jax.Array) -> jax.Array:
    """Closed-form inverse of affine 3x3 matrices (last row 0, 0, 1)."""
    a, b, c = matrices[..., 0, 0], matrices[..., 0, 1], matrices[..., 0, 2]
    d, e, f = matrices[..., 1, 0], matrices[..., 1, 1], matrices[..., 1, 2]
    det = a * e - b * d
    ia, ib, id_, ie = e / det, -b / det, -d / det, a / det
    return _affine(ia, ib, -(ia * c + ib * f), id_, ie, -(id_ * c + ie * f))


def affine_transform(images: jax.Array, matrices: jax.Array, *, fill_mode: str = "nearest",
                     cval: float = 0.0, order: int = 1) -> jax.Array:
    """Warps each image by its forward matrix ([B, 3, 3], see above); returns float32.

    Output pixel p samples the input at M^-1 p with ``order`` 1 (bilinear) or 0 (nearest);
    positions outside the image follow ``fill_mode`` (FILL_MODES, Keras' meanings).
    """
    _choose("fill_mode", fill_mode, FILL_MODES)
    return _affine_transform(images, matrices, fill_mode=fill_mode, cval=float(cval),
                             order=order)


@functools.partial(jax.jit, static_argnames=("fill_mode", "cval", "order"))
def _affine_transform(images: jax.Array, matrices: jax.Array, *, fill_mode: str, cval: float,
                      order: int) -> jax.Array:
    _, h, w, _ = images.shape
    rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32),
                              jnp.arange(w, dtype=jnp.float32), indexing="ij")
    inverse = invert_affine(jnp.broadcast_to(matrices, (images.shape[0], 3, 3)))

    def warp(image, m):
        src = (m[0, 0] * rows + m[0, 1] * cols + m[0, 2], m[1, 0] * rows + m[1, 1] * cols + m[1, 2])

        def channel(x):
            return jax.scipy.ndimage.map_coordinates(x, src, order=order, mode=fill_mode,
                                                     cval=float(cval))

        return jax.vmap(channel, in_axes=2, out_axes=2)(image)

    return jax.vmap(warp)(images.astype(jnp.float32), inverse)


def keras_affine_matrices(height: int, width: int, *, angle=0.0, shift=(0.0, 0.0),
                          zoom=(1.0, 1.0), shear=0.0) -> jax.Array:
    """Forward matrices for Keras-style parameters (broadcast over the batch).

    ``angle`` and ``shear`` in degrees, ``shift`` (rows, cols) in pixels, ``zoom`` (rows,
    cols) Keras factors (> 1 shrinks the content). Zoom, shear and rotation act about the
    centre, in that order, then the shift.
    """
    zoom_y, zoom_x = zoom
    linear = (rotation_matrix(angle)
              @ shear_x_matrix(jnp.tan(jnp.deg2rad(jnp.asarray(shear, jnp.float32))))
              @ scale_matrix(1.0 / jnp.asarray(zoom_y, jnp.float32),
                             1.0 / jnp.asarray(zoom_x, jnp.float32)))
    return shift_matrix(*shift) @ about_center(linear, height, width)


@functools.partial(jax.jit, static_argnames=("fill_mode", "cval"))
def random_affine(images: jax.Array, key: jax.Array, rotation_range=0.0, width_shift_range=0.0,
                  height_shift_range=0.0, zoom_range=0.0, shear_range=0.0, *,
                  fill_mode: str = "nearest", cval: float = 0.0) -> jax.Array:
    """Keras' random rotation / shift / zoom / shear as one warp per image (float32 out).

    A range of 0 gives exactly the identity for that part of the transform.
    """
    b, h, w, _ = images.shape
    u = jax.random.uniform(key, (b, 6), minval=-1.0, maxval=1.0)
    matrices = keras_affine_matrices(
        h, w, angle=u[:, 0] * rotation_range,
        shift=(u[:, 1] * height_shift_range * h, u[:, 2] * width_shift_range * w),
        zoom=(1.0 + u[:, 3] * zoom_range, 1.0 + u[:, 4] * zoom_range),
        shear=u[:, 5] * shear_range)
    return affine_transform(images, matrices, fill_mode=fill_mode, cval=cval)


# ---------------------------------------------------------------------------------------------
# Colour (float images in 0..255; factors per example, shape [B])


def _per_image(values) -> jax.Array:
    return jnp.asarray(values, jnp.float32).reshape(-1, 1, 1, 1)


def grayscale(images: jax.Array) -> jax.Array:
    """ITU-R 601 luma (torchvision's weights), keeping a channel axis of size 1."""
    if images.shape[-1] == 1:
        return images
    if images.shape[-1] != 3:
        raise ValueError(f"colour ops need 1 or 3 channels, got {images.shape[-1]}")
    weights = jnp.array([0.2989, 0.587, 0.114], images.dtype)
    return (images @ weights)[..., None]


def adjust_brightness(images: jax.Array, factors) -> jax.Array:
    """``clip(x * f)``: Keras' brightness_range and PIL's ImageEnhance.Brightness."""
    return jnp.clip(images * _per_image(factors), 0, 255)


def adjust_contrast(images: jax.Array, factors) -> jax.Array:
    """``clip(m + f * (x - m))``, m the mean of the grey image (torchvision, PIL)."""
    mean = jnp.mean(grayscale(images), axis=(1, 2, 3), keepdims=True)
    return jnp.clip(mean + _per_image(factors) * (images - mean), 0, 255)


def adjust_saturation(images: jax.Array, factors) -> jax.Array:
    """``clip(g + f * (x - g))``, g the grey image (torchvision, PIL's Color)."""
    gray = grayscale(images)
    return jnp.clip(gray + _per_image(factors) * (images - gray), 0, 255)


def adjust_hue(images: jax.Array, deltas) -> jax.Array:
    """Rotates the hue by ``deltas`` turns, keeping HSV saturation and value; RGB only.

    The hexcone formulas of torchvision / tf.image / dm-pix, written so that the branch (which
    channel is largest) is chosen by comparing the channels with each other: formulas that
    test ``max(r, g, b) == g`` give wrong hues under jit when XLA fuses the producer of
    ``images`` into both sides and the two copies differ in the last bit.
    """
    if images.shape[-1] != 3:
        raise ValueError(f"hue needs RGB images, got {images.shape[-1]} channels")
    r, g, b = images[..., 0], images[..., 1], images[..., 2]
    high = jnp.maximum(jnp.maximum(r, g), b)
    low = jnp.minimum(jnp.minimum(r, g), b)
    spread = high - low
    safe = jnp.where(spread > 0, spread, 1.0)
    red_max = (r >= g) & (r >= b)
    green_max = ~red_max & (g >= b)
    sextant = jnp.where(red_max, (g - b) / safe,
                        jnp.where(green_max, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    hue6 = jnp.mod(sextant + 6.0 * jnp.asarray(deltas, jnp.float32).reshape(-1, 1, 1), 6.0)

    def channel(centre):  # HSV -> RGB: low + spread * a trapezoid of the hue
        return low + spread * jnp.clip(2.0 - jnp.abs(jnp.mod(hue6 - centre + 3.0, 6.0) - 3.0),
                                       0.0, 1.0)

    return jnp.clip(jnp.stack([channel(0.0), channel(2.0), channel(4.0)], -1), 0, 255)


def channel_shift(images: jax.Array, intensities) -> jax.Array:
    """Keras' channel shift: add one intensity to every channel, clip to the image's range."""
    low = jnp.min(images, axis=(1, 2, 3), keepdims=True)
    high = jnp.max(images, axis=(1, 2, 3), keepdims=True)
    return jnp.clip(images + _per_image(intensities), low, high)


@functools.partial(jax.jit, static_argnames=(
    "brightness_range", "contrast", "saturation", "hue", "channel_shift_range"))
def random_colour(images: jax.Array, key: jax.Array, *, brightness_range: tuple = (),
                  contrast: float = 0.0, saturation: float = 0.0, hue: float = 0.0,
                  channel_shift_range: float = 0.0) -> jax.Array:
    """Brightness, contrast, saturation, hue, channel shift (those switched on), in order."""
    u = jax.random.uniform(key, (images.shape[0], 5))

    def between(i, lo, hi):
        return lo + u[:, i] * (hi - lo)

    if len(brightness_range):
        images = adjust_brightness(images, between(0, *brightness_range))
    if contrast:
        images = adjust_contrast(images, between(1, max(0.0, 1.0 - contrast), 1.0 + contrast))
    if saturation:
        images = adjust_saturation(images, between(2, max(0.0, 1.0 - saturation),
                                                   1.0 + saturation))
    if hue:
        images = adjust_hue(images, between(3, -hue, hue))
    if channel_shift_range:
        images = channel_shift(images, between(4, -channel_shift_range, channel_shift_range))
    return images


# ---------------------------------------------------------------------------------------------
# RandAugment / TrivialAugment-wide


def policy_magnitudes(policy: str, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``(table [len(POLICY_OPS), 31], signed [len(POLICY_OPS)])``: torchvision's bins."""
    _choose("auto_augment policy", policy, AUTO_AUGMENT_POLICIES[1:])
    wide = policy == "trivialaugment_wide"
    bins = np.arange(NUM_MAGNITUDE_BINS)

    def lin(top):
        return np.linspace(0.0, top, NUM_MAGNITUDE_BINS)

    enhance = lin(0.99 if wide else 0.9)
    rows = {
        "ShearX": lin(0.99 if wide else 0.3), "ShearY": lin(0.99 if wide else 0.3),
        "TranslateX": lin(32.0 if wide else 150.0 / 331.0 * width),
        "TranslateY": lin(32.0 if wide else 150.0 / 331.0 * height),
        "Rotate": lin(135.0 if wide else 30.0),
        "Brightness": enhance, "Color": enhance, "Contrast": enhance, "Sharpness": enhance,
        "Posterize": 8 - np.round(bins / ((NUM_MAGNITUDE_BINS - 1) / (6 if wide else 4))),
        "Solarize": np.linspace(255.0, 0.0, NUM_MAGNITUDE_BINS),
    }
    table = np.stack([rows.get(op, np.zeros(NUM_MAGNITUDE_BINS)) for op in POLICY_OPS])
    unsigned = ("Identity", "Posterize", "Solarize", "AutoContrast", "Equalize")
    signed = np.array([op not in unsigned for op in POLICY_OPS])
    return table.astype(np.float32), signed


def _op_matrix(op: str, height: int, width: int) -> Callable[[jax.Array], jax.Array]:
    """Forward matrix of a policy op for magnitude m (identity for pixel ops)."""
    return {
        "ShearX": lambda m: shear_x_matrix(m),
        "ShearY": lambda m: shear_y_matrix(m),
        "TranslateX": lambda m: shift_matrix(0.0, jnp.trunc(m)),
        "TranslateY": lambda m: shift_matrix(jnp.trunc(m), 0.0),
        "Rotate": lambda m: about_center(rotation_matrix(m), height, width),
    }.get(op, lambda m: jnp.eye(3, dtype=jnp.float32))


def _sharpness(image: jax.Array, factor) -> jax.Array:
    """PIL/torchvision sharpness: blend with a 3x3 smoothed copy (borders kept)."""
    h, w = image.shape[:2]
    total = sum(image[i:h - 2 + i, j:w - 2 + j] for i in range(3) for j in range(3))
    smooth = jnp.round((total + 4 * image[1:-1, 1:-1]) / 13.0)
    degenerate = image.at[1:-1, 1:-1].set(smooth)
    return jnp.clip(degenerate + factor * (image - degenerate), 0, 255)


def _autocontrast(image: jax.Array) -> jax.Array:
    """Stretch each channel to 0..255 (constant channels unchanged)."""
    low = jnp.min(image, axis=(0, 1), keepdims=True)
    high = jnp.max(image, axis=(0, 1), keepdims=True)
    flat = high <= low
    scale = jnp.where(flat, 1.0, 255.0 / jnp.where(flat, 1.0, high - low))
    return jnp.clip((image - jnp.where(flat, 0.0, low)) * scale, 0, 255)


def _equalize_channel(x: jax.Array) -> jax.Array:
    """PIL/torchvision histogram equalisation of one integer-valued channel."""
    levels = x.astype(jnp.int32)
    hist = jnp.bincount(levels.ravel(), length=256)
    last = hist[255 - jnp.argmax(hist[::-1] > 0)]
    step = (levels.size - last) // 255
    lut = (jnp.cumsum(hist) + step // 2) // jnp.maximum(step, 1)
    lut = jnp.clip(jnp.concatenate([jnp.zeros(1, lut.dtype), lut[:-1]]), 0, 255)
    return jnp.where(step == 0, x, lut[levels].astype(x.dtype))


def _op_pixels(op: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Pixel op of a policy op on one float image for magnitude m (identity for warps)."""
    def one(fn):
        return lambda x, m: fn(x[None], m[None])[0]

    return {
        "Brightness": one(lambda x, m: adjust_brightness(x, 1.0 + m)),
        "Color": one(lambda x, m: adjust_saturation(x, 1.0 + m)),
        "Contrast": one(lambda x, m: adjust_contrast(x, 1.0 + m)),
        "Sharpness": lambda x, m: _sharpness(x, 1.0 + m),
        "Posterize": lambda x, m: jnp.floor(x / jnp.exp2(8.0 - m)) * jnp.exp2(8.0 - m),
        "Solarize": lambda x, m: jnp.where(x >= m, 255.0 - x, x),
        "AutoContrast": lambda x, m: _autocontrast(x),
        "Equalize": lambda x, m: jax.vmap(_equalize_channel, in_axes=2, out_axes=2)(x),
    }.get(op, lambda x, m: x)


@functools.partial(jax.jit, static_argnames=("cval",))
def apply_policy_ops(images: jax.Array, ops: jax.Array, magnitudes: jax.Array, *,
                     cval: float = 0.0) -> jax.Array:
    """Applies op ``POLICY_OPS[ops[i]]`` at magnitude ``magnitudes[i]`` to image i.

    Images are float, integer-valued in 0..255; the result is clipped and rounded likewise.
    Geometric ops warp with nearest-neighbour sampling and constant fill ``cval``.
    """
    _, h, w, _ = images.shape
    matrix_table = [_op_matrix(op, h, w) for op in POLICY_OPS]
    pixel_table = [_op_pixels(op) for op in POLICY_OPS]
    matrices = jax.vmap(lambda o, m: jax.lax.switch(o, matrix_table, m))(ops, magnitudes)
    images = affine_transform(images, matrices, fill_mode="constant", cval=cval, order=0)
    images = jax.vmap(lambda x, o, m: jax.lax.switch(o, pixel_table, x, m))(
        images, ops, magnitudes)
    return jnp.clip(jnp.round(images), 0, 255)


@functools.partial(jax.jit, static_argnames=("policy", "num_ops", "cval"))
def random_policy(images: jax.Array, key: jax.Array, *, policy: str, num_ops: int = 2,
                  magnitude=9, cval: float = 0.0) -> jax.Array:
    """RandAugment (``num_ops`` ops at bin ``magnitude``) or TrivialAugment-wide (1 op at a
    random bin) per image; float images in, integer-valued float images out."""
    b, h, w, _ = images.shape
    table, signed = policy_magnitudes(policy, h, w)
    table, signed = jnp.asarray(table), jnp.asarray(signed)
    rounds = num_ops if policy == "randaugment" else 1

    def one_round(x, k):
        u = jax.random.uniform(k, (b, 3))
        ops = jnp.minimum((u[:, 0] * len(POLICY_OPS)).astype(jnp.int32), len(POLICY_OPS) - 1)
        if policy == "randaugment":
            bins = jnp.full((b,), magnitude, jnp.int32)
        else:
            bins = jnp.minimum((u[:, 1] * NUM_MAGNITUDE_BINS).astype(jnp.int32),
                               NUM_MAGNITUDE_BINS - 1)
        negate = signed[ops] & (u[:, 2] < 0.5)
        magnitudes = jnp.where(negate, -table[ops, bins], table[ops, bins])
        return apply_policy_ops(x, ops, magnitudes, cval=cval), None

    images = jnp.clip(jnp.round(images.astype(jnp.float32)), 0, 255)
    # A scan compiles the op table once, whatever the number of rounds.
    return jax.lax.scan(one_round, images, jax.random.split(key, rounds))[0]


# ---------------------------------------------------------------------------------------------
# Cutout and random erasing (any dtype)


def erase(images: jax.Array, tops, lefts, heights, widths, values) -> jax.Array:
    """Sets rows [top, top+height) x cols [left, left+width) of each image to ``values``.

    The box may stick out of the image (only the inside part is set); ``values`` is a scalar
    or an array broadcastable to ``images`` (rounded first for integer images).
    """
    _, h, w, _ = images.shape
    rows = jnp.arange(h).reshape(1, h, 1, 1)
    cols = jnp.arange(w).reshape(1, 1, w, 1)

    def per(v):
        return jnp.asarray(v).reshape(-1, 1, 1, 1)

    tops, lefts = per(tops), per(lefts)
    inside = ((rows >= tops) & (rows < tops + per(heights))
              & (cols >= lefts) & (cols < lefts + per(widths)))
    values = jnp.asarray(values)
    if jnp.issubdtype(images.dtype, jnp.integer):
        values = jnp.round(values)
    return jnp.where(inside, values.astype(images.dtype), images)


def _fill(key: jax.Array, images: jax.Array, value: str | float):
    if value == "random":
        return jax.random.bits(key, images.shape, jnp.uint8).astype(images.dtype)
    return value


@functools.partial(jax.jit, static_argnames=("value",))
def random_cutout(images: jax.Array, key: jax.Array, size, value: str | float = 0.0) -> jax.Array:
    """Cutout: a ``size`` x ``size`` square per image, centred uniformly, clipped at borders."""
    b, h, w, _ = images.shape
    k_pos, k_fill = jax.random.split(key)
    centres = jnp.floor(jax.random.uniform(k_pos, (b, 2)) * jnp.array([h, w])).astype(jnp.int32)
    size = jnp.asarray(size, jnp.int32)
    return erase(images, centres[:, 0] - size // 2, centres[:, 1] - size // 2, size, size,
                 _fill(k_fill, images, value))


@functools.partial(jax.jit, static_argnames=("value", "tries"))
def random_erasing(images: jax.Array, key: jax.Array, prob=0.5, area=(0.02, 0.33),
                   aspect=(0.3, 3.3), value: str | float = 0.0, tries: int = 10) -> jax.Array:
    """Random erasing with torchvision's sampler (see the module docstring)."""
    b, h, w, _ = images.shape
    k_draw, k_fill = jax.random.split(key)
    u = jax.random.uniform(k_draw, (b, 2 * tries + 3))
    target = h * w * (area[0] + u[:, :tries] * (area[1] - area[0]))
    log_lo, log_hi = jnp.log(aspect[0]), jnp.log(aspect[1])
    ratio = jnp.exp(log_lo + u[:, tries:2 * tries] * (log_hi - log_lo))
    heights = jnp.round(jnp.sqrt(target * ratio)).astype(jnp.int32)
    widths = jnp.round(jnp.sqrt(target / ratio)).astype(jnp.int32)
    fits = (heights < h) & (widths < w)
    first = jnp.argmax(fits, axis=1)
    pick = jnp.arange(b)
    height, width = heights[pick, first], widths[pick, first]
    on = jnp.any(fits, axis=1) & (u[:, -3] < prob)
    tops = jnp.floor(u[:, -2] * (h - height + 1)).astype(jnp.int32)
    lefts = jnp.floor(u[:, -1] * (w - width + 1)).astype(jnp.int32)
    return erase(images, tops, lefts, jnp.where(on, height, 0), width,
                 _fill(k_fill, images, value))


# ---------------------------------------------------------------------------------------------
# The pipeline


# Every switch at its "off" value, in pipeline order.
_AFFINE_KEYS = ("rotation_range", "width_shift_range", "height_shift_range", "zoom_range",
                "shear_range")
_OFF = {"crop_padding": 0, "flip": False, "vertical_flip": False,
        **dict.fromkeys(_AFFINE_KEYS, 0.0), "brightness_range": (), "contrast": 0.0,
        "saturation": 0.0, "hue": 0.0, "channel_shift_range": 0.0, "auto_augment": "",
        "cutout_size": 0, "erasing_prob": 0.0}


def _affine_on(cfg: mlc.ConfigDict) -> bool:
    return any(cfg[k] for k in _AFFINE_KEYS)


def _colour_on(cfg: mlc.ConfigDict) -> bool:
    return any((len(cfg.brightness_range), cfg.contrast, cfg.saturation, cfg.hue,
                cfg.channel_shift_range))


def _policy_on(cfg: mlc.ConfigDict) -> bool:
    _choose("auto_augment policy", cfg.auto_augment, AUTO_AUGMENT_POLICIES)
    return bool(cfg.auto_augment) and not (cfg.auto_augment == "randaugment"
                                           and cfg.randaugment_num_ops == 0)


def augment_batch(images: jax.Array, key: jax.Array, cfg: Mapping[str, Any],
                  flips: jax.Array | None = None) -> jax.Array:
    """Applies the augmentations switched on in ``config.augment``, in the documented order.

    ``images``: uint8 ``[B, H, W, C]``; returns the same shape and dtype (see the module
    docstring for rounding). Unchanged (the same array) when every op is off. With
    ``flip_mode='alternate'``, ``flips`` [B] says which images to mirror
    (:func:`alternating_flips`; the train step knows the examples' indices and the epoch).
    """
    cfg = settings(cfg)
    alternate = cfg.flip and cfg.flip_mode == "alternate"
    if alternate and flips is None:
        raise ValueError("augment.flip_mode='alternate' needs the batch's flips "
                         "(augment.alternating_flips of the examples' indices and the epoch)")
    crop_key, flip_key = jax.random.split(key)  # as before the other ops existed

    def key_for(tag):
        return jax.random.fold_in(key, tag)

    x = random_crop(images, crop_key, cfg.crop_padding, cfg.padding_mode)
    if cfg.flip:
        x = flip_where(x, flips) if alternate else random_flip(x, flip_key)
    if cfg.vertical_flip:
        x = random_vertical_flip(x, key_for(_VFLIP))
    if _affine_on(cfg) or _colour_on(cfg) or _policy_on(cfg):
        dtype = x.dtype
        x = x.astype(jnp.float32)
        if _affine_on(cfg):
            x = random_affine(x, key_for(_AFFINE), *(cfg[k] for k in _AFFINE_KEYS),
                              fill_mode=cfg.fill_mode, cval=float(cfg.cval))
        if _colour_on(cfg):
            x = random_colour(x, key_for(_COLOUR), brightness_range=tuple(cfg.brightness_range),
                              contrast=cfg.contrast, saturation=cfg.saturation, hue=cfg.hue,
                              channel_shift_range=cfg.channel_shift_range)
        if _policy_on(cfg):
            x = random_policy(x, key_for(_POLICY), policy=cfg.auto_augment,
                              num_ops=cfg.randaugment_num_ops,
                              magnitude=cfg.randaugment_magnitude, cval=float(cfg.cval))
        x = jnp.clip(x, 0, 255)
        if jnp.issubdtype(dtype, jnp.integer):
            x = jnp.round(x)
        x = x.astype(dtype)
    if cfg.cutout_size or cfg.erasing_prob:
        value = parse_fill_value(cfg.erasing_value)
        if cfg.cutout_size:
            x = random_cutout(x, key_for(_CUTOUT), cfg.cutout_size, value)
        if cfg.erasing_prob:
            x = random_erasing(x, key_for(_ERASE), cfg.erasing_prob, tuple(cfg.erasing_area),
                               tuple(cfg.erasing_aspect), value)
    return x


# ---------------------------------------------------------------------------------------------


def describe(cfg: Mapping[str, Any] | mlc.ConfigDict) -> str:
    """The ops switched on, with their settings, in pipeline order ('none' if all are off)."""
    cfg = settings(cfg)
    switches = {k: cfg[k] for k in _OFF if cfg[k] != _OFF[k]}
    details = {"crop_padding": ("padding_mode",), "flip": ("flip_mode",),
               "cutout_size": ("erasing_value",),
               "erasing_prob": ("erasing_area", "erasing_aspect", "erasing_value"),
               "auto_augment": (("randaugment_num_ops", "randaugment_magnitude")
                                if cfg.auto_augment == "randaugment" else ())}
    last_affine = [k for k in _AFFINE_KEYS if k in switches][-1:]
    details.update({k: ("fill_mode", "cval") for k in last_affine})
    parts = []
    for key, value in switches.items():
        extra = [f"{k}={cfg[k]!r}" for k in details.get(key, ())]
        parts.append(f"{key}={value!r}" + (f" ({', '.join(extra)})" if extra else ""))
    return "; ".join(parts) or "none"
