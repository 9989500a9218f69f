"""AlexNet of Krizhevsky, Sutskever & Hinton 2012, "ImageNet Classification with Deep
Convolutional Neural Networks", NeurIPS 2012 (section 3, Figure 2), and the small CIFAR AlexNet
of Zhang, Bengio, Hardt, Recht & Vinyals 2017, "Understanding deep learning requires rethinking
generalization", ICLR 2017 (arXiv:1611.03530), appendix A.

``alexnet`` (224x224x3): conv1 96@11x11 stride 4 -> LRN -> maxpool 3/2 -> conv2 256@5x5 -> LRN
-> maxpool 3/2 -> conv3 384@3x3 -> conv4 384@3x3 -> conv5 256@3x3 -> maxpool 3/2 (6x6x256)
-> fc6 4096 -> fc7 4096 -> fc8 classes. ReLU after every conv and hidden dense layer (3.1), local
response normalisation after the ReLU of conv1 and conv2 (3.3), overlapping pooling (3.4),
dropout 0.5 on the outputs of fc6 and fc7 (4.2). 60,965,224 parameters for 1000 classes: the
paper's "60 million", and the count of Caffe's bvlc_alexnet.

Differences from the paper:

- conv1 pads 2 pixels so that 224x224 gives the paper's 55x55 maps (unpadded, 224 gives 54;
  Caffe feeds 227x227 instead).
- The two-GPU layout survives only as grouped convolutions (field ``groups=2``): conv2, conv4 and
  conv5 each see half of the previous layer's maps, conv3 and the dense layers see all of them.
  ``groups=1`` is the one-GPU network (62,378,344 parameters). LRN runs across all maps, not
  per GPU.
- Initialisation follows section 5 (kernels N(0, 0.01), biases 1 in conv2, conv4, conv5, fc6
  and fc7, 0 elsewhere) but both are fields: ``kernel_init``, ``hidden_bias``.
- Data augmentation (crops, flips, PCA colour noise) and 10-crop testing belong to the pipeline.

``alexnet_cifar`` (Zhang et al., appendix A; it is the model of TensorFlow's CIFAR-10 tutorial):
two modules of (conv 5x5 64 'same' -> ReLU -> maxpool 3x3 stride 2 'same' -> LRN), then dense
384 and 192 with ReLU and a dense classifier. Its LRN uses the tutorial's constants (size 9, k=1,
alpha=0.001/9, beta=0.75). 1,387,786 parameters on the paper's 28x28 crops (Table 1); our
pipeline's 32x32 gives 1,756,426 (8x8 instead of 7x7 maps before the dense layers). The
tutorial's second module normalises before pooling and its init is hand-tuned truncated normals;
we follow the paper's description and use Glorot-uniform kernels (``kernel_init``; He-normal
makes the initial logits ~5x too large here, as max pooling raises the scale) and zero biases.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cv_jax.models.layers import PLAIN, Conv, Dropout, LayerImpl, initializer
from cv_jax.models.registry import register


def local_response_norm(
    x: jax.Array, size: int = 5, k: float = 2.0, alpha: float = 1e-4, beta: float = 0.75
) -> jax.Array:
    """Section 3.3: ``b_i = a_i / (k + alpha * sum_j a_j**2) ** beta`` over channels ``j`` from
    ``i - size//2`` to ``i + size//2`` (clipped at the ends), at each pixel of NHWC ``x``.

    Defaults are the paper's (k=2, n=5, alpha=1e-4, beta=0.75). As in the paper, alpha is not
    divided by ``size`` (Caffe and PyTorch divide it).
    """
    half = size // 2
    squares = jnp.square(x.astype(jnp.float32))
    padded = jnp.pad(squares, ((0, 0), (0, 0), (0, 0), (half, half)))
    channels = x.shape[-1]
    sums = sum(padded[..., j : j + channels] for j in range(size))
    return (x / (k + alpha * sums) ** beta).astype(x.dtype)


@register("alexnet", input_shape=(224, 224, 3))
class AlexNet(nn.Module):
    """AlexNet for 224x224 inputs; submodules conv1..conv5, pool1, pool2, pool5, fc6..fc8."""

    num_classes: int = 10
    groups: int = 2  # 2: the paper's two-GPU connectivity; 1: every conv sees all maps
    lrn: bool = True
    dropout: float = 0.5
    kernel_init: str = "normal:0.01"
    hidden_bias: float = 1.0  # initial bias of conv2, conv4, conv5, fc6, fc7 (others: 0)
    dtype: Any = jnp.float32
    layer_impl: LayerImpl = PLAIN

    def __post_init__(self) -> None:
        if self.groups < 1 or 32 % self.groups:  # must divide 96, 256 and 384
            raise ValueError(f"alexnet field 'groups' must divide 32, got {self.groups}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        init = initializer(self.kernel_init)

        def conv(features: int, kernel: int, stride: int, padding: int, groups: int,
                 bias: float, name: str) -> Conv:
            return self.layer_impl.conv(features, (kernel, kernel), strides=stride,
                                        padding=padding, feature_group_count=groups,
                                        kernel_init=init, bias_init=nn.initializers.constant(bias),
                                        dtype=self.dtype, name=name)

        def dense(features: int, bias: float, name: str) -> nn.Dense:
            return nn.Dense(features, kernel_init=init, bias_init=nn.initializers.constant(bias),
                            dtype=self.dtype, name=name)

        norm = local_response_norm if self.lrn else (lambda y: y)
        max_pool = self.layer_impl.max_pool
        g, one = self.groups, self.hidden_bias
        x = max_pool(3, 2, name="pool1")(norm(nn.relu(conv(96, 11, 4, 2, 1, 0.0, "conv1")(x))))
        x = max_pool(3, 2, name="pool2")(norm(nn.relu(conv(256, 5, 1, 2, g, one, "conv2")(x))))
        x = nn.relu(conv(384, 3, 1, 1, 1, 0.0, "conv3")(x))
        x = nn.relu(conv(384, 3, 1, 1, g, one, "conv4")(x))
        x = nn.relu(conv(256, 3, 1, 1, g, one, "conv5")(x))
        x = max_pool(3, 2, name="pool5")(x)
        x = x.reshape(x.shape[0], -1)
        for name in ("fc6", "fc7"):
            x = nn.relu(dense(4096, one, name)(x))
            x = Dropout(self.dropout, deterministic=not train)(x)
        x = dense(self.num_classes, 0.0, "fc8")(x)
        return x.astype(jnp.float32)


@register("alexnet_cifar")
class AlexNetCifar(nn.Module):
    """Small AlexNet of Zhang et al. 2017; submodules conv1, pool1, conv2, pool2, fc1, fc2, head."""

    num_classes: int = 10
    lrn: bool = True
    kernel_init: str = "glorot_uniform"
    dtype: Any = jnp.float32
    layer_impl: LayerImpl = PLAIN

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        init = initializer(self.kernel_init)
        for i in (1, 2):
            x = self.layer_impl.conv(64, (5, 5), padding="SAME", kernel_init=init,
                                     dtype=self.dtype, name=f"conv{i}")(x)
            x = self.layer_impl.max_pool(3, 2, padding="SAME", name=f"pool{i}")(nn.relu(x))
            if self.lrn:
                x = local_response_norm(x, size=9, k=1.0, alpha=0.001 / 9, beta=0.75)
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(384, kernel_init=init, dtype=self.dtype, name="fc1")(x))
        x = nn.relu(nn.Dense(192, kernel_init=init, dtype=self.dtype, name="fc2")(x))
        x = nn.Dense(self.num_classes, kernel_init=init, dtype=self.dtype, name="head")(x)
        return x.astype(jnp.float32)
