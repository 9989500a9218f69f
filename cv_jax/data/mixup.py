"""Mixup and CutMix: mix pairs of training images and their label distributions, on device.

- Mixup (Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization", arXiv:1710.09412):
  ``x = lam * x_i + (1 - lam) * x_j``, targets mixed with the same ``lam ~ Beta(a, a)``.
- CutMix (Yun et al. 2019, "CutMix: Regularization Strategy to Train Strong Classifiers with
  Localizable Features", arXiv:1905.04899): a box of image ``j`` is pasted into image ``i``; the
  box has area ``(1 - lam) * H * W`` for ``lam ~ Beta(a, a)``, is clipped at the borders, and the
  targets are mixed by the area really pasted.

As in timm's ``Mixup``, one ``lam`` (and one box) is drawn per batch, each image is paired with
another of the same batch (here through a random permutation), the whole batch is mixed with
probability ``prob``, and with both enabled CutMix is chosen with probability ``switch_prob``.
From epoch ``off_epoch`` on (if > 0) nothing is mixed. Targets are probability vectors, so label
smoothing composes: smooth first, then mix (see :func:`cv_jax.training.losses.soft_cross_entropy`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections as mlc

from cv_jax.config import is_off


def enabled(cfg: mlc.ConfigDict) -> bool:
    return not (is_off(cfg.mixup_alpha) and is_off(cfg.cutmix_alpha))


def cutmix_box(key: jax.Array, height: int, width: int, lam: jax.Array) -> jax.Array:
    """``[H, W]`` bool mask of a box covering about ``1 - lam`` of the image: sides
    ``H*sqrt(1-lam)`` by ``W*sqrt(1-lam)`` around a uniformly drawn centre, clipped at the edges."""
    ratio = jnp.sqrt(1.0 - lam)
    cut_h = jnp.floor(height * ratio).astype(jnp.int32)
    cut_w = jnp.floor(width * ratio).astype(jnp.int32)
    key_y, key_x = jax.random.split(key)
    cy = jax.random.randint(key_y, (), 0, height)
    cx = jax.random.randint(key_x, (), 0, width)
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    inside_rows = (rows >= cy - cut_h // 2) & (rows < cy + cut_h - cut_h // 2)
    inside_cols = (cols >= cx - cut_w // 2) & (cols < cx + cut_w - cut_w // 2)
    return inside_rows & inside_cols


def _beta(key: jax.Array, alpha: float) -> jax.Array:
    return jnp.float32(1.0) if is_off(alpha) else jax.random.beta(key, alpha, alpha)


def mix_images(
    images: jax.Array, key: jax.Array, cfg: mlc.ConfigDict, epoch: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mixed float images ``[B, H, W, C]``, each image's partner index ``[B]`` and the weight
    ``lam`` of the image itself (1 when this batch is not mixed); see the module doc.

    ``epoch`` may be traced (the step's epoch, fractional); ``cfg`` is ``config.mixup``.
    """
    batch, height, width, _ = images.shape
    k_apply, k_switch, k_mix, k_cut, k_box, k_perm = jax.random.split(key, 6)
    partner = jax.random.permutation(k_perm, batch)
    apply = jax.random.bernoulli(k_apply, cfg.prob)
    if not is_off(cfg.off_epoch):
        apply = apply & (epoch < cfg.off_epoch)
    if not (is_off(cfg.mixup_alpha) or is_off(cfg.cutmix_alpha)):
        use_cutmix = jax.random.bernoulli(k_switch, cfg.switch_prob)
    else:
        use_cutmix = jnp.bool_(not is_off(cfg.cutmix_alpha))

    lam_mixup = _beta(k_mix, cfg.mixup_alpha)
    mixed = lam_mixup.astype(images.dtype) * images + (1 - lam_mixup).astype(images.dtype) * (
        images[partner])

    box = cutmix_box(k_box, height, width, _beta(k_cut, cfg.cutmix_alpha))
    lam_cutmix = 1.0 - jnp.mean(box.astype(jnp.float32))
    cut = jnp.where(box[None, :, :, None], images[partner], images)

    lam = jnp.where(apply, jnp.where(use_cutmix, lam_cutmix, lam_mixup), 1.0)
    images = jnp.where(apply, jnp.where(use_cutmix, cut, mixed), images)
    return images, partner, lam


def mix_targets(targets: jax.Array, partner: jax.Array, lam: jax.Array) -> jax.Array:
    """``lam * targets + (1 - lam) * targets[partner]`` for ``[B, K]`` probability targets."""
    return lam * targets + (1 - lam) * targets[partner]
