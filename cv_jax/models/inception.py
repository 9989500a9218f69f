"""Inception-v3 of Szegedy et al. 2016, "Rethinking the Inception Architecture for Computer
Vision" (arXiv:1512.00567), built like torchvision's ``inception_v3`` (299x299 inputs): a stem of
plain convolutions, three 35x35 modules (``Mixed_5b``-``5d``, 5x5 convolutions as two 3x3), a
grid reduction (``Mixed_6a``), four 17x17 modules with factorised 7x7 convolutions (1x7 then
7x1; ``Mixed_6b``-``6e``), a second reduction (``Mixed_7a``), two 8x8 modules with expanded
1x3/3x1 branches (``Mixed_7b``, ``7c``), global average pool, dropout 0.5, linear.

Every convolution is torchvision's ``BasicConv2d``: conv (no bias) + BatchNorm (eps 1e-3) +
ReLU (:class:`cv_jax.models.googlenet.ConvBN`). Names follow torchvision's module names, so that
``Mixed_6b/branch7x7_2/conv/kernel`` <-> ``Mixed_6b.branch7x7_2.conv.weight`` and
``AuxLogits/fc`` <-> ``AuxLogits.fc``.

The auxiliary classifier (``aux_logits=True``; off by default) sits on ``Mixed_6e``: 5x5/3
average pool, 1x1 conv 128, 5x5 conv 768, global average pool, linear. As GoogLeNet's heads do,
it is built at init and runs in train mode only, where its float32 logits are sown as
``aux_logits/aux`` (a 1-tuple); the train step adds ``config.loss.aux_weight`` x its loss
(torchvision's reference recipe uses 0.4: ``--config.loss.aux_weight=0.4``). It needs
``Mixed_6e`` to be at least 17x17, i.e. inputs of 299x299 and up; without it the model takes
inputs from 75x75.

Input normalisation: the model takes images normalised by ``config.dataset.mean``/``std``, as
every cv_jax model does, and has no ``transform_input``. torchvision's pretrained weights (ported
from Google's) expect pixels scaled to [-1, 1]; torchvision's ``transform_input=True`` turns
ImageNet-normalised inputs into that, which is the same as normalising with mean = std = 0.5
(``--config.dataset.mean='(0.5, 0.5, 0.5)' --config.dataset.std='(0.5, 0.5, 0.5)'``).

Differences from torchvision: initialisation is He normal (fan_out) for convolutions and
N(0, 0.01) for the linear layers (torchvision draws every weight from N(0, 0.1), N(0, 0.01) and
N(0, 0.001) for the auxiliary classifier's conv and linear layer).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cv_jax.models.googlenet import ConvBN
from cv_jax.models.layers import (
    PLAIN,
    AvgPool,
    Dropout,
    LayerImpl,
    global_avg_pool,
    initializer,
)
from cv_jax.models.registry import register

linear_init = nn.initializers.normal(0.01)
ROW_1x7 = ((0, 0), (3, 3))  # padding of a 1x7 conv (height 1, width 7)
COL_7x1 = ((3, 3), (0, 0))
ROW_1x3 = ((0, 0), (1, 1))
COL_3x1 = ((1, 1), (0, 0))


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
    return AvgPool(3, strides=1, padding=1, name="pool")(x)


class InceptionA(nn.Module):
    """35x35: 1x1 | 1x1, 5x5 | 1x1, 3x3, 3x3 | 3x3 avg pool, 1x1 (``pool_features``)."""

    pool_features: int
    conv: Callable[..., ConvBN] = ConvBN

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = self.conv
        branch1x1 = conv(64, 1, name="branch1x1")(x, train)
        branch5x5 = conv(48, 1, name="branch5x5_1")(x, train)
        branch5x5 = conv(64, 5, padding=2, name="branch5x5_2")(branch5x5, train)
        branch3x3dbl = conv(64, 1, name="branch3x3dbl_1")(x, train)
        branch3x3dbl = conv(96, 3, padding=1, name="branch3x3dbl_2")(branch3x3dbl, train)
        branch3x3dbl = conv(96, 3, padding=1, name="branch3x3dbl_3")(branch3x3dbl, train)
        branch_pool = conv(self.pool_features, 1, name="branch_pool")(_avg_pool_3x3(x), train)
        return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(nn.Module):
    """35x35 -> 17x17: 3x3/2 | 1x1, 3x3, 3x3/2 | 3x3/2 max pool."""

    conv: Callable[..., ConvBN] = ConvBN
    layer_impl: LayerImpl = PLAIN

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = self.conv
        branch3x3 = conv(384, 3, strides=2, name="branch3x3")(x, train)
        branch3x3dbl = conv(64, 1, name="branch3x3dbl_1")(x, train)
        branch3x3dbl = conv(96, 3, padding=1, name="branch3x3dbl_2")(branch3x3dbl, train)
        branch3x3dbl = conv(96, 3, strides=2, name="branch3x3dbl_3")(branch3x3dbl, train)
        branch_pool = self.layer_impl.max_pool(3, strides=2, name="pool")(x)
        return jnp.concatenate([branch3x3, branch3x3dbl, branch_pool], axis=-1)


class InceptionC(nn.Module):
    """17x17 with factorised 7x7 convolutions: 1x1 | 1x1, 1x7, 7x1 | 1x1, 7x1, 1x7, 7x1, 1x7 |
    3x3 avg pool, 1x1; ``channels_7x7`` inside the factorised branches."""

    channels_7x7: int
    conv: Callable[..., ConvBN] = ConvBN

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv, c7 = self.conv, self.channels_7x7
        branch1x1 = conv(192, 1, name="branch1x1")(x, train)
        branch7x7 = conv(c7, 1, name="branch7x7_1")(x, train)
        branch7x7 = conv(c7, (1, 7), padding=ROW_1x7, name="branch7x7_2")(branch7x7, train)
        branch7x7 = conv(192, (7, 1), padding=COL_7x1, name="branch7x7_3")(branch7x7, train)
        dbl = conv(c7, 1, name="branch7x7dbl_1")(x, train)
        dbl = conv(c7, (7, 1), padding=COL_7x1, name="branch7x7dbl_2")(dbl, train)
        dbl = conv(c7, (1, 7), padding=ROW_1x7, name="branch7x7dbl_3")(dbl, train)
        dbl = conv(c7, (7, 1), padding=COL_7x1, name="branch7x7dbl_4")(dbl, train)
        dbl = conv(192, (1, 7), padding=ROW_1x7, name="branch7x7dbl_5")(dbl, train)
        branch_pool = conv(192, 1, name="branch_pool")(_avg_pool_3x3(x), train)
        return jnp.concatenate([branch1x1, branch7x7, dbl, branch_pool], axis=-1)


class InceptionD(nn.Module):
    """17x17 -> 8x8: 1x1, 3x3/2 | 1x1, 1x7, 7x1, 3x3/2 | 3x3/2 max pool."""

    conv: Callable[..., ConvBN] = ConvBN
    layer_impl: LayerImpl = PLAIN

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = self.conv
        branch3x3 = conv(192, 1, name="branch3x3_1")(x, train)
        branch3x3 = conv(320, 3, strides=2, name="branch3x3_2")(branch3x3, train)
        branch7x7x3 = conv(192, 1, name="branch7x7x3_1")(x, train)
        branch7x7x3 = conv(192, (1, 7), padding=ROW_1x7, name="branch7x7x3_2")(branch7x7x3, train)
        branch7x7x3 = conv(192, (7, 1), padding=COL_7x1, name="branch7x7x3_3")(branch7x7x3, train)
        branch7x7x3 = conv(192, 3, strides=2, name="branch7x7x3_4")(branch7x7x3, train)
        branch_pool = self.layer_impl.max_pool(3, strides=2, name="pool")(x)
        return jnp.concatenate([branch3x3, branch7x7x3, branch_pool], axis=-1)


class InceptionE(nn.Module):
    """8x8 with expanded branches: 1x1 | 1x1, (1x3 and 3x1) | 1x1, 3x3, (1x3 and 3x1) |
    3x3 avg pool, 1x1."""

    conv: Callable[..., ConvBN] = ConvBN

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = self.conv
        branch1x1 = conv(320, 1, name="branch1x1")(x, train)
        branch3x3 = conv(384, 1, name="branch3x3_1")(x, train)
        branch3x3 = jnp.concatenate([
            conv(384, (1, 3), padding=ROW_1x3, name="branch3x3_2a")(branch3x3, train),
            conv(384, (3, 1), padding=COL_3x1, name="branch3x3_2b")(branch3x3, train),
        ], axis=-1)
        dbl = conv(448, 1, name="branch3x3dbl_1")(x, train)
        dbl = conv(384, 3, padding=1, name="branch3x3dbl_2")(dbl, train)
        dbl = jnp.concatenate([
            conv(384, (1, 3), padding=ROW_1x3, name="branch3x3dbl_3a")(dbl, train),
            conv(384, (3, 1), padding=COL_3x1, name="branch3x3dbl_3b")(dbl, train),
        ], axis=-1)
        branch_pool = conv(192, 1, name="branch_pool")(_avg_pool_3x3(x), train)
        return jnp.concatenate([branch1x1, branch3x3, dbl, branch_pool], axis=-1)


class InceptionAux(nn.Module):
    """The auxiliary classifier on ``Mixed_6e``: 5x5/3 avg pool, 1x1 conv 128, 5x5 conv 768,
    global average pool, linear."""

    num_classes: int
    conv: Callable[..., ConvBN] = ConvBN
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = AvgPool(5, strides=3, name="pool")(x)  # 17x17 -> 5x5 at 299x299 input
        x = self.conv(128, 1, name="conv0")(x, train)
        x = self.conv(768, 5, name="conv1")(x, train)
        x = nn.Dense(self.num_classes, kernel_init=linear_init, dtype=self.dtype,
                     name="fc")(global_avg_pool(x))
        return x.astype(jnp.float32)


class InceptionV3(nn.Module):
    """Inception-v3 (299x299 inputs, from 75x75 without the auxiliary classifier)."""

    num_classes: int = 1000
    aux_logits: bool = False
    dropout: float = 0.5
    conv_init: str = "he_normal:fan_out"
    dtype: Any = jnp.float32
    layer_impl: LayerImpl = PLAIN

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = functools.partial(ConvBN, kernel_init=initializer(self.conv_init),
                                 dtype=self.dtype, layer_impl=self.layer_impl)
        max_pool = self.layer_impl.max_pool
        x = conv(32, 3, strides=2, name="Conv2d_1a_3x3")(x, train)
        x = conv(32, 3, name="Conv2d_2a_3x3")(x, train)
        x = conv(64, 3, padding=1, name="Conv2d_2b_3x3")(x, train)
        x = max_pool(3, strides=2, name="maxpool1")(x)
        x = conv(80, 1, name="Conv2d_3b_1x1")(x, train)
        x = conv(192, 3, name="Conv2d_4a_3x3")(x, train)
        x = max_pool(3, strides=2, name="maxpool2")(x)
        x = InceptionA(32, conv, name="Mixed_5b")(x, train)
        x = InceptionA(64, conv, name="Mixed_5c")(x, train)
        x = InceptionA(64, conv, name="Mixed_5d")(x, train)
        x = InceptionB(conv, self.layer_impl, name="Mixed_6a")(x, train)
        x = InceptionC(128, conv, name="Mixed_6b")(x, train)
        x = InceptionC(160, conv, name="Mixed_6c")(x, train)
        x = InceptionC(160, conv, name="Mixed_6d")(x, train)
        x = InceptionC(192, conv, name="Mixed_6e")(x, train)
        # Built at init (so its parameters exist) and run in train mode only.
        if self.aux_logits and (train or self.is_initializing()):
            aux = InceptionAux(self.num_classes, conv, self.dtype, name="AuxLogits")(x, train)
            if train:
                self.sow("aux_logits", "aux", aux)
        x = InceptionD(conv, self.layer_impl, name="Mixed_7a")(x, train)
        x = InceptionE(conv, name="Mixed_7b")(x, train)
        x = InceptionE(conv, name="Mixed_7c")(x, train)
        x = Dropout(self.dropout, deterministic=not train, name="dropout")(global_avg_pool(x))
        x = nn.Dense(self.num_classes, kernel_init=linear_init, dtype=self.dtype, name="fc")(x)
        return x.astype(jnp.float32)


register("inception_v3", input_shape=(299, 299, 3))(InceptionV3)
