"""CIFAR ResNets of He et al. 2016, "Deep Residual Learning for Image Recognition"
(arXiv:1512.03385), section 4.2: depth 6n+2, three stages of n basic blocks with 16/32/64
filters on 32x32/16x16/8x8 maps, global average pooling and a dense classifier.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cv_jax.models.layers import PLAIN, Conv, LayerImpl, global_avg_pool, he_normal_fan_out
from cv_jax.models.registry import partial_module, register

STAGE_WIDTHS = (16, 32, 64)



def _conv3x3(layer_impl: LayerImpl, features: int, strides: int, dtype: Any, name: str) -> Conv:
    # Symmetric padding 1 (not 'SAME', which pads (0, 1) at stride 2) so that a stride-2 conv
    # samples the same pixels as the option-A shortcut x[:, ::2, ::2].
    return layer_impl.conv(
        features,
        (3, 3),
        strides=strides,
        padding=1,
        use_bias=False,
        dtype=dtype,
        kernel_init=he_normal_fan_out,
        name=name,
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (ResNet paper, Fig. 2 / section 4.2).

    ``shortcut`` when shapes change: 'A' = parameter-free (stride-2 subsampling, then zero-padded
    extra channels), 'B' = 1x1 projection conv + BN. Identity otherwise (section 3.3).
    """

    features: int
    strides: int = 1
    shortcut: str = "A"
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    dtype: Any = jnp.float32
    layer_impl: LayerImpl = PLAIN

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        norm = functools.partial(
            self.layer_impl.batch_norm, train, dtype=self.dtype, momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
        )
        y = _conv3x3(self.layer_impl, self.features, self.strides, self.dtype, "conv1")(x)
        y = nn.relu(norm(name="bn1")(y))
        y = _conv3x3(self.layer_impl, self.features, 1, self.dtype, "conv2")(y)
        y = norm(name="bn2")(y)

        residual = x
        if self.strides != 1 or x.shape[-1] != self.features:
            if self.shortcut == "A":
                s = self.strides
                residual = x[:, ::s, ::s, :]
                extra = self.features - x.shape[-1]
                residual = jnp.pad(residual, ((0, 0), (0, 0), (0, 0), (0, extra)))
            else:
                residual = self.layer_impl.conv(
                    self.features,
                    (1, 1),
                    strides=self.strides,
                    use_bias=False,
                    dtype=self.dtype,
                    kernel_init=he_normal_fan_out,
                    name="proj_conv",
                )(x)
                residual = norm(name="proj_bn")(residual)
        return nn.relu(y + residual.astype(y.dtype))


class ResNetCifar(nn.Module):
    """CIFAR ResNet of depth 6n+2 (He et al. 2016, section 4.2; Table 6 for sizes).

    Submodules: ``stem_conv``/``stem_bn``, ``stage{1,2,3}_block{i}``, ``head``.
    """

    num_classes: int = 10
    depth: int = 20
    shortcut: str = "A"
    bn_momentum: float = 0.9  # flax convention: decay of the running average
    bn_epsilon: float = 1e-5
    dtype: Any = jnp.float32
    layer_impl: LayerImpl = PLAIN

    def __post_init__(self) -> None:
        if self.depth < 8 or (self.depth - 2) % 6:
            raise ValueError(f"ResNetCifar depth must be 6n+2 with n >= 1, got {self.depth}")
        if self.shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {self.shortcut!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        blocks_per_stage = (self.depth - 2) // 6
        x = _conv3x3(self.layer_impl, STAGE_WIDTHS[0], 1, self.dtype, "stem_conv")(x)
        x = self.layer_impl.batch_norm(
            train, dtype=self.dtype, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
            name="stem_bn",
        )(x)
        x = nn.relu(x)
        for stage, width in enumerate(STAGE_WIDTHS):
            for i in range(blocks_per_stage):
                x = BasicBlock(
                    width,
                    strides=2 if stage > 0 and i == 0 else 1,
                    shortcut=self.shortcut,
                    bn_momentum=self.bn_momentum,
                    bn_epsilon=self.bn_epsilon,
                    dtype=self.dtype,
                    layer_impl=self.layer_impl,
                    name=f"stage{stage + 1}_block{i}",
                )(x, train)
        x = global_avg_pool(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return x.astype(jnp.float32)


# Table 6 of the paper: resnet20/32/44/56/110 have 0.27M/0.46M/0.66M/0.85M/1.7M parameters.
for _depth in (20, 32, 44, 56, 110):
    register(f"resnet{_depth}")(partial_module(ResNetCifar, depth=_depth))
