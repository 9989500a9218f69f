"""VGG of Simonyan & Zisserman 2014, "Very Deep Convolutional Networks for Large-Scale Image
Recognition" (arXiv:1409.1556): five stages of 3x3 convolutions (padding 1), each ending in a 2x2
max pool, then fully connected layers. Configurations A/B/D/E of the paper's Table 1 are
``vgg11``/``vgg13``/``vgg16``/``vgg19``; ``*_bn`` adds BatchNorm after every convolution.

ImageNet form (``vgg16``, ``vgg16_bn``, ...) is torchvision's ``vgg*`` exactly. It differs from
the paper in: the optional BatchNorm (Ioffe & Szegedy 2015, published later); an adaptive 7x7
average pool before the classifier (so inputs other than 224x224 work; the paper instead turns
the FC layers into convolutions at test time); no configuration A-LRN; torchvision's
initialisation (He normal fan_out for convs, N(0, 0.01) for linears) instead of the paper's
(training A first and copying its layers into the deeper nets).

CIFAR form (``vgg16_cifar``, ``vgg16_bn_cifar``, ...) is the usual adaptation (e.g.
kuangliu/pytorch-cifar): the same convolutions turn 32x32 into 1x1x512, followed by one Dense
layer (``fc_widths=()``; set e.g. ``(512,)`` for a hidden layer) and no adaptive pool.

Parameter names follow torchvision's ``nn.Sequential`` indices, so that a state-dict maps one to
one (``name_i`` <-> ``name.i``):

- ``features_{i}``: i is the position in torchvision's ``features`` (conv, [BN], ReLU per conv;
  a MaxPool per stage). vgg16: convs at 0, 2, 5, 7, 10, ...; vgg16_bn: convs at 0, 3, 7, 10, ...
  with their BNs at i + 1. Convs keep their bias also with BN, as in torchvision.
- ``classifier_{3j}``: the j-th linear layer (torchvision: Linear, ReLU, Dropout triplets).
- tensors: conv ``kernel`` = torch ``weight.permute(2, 3, 1, 0)``; dense ``kernel`` =
  ``weight.T``; ``bias`` = ``bias``; BN ``scale``/``bias`` = ``weight``/``bias`` and
  batch_stats ``mean``/``var`` = ``running_mean``/``running_var``.
- The features are flattened in PyTorch's (C, H, W) order, so ``classifier_0`` needs no
  reordering either.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cv_jax.models.layers import (
    PLAIN,
    Dropout,
    LayerImpl,
    adaptive_avg_pool,
    he_normal_fan_out,
)
from cv_jax.models.registry import partial_module, register

# Convolutions per stage in configurations A, B, D, E (paper, Table 1).
CONVS_PER_STAGE = {
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu") and normal_(0, 0.01).
conv_init = he_normal_fan_out
linear_init = nn.initializers.normal(0.01)


def flatten_chw(x: jax.Array) -> jax.Array:
    """``[B, H, W, C] -> [B, C*H*W]`` in the order of ``torch.flatten`` on NCHW tensors."""
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


class VGG(nn.Module):
    """VGG-``depth`` (11, 13, 16 or 19); defaults are torchvision's ImageNet model.

    ``widths``: channels of the five stages. ``fc_widths``: hidden FC layers, each followed by
    ReLU and Dropout(``dropout``). ``pool_size``: adaptive average pool to this size before the
    classifier (0: flatten the feature map as it is).
    """

    num_classes: int = 10
    depth: int = 16
    batch_norm: bool = False
    widths: tuple[int, ...] = (64, 128, 256, 512, 512)
    fc_widths: tuple[int, ...] = (4096, 4096)
    pool_size: int = 7
    dropout: float = 0.5
    dtype: Any = jnp.float32
    layer_impl: LayerImpl = PLAIN

    def __post_init__(self) -> None:
        if self.depth not in CONVS_PER_STAGE:
            raise ValueError(f"VGG depth must be 11, 13, 16 or 19, got {self.depth}")
        if len(self.widths) != 5:
            raise ValueError(f"VGG needs 5 stage widths, got {self.widths}")
        if self.pool_size < 0:
            raise ValueError(f"pool_size must be >= 0 (0: no pooling), got {self.pool_size}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        i = 0  # index in torchvision's `features` Sequential
        for width, num_convs in zip(self.widths, CONVS_PER_STAGE[self.depth], strict=True):
            for _ in range(num_convs):
                x = self.layer_impl.conv(width, (3, 3), padding=1, kernel_init=conv_init,
                                         dtype=self.dtype, name=f"features_{i}")(x)
                if self.batch_norm:
                    x = self.layer_impl.batch_norm(train, dtype=self.dtype,
                                                   name=f"features_{i + 1}")(x)
                    i += 1
                x = nn.relu(x)
                i += 2  # the conv (or BN) and the ReLU
            x = self.layer_impl.max_pool(2, name=f"features_{i}")(x)
            i += 1

        if self.pool_size:
            x = adaptive_avg_pool(x, (self.pool_size, self.pool_size))
        x = flatten_chw(x)
        for j, width in enumerate(self.fc_widths):
            x = nn.Dense(width, kernel_init=linear_init, dtype=self.dtype,
                         name=f"classifier_{3 * j}")(x)
            x = Dropout(self.dropout, deterministic=not train,
                           name=f"classifier_{3 * j + 2}")(nn.relu(x))
        x = nn.Dense(self.num_classes, kernel_init=linear_init, dtype=self.dtype,
                     name=f"classifier_{3 * len(self.fc_widths)}")(x)
        return x.astype(jnp.float32)


class VGGCifar(VGG):
    """VGG for 32x32 inputs: the same convolutions (down to 1x1x512), one Dense classifier."""

    fc_widths: tuple[int, ...] = ()
    pool_size: int = 0


for _depth in CONVS_PER_STAGE:
    for _bn in (False, True):
        _name = f"vgg{_depth}{'_bn' if _bn else ''}"
        register(_name, input_shape=(224, 224, 3))(
            partial_module(VGG, depth=_depth, batch_norm=_bn)
        )
        register(f"{_name}_cifar")(partial_module(VGGCifar, depth=_depth, batch_norm=_bn))
