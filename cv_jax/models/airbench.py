"""Fast CIFAR-10 net in the style of airbench94 (Keller Jordan, "94% on CIFAR-10 in 3.29 Seconds
on a Single GPU", arXiv:2404.00498, section 3).

Layout: a frozen 2x2 patch-whitening conv stem (+GELU), three conv groups
(conv3x3 -> maxpool2 -> BN -> GELU -> conv3x3 -> BN -> GELU), global max pool, bias-free dense
head and a constant logit scale. Convs start as partial identity transforms (dirac init,
section 3.3 of the paper); the whitening kernel is computed from training images by
:func:`init_whitening` (section 3.2), registered as this model's ``data_init``.

Training-side conventions of airbench the optimizer is expected to implement via parameter masks:
``whiten/kernel`` is frozen (its bias trains only for the first few epochs) and BN ``scale`` is
frozen at 1.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cv_jax.models.layers import PLAIN, Conv, LayerImpl, torch_default_init
from cv_jax.models.registry import register

WHITEN_PATCH = 2  # whitening conv kernel size; it has 2 * C * WHITEN_PATCH**2 output channels



def partial_dirac_init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    """``torch_default_init``, then the first min(C_in, C_out) output channels set to identity.

    Mirrors airbench's ``dirac_(w[:C_in])`` for a flax HWIO conv kernel.
    """
    kh, kw, c_in, c_out = shape
    n = np.arange(min(c_in, c_out))
    identity = np.zeros(shape, dtype)
    identity[kh // 2, kw // 2, n, n] = 1.0
    return jnp.where(np.arange(c_out) < len(n), identity, torch_default_init(key, shape, dtype))


class ConvGroup(nn.Module):
    """conv3x3 -> maxpool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU (airbench's ConvGroup)."""

    features: int
    bn_momentum: float
    bn_epsilon: float
    dtype: Any = jnp.float32
    layer_impl: LayerImpl = PLAIN

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        def conv(name: str) -> Conv:
            return self.layer_impl.conv(self.features, (3, 3), padding="SAME", use_bias=False,
                                        dtype=self.dtype, kernel_init=partial_dirac_init,
                                        name=name)

        norm = functools.partial(self.layer_impl.batch_norm, train, dtype=self.dtype,
                                 momentum=self.bn_momentum, epsilon=self.bn_epsilon)

        x = conv("conv1")(x)
        x = self.layer_impl.max_pooling(x, (2, 2), (2, 2), "VALID")
        x = nn.gelu(norm(name="norm1")(x), approximate=False)
        x = conv("conv2")(x)
        return nn.gelu(norm(name="norm2")(x), approximate=False)


def patch_second_moment(images: np.ndarray, patch: int) -> np.ndarray:
    """Uncentred second moment E[p p^T] of all ``patch x patch`` patches of float NHWC images.

    Patches are flattened in (row, col, channel) order, matching a flax HWIO conv kernel.
    """
    windows = np.lib.stride_tricks.sliding_window_view(images, (patch, patch), axis=(1, 2))
    # [N, H', W', C, ph, pw] -> [N * H' * W', ph * pw * C]
    flat = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, patch * patch * images.shape[-1])
    flat = flat.astype(np.float64)
    return flat.T @ flat / flat.shape[0]


def whitening_kernel(moment: np.ndarray, patch: int, channels: int, eps: float) -> np.ndarray:
    """HWIO kernel ``[patch, patch, channels, 2 * dim]`` mapping patches onto the eigenbasis of
    ``moment`` scaled by 1/sqrt(eigenvalue + eps): first +V (largest eigenvalue first), then -V.
    """
    eigenvalues, eigenvectors = np.linalg.eigh(moment)  # ascending
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
    scaled = eigenvectors / np.sqrt(eigenvalues + eps)
    return np.concatenate([scaled, -scaled], axis=1).reshape(patch, patch, channels, -1)


def init_whitening(
    variables: dict,
    images_uint8: np.ndarray,
    normalize: Callable[[np.ndarray], Any],
    *,
    num_images: int = 5000,
    eps: float = 5e-4,
    chunk: int = 1000,
) -> dict:
    """airbench's data-dependent init: set ``params['whiten']['kernel']`` so that the whitening
    conv maps the first ``num_images`` normalised training images' 2x2 patches to (nearly)
    identity second moment (arXiv:2404.00498, section 3.2). Like airbench the moment is
    uncentred (inputs are already normalised to ~zero mean). Returns new variables.
    """
    images = images_uint8[:num_images]
    patch, _, channels, _ = variables["params"]["whiten"]["kernel"].shape
    batches = [images[i : i + chunk] for i in range(0, len(images), chunk)]
    moment = sum(
        len(batch) * patch_second_moment(np.asarray(normalize(batch), np.float32), patch)
        for batch in batches
    ) / len(images)
    kernel = whitening_kernel(moment, patch, channels, eps).astype(np.float32)
    whiten = {**variables["params"]["whiten"], "kernel": jnp.asarray(kernel)}
    return {**variables, "params": {**variables["params"], "whiten": whiten}}


@register("airbench", data_init=init_whitening)
class Airbench(nn.Module):
    """airbench94-style net (arXiv:2404.00498). ``widths`` are the three conv-group widths.

    ``bn_momentum`` is flax's decay of the running average: airbench's 0.6 (its PyTorch
    momentum is 1 - 0.6). ``bn_epsilon`` 1e-12 as in airbench. Submodules: ``whiten``,
    ``group{1,2,3}`` (``conv1``, ``norm1``, ``conv2``, ``norm2``), ``head``.
    """

    num_classes: int = 10
    widths: Sequence[int] = (64, 256, 256)
    logit_scale: float = 1.0 / 9.0
    bn_momentum: float = 0.6
    bn_epsilon: float = 1e-12
    dtype: Any = jnp.float32
    layer_impl: LayerImpl = PLAIN

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = self.layer_impl.conv(
            2 * x.shape[-1] * WHITEN_PATCH**2,
            (WHITEN_PATCH, WHITEN_PATCH),
            padding="VALID",
            use_bias=True,
            dtype=self.dtype,
            kernel_init=torch_default_init,  # replaced by init_whitening
            name="whiten",
        )(x)
        x = nn.gelu(x, approximate=False)
        for i, width in enumerate(self.widths):
            x = ConvGroup(
                width, self.bn_momentum, self.bn_epsilon, dtype=self.dtype,
                layer_impl=self.layer_impl, name=f"group{i + 1}",
            )(x, train)
        x = jnp.max(x, axis=(1, 2))  # airbench's final MaxPool2d(3) over the 3x3 map
        x = nn.Dense(
            self.num_classes,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=torch_default_init,
            name="head",
        )(x)
        return x.astype(jnp.float32) * self.logit_scale
