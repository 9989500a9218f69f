"""LeNet-5 of LeCun, Bottou, Bengio & Haffner 1998, "Gradient-based learning applied to document
recognition", Proceedings of the IEEE 86(11), section II.B.

For a 32x32 input: C1 6@5x5 (-> 28x28) -> S2 2x2 pool (14x14) -> C3 16@5x5 (10x10) -> S4 (5x5)
-> C5 120@5x5 (1x1) -> F6 84 -> output. Unpadded convs; the activation follows every conv and F6.

Differences from the paper:

- C3 sees all 6 maps of S2; the paper connects each C3 map to a subset of them (Table I), which
  saves parameters (1,516 instead of 2,416 in C3) and breaks symmetry.
- S2/S4 are plain average (or max, field ``pool``) pooling; the paper's subsampling units sum
  their 2x2 window, multiply by a trainable coefficient, add a trainable bias and squash.
- The output is a dense layer giving logits for a softmax loss, not the paper's Euclidean RBF
  units with fixed +-1 codes.
- ``activation`` defaults to plain tanh; the paper uses 1.7159 tanh(2a/3) (Appendix A).
  ``kernel_init`` defaults to LeCun uniform, U(+-sqrt(3/fan_in)); the paper's is U(+-2.4/fan_in).
- It takes any number of input channels (3 for CIFAR); the paper had 1 (32x32 padded MNIST).
- ``pad`` zero-pads C1's input: ``pad=2`` gives MNIST's 28x28 images the paper's 32x32 field.
  The zeros are added after normalisation, so they are the dataset's mean grey; the paper's
  border is the background level of its input scaling.

Parameters (10 classes): 62,006 for 3 input channels, 61,706 for 1 channel. The paper's network
has exactly 60,000: C1 156 + S2 12 + C3 1,516 + S4 32 + C5 48,120 + F6 10,164 (fixed RBF codes).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cv_jax.models.layers import PLAIN, AvgPool, Conv, LayerImpl, activation, initializer
from cv_jax.models.registry import register


@register("lenet5")
class LeNet5(nn.Module):
    """LeNet-5; submodules are named after the paper's layers: C1, S2, C3, S4, C5, F6, output."""

    num_classes: int = 10
    activation: str = "tanh"
    pool: str = "avg"  # "avg" (the paper's subsampling, without its trainable scale) or "max"
    kernel_init: str = "lecun_uniform"
    pad: int = 0  # pixels of zero padding around C1's input (2: 28x28 MNIST -> 32x32)
    dtype: Any = jnp.float32
    layer_impl: LayerImpl = PLAIN

    def __post_init__(self) -> None:
        if self.pool not in ("avg", "max"):
            raise ValueError(f"lenet5 field 'pool' must be 'avg' or 'max', got {self.pool!r}")
        if self.pad < 0:
            raise ValueError(f"lenet5 field 'pad' must be >= 0 pixels, got {self.pad}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        act = activation(self.activation)
        init = initializer(self.kernel_init)
        pool = AvgPool if self.pool == "avg" else self.layer_impl.max_pool

        def conv(features: int, name: str, pad: int = 0) -> Conv:
            return self.layer_impl.conv(features, (5, 5), padding=pad or "VALID",
                                        kernel_init=init, dtype=self.dtype, name=name)

        x = pool(2, name="S2")(act(conv(6, "C1", self.pad)(x)))
        x = pool(2, name="S4")(act(conv(16, "C3")(x)))
        x = act(conv(120, "C5")(x))
        x = x.reshape(x.shape[0], -1)
        x = act(nn.Dense(84, kernel_init=init, dtype=self.dtype, name="F6")(x))
        x = nn.Dense(self.num_classes, kernel_init=init, dtype=self.dtype, name="output")(x)
        return x.astype(jnp.float32)
