"""GoogLeNet (Inception v1) of Szegedy et al. 2014, "Going Deeper with Convolutions"
(arXiv:1409.4842): nine Inception modules, each running a 1x1, a 3x3 and a 5x5 convolution and a
3x3 max pool side by side (the bigger convolutions and the pool behind 1x1 "reduce"/"proj"
convolutions) and concatenating the results; channel numbers from the paper's Table 1.

``googlenet`` (224x224): 7x7/2 conv 64, max pool, 1x1 conv 64, 3x3 conv 192, max pool, 3a, 3b,
max pool, 4a-4e, max pool, 5a, 5b, global average pool, dropout 0.4, linear.
``googlenet_cifar`` (32x32, as kuangliu/pytorch-cifar): a 3x3 conv 192 replaces everything before
3a, and the max pools after 3b and 4e take 32x32 to 16x16 to 8x8.

Differences from the paper:

- ``batch_norm=True`` (default, like torchvision's ``BasicConv2d``): every conv is conv (no bias)
  + BatchNorm (eps 1e-3, torchvision's) + ReLU; the paper (before BatchNorm) has conv + bias +
  ReLU, which ``batch_norm=False`` gives. The two local response normalisations are left out.
- Max pools use PyTorch's ``ceil_mode`` (torchvision does): padding (0, 1) at stride 2.
- Initialisation: He normal (fan_out) convs, N(0, 0.01) linears; torchvision uses N(0, 0.01)
  everywhere (``conv_init="normal:0.01"``), which only trains with BatchNorm.
- ``branch3_kernel`` is the "5x5" kernel; torchvision uses 3x3 there (pytorch/vision#906), and
  ``branch3_kernel=3`` reproduces its parameter count. torchvision also uses a 2x2 (not 3x3) max
  pool after 4e (same output size) and dropout 0.2.

Auxiliary heads (``aux_heads=True``; paper section 5: 5x5/3 average pool, 1x1 conv 128, FC 1024 +
ReLU, dropout 0.7, linear) sit on the outputs of 4a and 4d. In train mode their float32 logits
are sown as ``aux_logits/aux1`` and ``aux_logits/aux2`` (apply with
``mutable=["batch_stats", "aux_logits"]``; each is a 1-tuple; the paper adds 0.3 x their
losses); ``__call__`` always returns the main logits. Initialise with ``train=False``: the
heads' parameters are still created. They need 4a's map to be at least 5x5 (for ``googlenet``,
inputs of 79x79 and up; 32x32 works for ``googlenet_cifar``).

Names follow torchvision (``inception4a/branch2_1/conv/kernel`` <-> ``inception4a.branch2.1.conv
.weight``; ``conv1``, ``fc``), except ``aux_head1``/``aux_head2`` (torchvision's ``aux1``/``aux2``;
those names are taken by the sown logits); ``branch4_0`` is the pool of the fourth branch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cv_jax.models.layers import (
    PLAIN,
    AvgPool,
    Dropout,
    LayerImpl,
    Padding,
    global_avg_pool,
    initializer,
)
from cv_jax.models.registry import partial_module, register

# Table 1: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj.
INCEPTION = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}
CEIL_MODE = ((0, 1), (0, 1))  # padding that makes a stride-2 pool round its output size up
linear_init = nn.initializers.normal(0.01)


class ConvBN(nn.Module):
    """Conv + BatchNorm + ReLU (torchvision's ``BasicConv2d``); conv + bias + ReLU without BN."""

    features: int
    kernel: int | tuple[int, int]  # (height, width) when not square
    strides: int = 1
    padding: Padding = 0  # PyTorch's padding (p or ((top, bottom), (left, right)))
    batch_norm: bool = True
    kernel_init: Callable = nn.initializers.lecun_normal()
    dtype: Any = jnp.float32
    layer_impl: LayerImpl = PLAIN

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        kernel = (self.kernel, self.kernel) if isinstance(self.kernel, int) else self.kernel
        x = self.layer_impl.conv(self.features, kernel, strides=self.strides,
                                 padding=self.padding, use_bias=not self.batch_norm,
                                 kernel_init=self.kernel_init, dtype=self.dtype, name="conv")(x)
        if self.batch_norm:
            x = self.layer_impl.batch_norm(train, epsilon=1e-3, dtype=self.dtype, name="bn")(x)
        return nn.relu(x)


class Inception(nn.Module):
    """Four branches concatenated: 1x1 | 1x1, 3x3 | 1x1, 5x5 | 3x3 max pool, 1x1 (Figure 2b)."""

    channels: tuple[int, ...]  # one row of INCEPTION
    branch3_kernel: int = 5
    conv: Callable[..., ConvBN] = ConvBN
    layer_impl: LayerImpl = PLAIN

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c1, r3, c3, r5, c5, proj = self.channels
        k = self.branch3_kernel
        branch1 = self.conv(c1, 1, name="branch1")(x, train)
        branch2 = self.conv(r3, 1, name="branch2_0")(x, train)
        branch2 = self.conv(c3, 3, padding=1, name="branch2_1")(branch2, train)
        branch3 = self.conv(r5, 1, name="branch3_0")(x, train)
        branch3 = self.conv(c5, k, padding=k // 2, name="branch3_1")(branch3, train)
        branch4 = self.layer_impl.max_pool(3, strides=1, padding=1, name="branch4_0")(x)
        branch4 = self.conv(proj, 1, name="branch4_1")(branch4, train)
        return jnp.concatenate([branch1, branch2, branch3, branch4], axis=-1)


class AuxHead(nn.Module):
    """Auxiliary classifier (section 5): 5x5/3 avg pool, 1x1 conv 128, FC 1024, dropout 0.7."""

    num_classes: int
    conv: Callable[..., ConvBN] = ConvBN
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = AvgPool(5, strides=3, name="pool")(x)  # 14x14 -> 4x4 at 224x224 input
        x = self.conv(128, 1, name="conv")(x, train)
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # PyTorch's (C, H, W) order
        x = nn.Dense(1024, kernel_init=linear_init, dtype=self.dtype, name="fc1")(x)
        x = Dropout(0.7, deterministic=not train, name="dropout")(nn.relu(x))
        x = nn.Dense(self.num_classes, kernel_init=linear_init, dtype=self.dtype, name="fc2")(x)
        return x.astype(jnp.float32)


class GoogLeNet(nn.Module):
    """GoogLeNet; ``stem`` 'imagenet' (224x224 inputs) or 'cifar' (32x32)."""

    num_classes: int = 10
    stem: str = "imagenet"
    batch_norm: bool = True
    branch3_kernel: int = 5
    aux_heads: bool = False
    dropout: float = 0.4
    conv_init: str = "he_normal:fan_out"
    dtype: Any = jnp.float32
    layer_impl: LayerImpl = PLAIN

    def __post_init__(self) -> None:
        if self.stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {self.stem!r}")
        if self.branch3_kernel % 2 != 1:
            raise ValueError(f"branch3_kernel must be odd, got {self.branch3_kernel}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = functools.partial(ConvBN, batch_norm=self.batch_norm,
                                 kernel_init=initializer(self.conv_init), dtype=self.dtype,
                                 layer_impl=self.layer_impl)
        max_pool = self.layer_impl.max_pool

        def inception(name: str) -> Inception:
            return Inception(INCEPTION[name], self.branch3_kernel, conv, self.layer_impl,
                             name=f"inception{name}")

        def aux_head(x: jax.Array, i: int) -> None:
            # Built at init (so its parameters exist) and run in train mode only.
            if self.aux_heads and (train or self.is_initializing()):
                logits = AuxHead(self.num_classes, conv, self.dtype, name=f"aux_head{i}")(x, train)
                if train:
                    self.sow("aux_logits", f"aux{i}", logits)

        if self.stem == "imagenet":
            x = conv(64, 7, strides=2, padding=3, name="conv1")(x, train)
            x = max_pool(3, strides=2, padding=CEIL_MODE, name="maxpool1")(x)
            x = conv(64, 1, name="conv2")(x, train)
            x = conv(192, 3, padding=1, name="conv3")(x, train)
            x = max_pool(3, strides=2, padding=CEIL_MODE, name="maxpool2")(x)
        else:
            x = conv(192, 3, padding=1, name="stem")(x, train)
        x = inception("3a")(x, train)
        x = inception("3b")(x, train)
        x = max_pool(3, strides=2, padding=CEIL_MODE, name="maxpool3")(x)
        x = inception("4a")(x, train)
        aux_head(x, 1)
        for name in ("4b", "4c", "4d"):
            x = inception(name)(x, train)
        aux_head(x, 2)
        x = inception("4e")(x, train)
        x = max_pool(3, strides=2, padding=CEIL_MODE, name="maxpool4")(x)
        x = inception("5a")(x, train)
        x = inception("5b")(x, train)
        x = Dropout(self.dropout, deterministic=not train, name="dropout")(global_avg_pool(x))
        x = nn.Dense(self.num_classes, kernel_init=linear_init, dtype=self.dtype, name="fc")(x)
        return x.astype(jnp.float32)


register("googlenet", input_shape=(224, 224, 3))(partial_module(GoogLeNet, stem="imagenet"))
register("googlenet_cifar")(partial_module(GoogLeNet, stem="cifar"))
