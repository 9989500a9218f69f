"""On-device image augmentation, run inside the jitted train step.

Every op takes a uint8 or float batch ``[B, H, W, C]`` and a PRNG key and draws one
random choice per example, so a (seed, step) pair fixes the batch exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections as mlc


def random_flip(images: jax.Array, key: jax.Array) -> jax.Array:
    """Mirrors each image left-right with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1, :], images)


def random_crop(images: jax.Array, key: jax.Array, padding: int,
                mode: str = "reflect") -> jax.Array:
    """Pads each side by ``padding`` pixels and takes a random crop of the original size.

    This is random translation by up to ``padding`` pixels in each direction; ``mode`` is
    numpy's pad mode ('reflect', 'constant' for zeros, 'edge').
    """
    if padding == 0:
        return images
    b, h, w, _ = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)), mode=mode)
    offsets = jax.random.randint(key, (b, 2), 0, 2 * padding + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, image.shape[-1]))

    return jax.vmap(crop)(padded, offsets)


def augment_batch(images: jax.Array, key: jax.Array, cfg: mlc.ConfigDict) -> jax.Array:
    """Applies the augmentations switched on in ``config.augment`` (crop, then flip)."""
    crop_key, flip_key = jax.random.split(key)
    images = random_crop(images, crop_key, cfg.crop_padding, cfg.padding_mode)
    if cfg.flip:
        images = random_flip(images, flip_key)
    return images
