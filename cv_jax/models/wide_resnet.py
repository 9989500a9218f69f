"""Wide ResNets WRN-d-k for CIFAR: Zagoruyko & Komodakis 2016, "Wide Residual Networks"
(arXiv:1605.07146).

A 3x3 conv with 16 features, three groups of (d-4)/6 pre-activation basic blocks B(3,3) with
16k, 32k and 64k features on 32/16/8 pixel maps, BN-ReLU, global average pooling, ``fc``. Blocks
are BN-ReLU-conv3x3, BN-ReLU-dropout-conv3x3 plus the shortcut: the input itself, or a 1x1 conv
of the pre-activated input where the shape changes
(:class:`~cv_jax.models.preact_resnet.PreActBlock`). ``dropout`` (0 by default; the paper uses
0.3 in some runs) sits after the ReLU as in the paper and the authors' code
(szagoruyko/wide-residual-networks); xternalz/WideResNet-pytorch drops before that BN instead.

Init as in both codes: convs He-normal with fan_out, BN scale 1 / bias 0, ``fc`` bias 0 (its
weights PyTorch's default). Submodules: ``conv1``, ``group{g}_{i}/{bn1, conv1, bn2, conv2,
shortcut_conv}``, ``bn_final``, ``fc`` (xternalz: ``block{g}.layer.{i}.*``, ``convShortcut``,
``bn1``, ``fc``). The architecture is the paper's; global pooling is its 8x8 average pooling
at 32x32 inputs.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cv_jax.models.layers import PLAIN, LayerImpl, global_avg_pool, he_normal_fan_out
from cv_jax.models.preact_resnet import PreActBlock
from cv_jax.models.registry import partial_module, register
from cv_jax.models.resnet import conv, dense


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor``; ``depth`` = 6n+4 (n blocks per group)."""

    num_classes: int = 10
    depth: int = 28
    widen_factor: int = 10
    dropout: float = 0.0
    dtype: Any = jnp.float32
    layer_impl: LayerImpl = PLAIN

    def __post_init__(self) -> None:
        if self.depth < 10 or (self.depth - 4) % 6:
            raise ValueError(
                f"WideResNet field 'depth' must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...), "
                f"got depth={self.depth}"
            )
        if self.widen_factor < 1:
            raise ValueError(
                f"WideResNet field 'widen_factor' must be >= 1, got {self.widen_factor}"
            )
        if not 0 <= self.dropout < 1:
            raise ValueError(f"WideResNet field 'dropout' must be in [0, 1), got {self.dropout}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        blocks_per_group = (self.depth - 4) // 6
        x = conv(16, 3, 1, 1, layer_impl=self.layer_impl, dtype=self.dtype, name="conv1")(x)
        for g, base in enumerate((16, 32, 64)):
            for i in range(blocks_per_group):
                x = PreActBlock(
                    base * self.widen_factor,
                    strides=2 if g > 0 and i == 0 else 1,
                    dropout=self.dropout,
                    kernel_init=he_normal_fan_out,
                    dtype=self.dtype,
                    layer_impl=self.layer_impl,
                    name=f"group{g + 1}_{i}",
                )(x, train)
        x = nn.relu(self.layer_impl.batch_norm(train, dtype=self.dtype, name="bn_final")(x))
        x = global_avg_pool(x)
        x = dense(
            self.num_classes, x.shape[-1], dtype=self.dtype, bias_init=nn.initializers.zeros,
            name="fc",
        )(x)
        return x.astype(jnp.float32)


# The paper's CIFAR tables give WRN-28-10 36.5M parameters and WRN-16-8 11.0M.
register("wrn")(WideResNet)
register("wrn28_10")(partial_module(WideResNet, depth=28, widen_factor=10))
register("wrn16_8")(partial_module(WideResNet, depth=16, widen_factor=8))
