"""ResNet-18/34/50/101/152 of He, Zhang, Ren & Sun 2016, "Deep Residual Learning for Image
Recognition" (arXiv:1512.03385), Table 1, built exactly as torchvision builds them.

Differences from the paper, all as in torchvision:

- Bottleneck blocks stride in their 3x3 conv, not in the first 1x1 conv ("ResNet v1.5").
- Shortcuts are identities, or a 1x1 conv + BN where the shape changes (the paper's option B).
- Init: convs He-normal with fan_out, BN scale 1 / bias 0, the classifier PyTorch's default
  ``nn.Linear`` init; ``zero_init_residual`` starts each block's last BN scale at 0 (Goyal et
  al. 2017, arXiv:1706.02677), so that every block starts as the identity.

``stem="cifar"`` gives the 32x32 form (the ``*_cifar`` names) of kuangliu/pytorch-cifar: a 3x3
stride-1 conv + BN-ReLU instead of the 7x7 stride-2 conv and the max-pool, so the four stages
work on 32/16/8/4 pixel maps (kuangliu pools with ``avg_pool2d(4)``; we pool globally, which is
the same at 32x32). Unlike kuangliu's code, which keeps PyTorch's default init, we init as
torchvision.

Parameter names map one-to-one to torchvision's state dict (for importing its weights):

=====================================  =================================================
flax (params / batch_stats)            torchvision
=====================================  =================================================
``conv1/kernel`` [kh, kw, in, out]     ``conv1.weight`` [out, in, kh, kw]
``bn1/scale``, ``bn1/bias``            ``bn1.weight``, ``bn1.bias``
``bn1/mean``, ``bn1/var``              ``bn1.running_mean``, ``bn1.running_var``
``layer{i}_{j}/conv1`` ... ``/bn3``    ``layer{i}.{j}.conv1`` ... ``.bn3`` (i = 1..4)
``layer{i}_{j}/downsample_conv``       ``layer{i}.{j}.downsample.0``
``layer{i}_{j}/downsample_bn``         ``layer{i}.{j}.downsample.1``
``fc/kernel`` [in, out], ``fc/bias``   ``fc.weight`` [out, in], ``fc.bias``
=====================================  =================================================

(``num_batches_tracked`` has no counterpart.) BN uses PyTorch's epsilon 1e-5 and momentum 0.1
(flax's 0.9); flax updates the running variance with the biased batch variance, PyTorch with
the unbiased one.
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
    Conv,
    LayerImpl,
    global_avg_pool,
    he_normal_fan_out,
    torch_default_init,
    uniform_symmetric,
)
from cv_jax.models.registry import partial_module, register


def conv(
    features: int,
    kernel: int,
    strides: int = 1,
    padding: int = 0,
    *,
    layer_impl: LayerImpl,
    dtype: Any,
    name: str,
    kernel_init=he_normal_fan_out,
) -> Conv:
    """A bias-free ``kernel`` x ``kernel`` conv with symmetric padding, as PyTorch's."""
    return layer_impl.conv(
        features,
        (kernel, kernel),
        strides=strides,
        padding=padding,
        use_bias=False,
        dtype=dtype,
        kernel_init=kernel_init,
        name=name,
    )


def dense(features: int, fan_in: int, *, dtype: Any, name: str, bias_init=None) -> nn.Dense:
    """A classifier initialised like PyTorch's ``nn.Linear``: weights and bias U(+-1/sqrt(fan_in))
    (``bias_init`` replaces the bias's)."""
    if bias_init is None:
        bias_init = uniform_symmetric(1 / math.sqrt(fan_in))
    return nn.Dense(
        features, dtype=dtype, kernel_init=torch_default_init, bias_init=bias_init, name=name
    )


def _downsample(x: jax.Array, features: int, strides: int, train: bool, dtype: Any,
                layer_impl: LayerImpl) -> jax.Array:
    """The shortcut: ``x`` itself, or a 1x1 conv + BN where the shape changes."""
    if strides == 1 and x.shape[-1] == features:
        return x
    x = conv(features, 1, strides, layer_impl=layer_impl, dtype=dtype, name="downsample_conv")(x)
    return layer_impl.batch_norm(train, dtype=dtype, name="downsample_bn")(x)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU, conv3x3-BN, add the shortcut, ReLU (ResNet-18/34)."""

    features: int
    strides: int = 1
    zero_init_residual: bool = False
    dtype: Any = jnp.float32
    layer_impl: LayerImpl = PLAIN

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        norm = functools.partial(self.layer_impl.batch_norm, train, dtype=self.dtype)
        conv_ = functools.partial(conv, layer_impl=self.layer_impl, dtype=self.dtype)
        last_scale = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        y = conv_(self.features, 3, self.strides, 1, name="conv1")(x)
        y = nn.relu(norm(name="bn1")(y))
        y = conv_(self.features, 3, 1, 1, name="conv2")(y)
        y = norm(name="bn2", scale_init=last_scale)(y)
        shortcut = _downsample(x, self.features, self.strides, train, self.dtype,
                               self.layer_impl)
        return nn.relu(y + shortcut.astype(y.dtype))


class Bottleneck(nn.Module):
    """conv1x1-BN-ReLU, conv3x3 (strided)-BN-ReLU, conv1x1 to 4x features-BN, add, ReLU."""

    features: int
    strides: int = 1
    zero_init_residual: bool = False
    dtype: Any = jnp.float32
    layer_impl: LayerImpl = PLAIN

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        norm = functools.partial(self.layer_impl.batch_norm, train, dtype=self.dtype)
        conv_ = functools.partial(conv, layer_impl=self.layer_impl, dtype=self.dtype)
        last_scale = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        y = conv_(self.features, 1, name="conv1")(x)
        y = nn.relu(norm(name="bn1")(y))
        y = conv_(self.features, 3, self.strides, 1, name="conv2")(y)
        y = nn.relu(norm(name="bn2")(y))
        y = conv_(4 * self.features, 1, name="conv3")(y)
        y = norm(name="bn3", scale_init=last_scale)(y)
        shortcut = _downsample(x, 4 * self.features, self.strides, train, self.dtype,
                               self.layer_impl)
        return nn.relu(y + shortcut.astype(y.dtype))


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """ResNet: stem, stages of ``stage_sizes`` blocks with ``width * 2**stage`` features (stages
    after the first start with stride 2), global average pooling, ``fc``.
    """

    num_classes: int = 10
    block: str = "basic"  # "basic" (ResNet-18/34) or "bottleneck" (ResNet-50/101/152)
    stage_sizes: tuple[int, ...] = (2, 2, 2, 2)
    width: int = 64  # features of the stem and the first stage
    stem: str = "imagenet"  # "imagenet": 7x7/2 conv + 3x3/2 max-pool; "cifar": 3x3/1 conv
    zero_init_residual: bool = False
    dtype: Any = jnp.float32
    layer_impl: LayerImpl = PLAIN

    def __post_init__(self) -> None:
        if self.block not in BLOCKS:
            raise ValueError(f"ResNet block must be 'basic' or 'bottleneck', got {self.block!r}")
        if self.stem not in ("imagenet", "cifar"):
            raise ValueError(f"ResNet stem must be 'imagenet' or 'cifar', got {self.stem!r}")
        if not self.stage_sizes or min(self.stage_sizes) < 1 or self.width < 1:
            raise ValueError(
                f"ResNet stage_sizes must be positive block counts and width positive, got "
                f"stage_sizes={self.stage_sizes!r}, width={self.width}"
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv_ = functools.partial(conv, layer_impl=self.layer_impl, dtype=self.dtype)
        if self.stem == "imagenet":
            x = conv_(self.width, 7, 2, 3, name="conv1")(x)
        else:
            x = conv_(self.width, 3, 1, 1, name="conv1")(x)
        x = nn.relu(self.layer_impl.batch_norm(train, dtype=self.dtype, name="bn1")(x))
        if self.stem == "imagenet":
            x = self.layer_impl.max_pool(3, 2, padding=1, name="maxpool")(x)
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                x = BLOCKS[self.block](
                    self.width * 2**i,
                    strides=2 if i > 0 and j == 0 else 1,
                    zero_init_residual=self.zero_init_residual,
                    dtype=self.dtype,
                    layer_impl=self.layer_impl,
                    name=f"layer{i + 1}_{j}",
                )(x, train)
        x = global_avg_pool(x)
        x = dense(self.num_classes, x.shape[-1], dtype=self.dtype, name="fc")(x)
        return x.astype(jnp.float32)


# Table 1 of the paper.
DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
for _depth, (_block, _sizes) in DEPTHS.items():
    register(f"resnet{_depth}", input_shape=(224, 224, 3))(
        partial_module(ResNet, block=_block, stage_sizes=_sizes, stem="imagenet")
    )
    register(f"resnet{_depth}_cifar")(
        partial_module(ResNet, block=_block, stage_sizes=_sizes, stem="cifar")
    )
# Every field free (block, stage_sizes, stem, width): e.g. a ResNet-10 for quick experiments with
# --config.model.name=resnet --config.model.stage_sizes=(1,1,1,1) --config.model.stem=cifar.
register("resnet", input_shape=(224, 224, 3))(ResNet)
