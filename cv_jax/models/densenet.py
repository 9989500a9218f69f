"""DenseNet of Huang et al. 2017, "Densely Connected Convolutional Networks" (arXiv:1608.06993):
inside a dense block every layer gets the concatenation of all earlier feature maps and adds
``growth_rate`` (k) new channels; transition layers between blocks halve the resolution.

This is DenseNet-BC: each layer is BN-ReLU-1x1 conv (``bn_size`` * k channels, the "B"ottleneck)
then BN-ReLU-3x3 conv (k); each transition is BN-ReLU-1x1 conv to ``compression`` times the
channels (the "C") then a 2x2 average pool; the end is BN-ReLU, global average pool, linear.

- ``densenet121``/``169``/``201`` (224x224) are torchvision's: 7x7/2 conv + BN-ReLU + 3x3/2 max
  pool stem, four blocks, k = 32 (paper Table 1).
- ``densenet_bc_100_12`` is the paper's CIFAR DenseNet-BC (L=100, k=12; Table 2): a 3x3 conv with
  2k channels (no BN, no pool), three blocks of (100 - 4) / 6 = 16 layers.
- ``densenet_cifar`` (kuangliu/pytorch-cifar's) has the CIFAR stem, k = 12 and blocks
  (6, 12, 24, 16); unlike the others it keeps growth_rate, block_config and num_init_features
  as config fields, for experiments with other sizes.

Differences from the paper: ``drop_rate`` (dropout after each layer, as torchvision) defaults to
0 (the paper uses 0.2 on CIFAR without data augmentation); initialisation is torchvision's (He
normal fan_in convs, PyTorch's default uniform for the linear layer, zero biases).

Names follow torchvision with ``features.`` dropped: ``conv0``, ``norm0``,
``denseblock{b}/denselayer{l}/{norm1,conv1,norm2,conv2}``, ``transition{b}/{norm,conv}``,
``norm5`` (torchvision's name whatever the number of blocks) and ``classifier``; e.g.
``denseblock1/denselayer1/conv1/kernel`` <-> ``features.denseblock1.denselayer1.conv1.weight``
(permuted (2, 3, 1, 0)), ``classifier/kernel`` <-> ``classifier.weight.T``, BN ``scale``/``bias``
<-> ``weight``/``bias``, batch_stats ``mean``/``var`` <-> ``running_mean``/``running_var``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cv_jax.models.layers import (
    PLAIN,
    AvgPool,
    Dropout,
    LayerImpl,
    global_avg_pool,
    torch_default_init,
)
from cv_jax.models.registry import partial_module, register

# torchvision: kaiming_normal_ (fan_in, ReLU gain) for convs; nn.Linear's default U(+-1/sqrt(n)).
conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
linear_init = torch_default_init


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv-BN-ReLU-3x3 conv; returns the input with the k new channels appended."""

    growth_rate: int
    bn_size: int
    drop_rate: float
    dtype: Any = jnp.float32
    layer_impl: LayerImpl = PLAIN

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        norm = functools.partial(self.layer_impl.batch_norm, train, dtype=self.dtype)
        conv = functools.partial(self.layer_impl.conv, use_bias=False, kernel_init=conv_init,
                                 dtype=self.dtype)
        y = nn.relu(norm(name="norm1")(x))
        y = conv(self.bn_size * self.growth_rate, (1, 1), name="conv1")(y)
        y = nn.relu(norm(name="norm2")(y))
        y = conv(self.growth_rate, (3, 3), padding=1, name="conv2")(y)
        if self.drop_rate:
            y = Dropout(self.drop_rate, deterministic=not train, name="dropout")(y)
        return jnp.concatenate([x, y.astype(x.dtype)], axis=-1)


class DenseBlock(nn.Module):
    num_layers: int
    growth_rate: int
    bn_size: int
    drop_rate: float
    dtype: Any = jnp.float32
    layer_impl: LayerImpl = PLAIN

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for i in range(self.num_layers):
            x = DenseLayer(self.growth_rate, self.bn_size, self.drop_rate, self.dtype,
                           self.layer_impl, name=f"denselayer{i + 1}")(x, train)
        return x


class Transition(nn.Module):
    """BN-ReLU-1x1 conv to ``features`` channels, 2x2 average pool."""

    features: int
    dtype: Any = jnp.float32
    layer_impl: LayerImpl = PLAIN

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nn.relu(self.layer_impl.batch_norm(train, dtype=self.dtype, name="norm")(x))
        x = self.layer_impl.conv(self.features, (1, 1), use_bias=False, kernel_init=conv_init,
                                 dtype=self.dtype, name="conv")(x)
        return AvgPool(2, name="pool")(x)


class DenseNet(nn.Module):
    """DenseNet-BC; ``stem`` 'imagenet' (7x7/2 conv, BN-ReLU, max pool) or 'cifar' (3x3 conv)."""

    num_classes: int = 10
    growth_rate: int = 12
    block_config: tuple[int, ...] = (6, 12, 24, 16)
    num_init_features: int = 24
    bn_size: int = 4
    compression: float = 0.5
    drop_rate: float = 0.0
    stem: str = "cifar"
    dtype: Any = jnp.float32
    layer_impl: LayerImpl = PLAIN

    def __post_init__(self) -> None:
        if self.stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {self.stem!r}")
        if not 0 < self.compression <= 1:
            raise ValueError(f"compression must be in (0, 1], got {self.compression}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        impl = self.layer_impl
        conv = functools.partial(impl.conv, use_bias=False, kernel_init=conv_init,
                                 dtype=self.dtype)
        if self.stem == "imagenet":
            x = conv(self.num_init_features, (7, 7), strides=2, padding=3, name="conv0")(x)
            x = nn.relu(impl.batch_norm(train, dtype=self.dtype, name="norm0")(x))
            x = impl.max_pool(3, strides=2, padding=1, name="pool0")(x)
        else:
            x = conv(self.num_init_features, (3, 3), padding=1, name="conv0")(x)

        for b, num_layers in enumerate(self.block_config, start=1):
            x = DenseBlock(num_layers, self.growth_rate, self.bn_size, self.drop_rate,
                           self.dtype, impl, name=f"denseblock{b}")(x, train)
            if b < len(self.block_config):
                features = math.floor(self.compression * x.shape[-1])
                x = Transition(features, self.dtype, impl, name=f"transition{b}")(x, train)

        x = nn.relu(impl.batch_norm(train, dtype=self.dtype, name="norm5")(x))
        x = global_avg_pool(x)
        x = nn.Dense(self.num_classes, kernel_init=linear_init, dtype=self.dtype,
                     name="classifier")(x)
        return x.astype(jnp.float32)


_IMAGENET = {"growth_rate": 32, "num_init_features": 64, "stem": "imagenet"}
for _depth, _blocks in {121: (6, 12, 24, 16), 169: (6, 12, 32, 32), 201: (6, 12, 48, 32)}.items():
    register(f"densenet{_depth}", input_shape=(224, 224, 3))(
        partial_module(DenseNet, block_config=_blocks, **_IMAGENET)
    )
register("densenet_bc_100_12")(
    partial_module(DenseNet, growth_rate=12, block_config=(16, 16, 16), num_init_features=24,
                   stem="cifar")
)
register("densenet_cifar")(DenseNet)
