"""A configurable plain ConvNet: every CNN hyper-parameter is a config string or number.

The layers are one string, ``config.model.layers``, for example::

    conv:32,conv:32:k5:s2:valid,pool:max:3:s2,dropout:0.25,conv:64,pool:avg:2

Grammar (comma-separated layers, lower case; spaces around tokens are ignored)::

    conv:FILTERS[:kK][:sS][:same|:valid]  KxK convolution with stride S (default k3, s1, same),
                                          then BatchNorm (if ``batch_norm``) and the activation
    pool:max|avg:SIZE[:sS]                SIZExSIZE pooling with stride S (default SIZE; S < SIZE
                                          overlaps, as in AlexNet); no padding
    dropout:RATE                          dropout, drop probability 0 <= RATE < 1

``same`` pads with zeros so that the output has ceil(input / stride) pixels (Keras/TensorFlow
'same': at stride 2 the extra row and column go at the bottom and right); ``valid`` does not pad.

Then ``flatten`` turns the feature map into a vector: 'flatten' keeps all H*W*C values (NHWC
order, like Keras's Flatten), 'avg'/'max' pool globally over H and W. Next come the hidden dense
layers listed in ``fc`` (e.g. "512,256"; "" for none), each followed by the activation and
dropout ``fc_dropout``, and a dense classifier.

- ``activation``: any spec of :func:`cv_jax.models.layers.activation` ("relu", "leaky_relu:0.1",
  "elu", "gelu", "tanh", ...), used after every conv and hidden dense layer.
- ``kernel_init``: any spec of :func:`cv_jax.models.layers.initializer` ("he_normal:fan_out",
  "glorot_uniform", "normal:0.01", "uniform:0.05", ...) for every conv and dense kernel; biases
  start at zero.
- ``batch_norm``: BatchNorm (Ioffe & Szegedy 2015, arXiv:1502.03167) after each conv, before the
  activation; the convs then have no bias. Dense layers never get BatchNorm.

The default is our own small CIFAR net (three VGG-style pairs of 3x3 convs with BatchNorm, max
pooling, global average pooling, one hidden dense layer); it follows no paper.

``keras_cifar_cnn`` is the CIFAR-10 CNN of the Keras examples (``examples/cifar10_cnn.py``,
Chollet et al., Keras, 2015) written as defaults of the same ConvNet, every field overridable:
conv32 same, conv32 valid, maxpool2, dropout .25, conv64 same, conv64 valid, maxpool2, dropout
.25, flatten, dense512, dropout .5, dense classes; ReLU, glorot_uniform kernels, zero biases
(Keras's defaults). Differences: it returns logits (Keras ends with a softmax layer), and its
training recipe (RMSprop, lr 1e-4) is the config's business, not the model's.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cv_jax.models.layers import (
    PLAIN,
    AvgPool,
    Dropout,
    LayerImpl,
    activation,
    global_avg_pool,
    initializer,
    is_number,
)
from cv_jax.models.registry import register

LAYERS_GRAMMAR = (
    "write comma-separated layers: conv:FILTERS[:kK][:sS][:same|:valid], "
    "pool:max|avg:SIZE[:sS], dropout:RATE (e.g. 'conv:32,conv:64:k5:s2:valid,pool:max:3:s2')"
)
FLATTEN_MODES = ("flatten", "avg", "max")


@dataclass(frozen=True)
class ConvSpec:
    filters: int
    kernel: int = 3
    stride: int = 1
    padding: str = "SAME"  # or "VALID"


@dataclass(frozen=True)
class PoolSpec:
    kind: str  # "max" or "avg"
    size: int
    stride: int


@dataclass(frozen=True)
class DropoutSpec:
    rate: float


LayerSpec = ConvSpec | PoolSpec | DropoutSpec


def _positive_int(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and int(text) > 0 else None


def _parse_layer(item: str) -> LayerSpec:
    kind, *args = (token.strip() for token in item.split(":"))

    def bad(token: str, why: str = "") -> ValueError:
        return ValueError(
            f"convnet field 'layers': bad token {token!r} in {item!r}{why}; {LAYERS_GRAMMAR}"
        )

    if kind == "conv":
        if not args or _positive_int(args[0]) is None:
            raise bad(args[0] if args else kind, " (conv needs a positive filter count)")
        options: dict[str, Any] = {}
        for token in args[1:]:
            key, value = token[:1], _positive_int(token[1:])
            if token in ("same", "valid"):
                key, value = "padding", token.upper()
            if key not in ("k", "s", "padding") or value is None or key in options:
                raise bad(token)
            options[key] = value
        return ConvSpec(
            int(args[0]), options.get("k", 3), options.get("s", 1), options.get("padding", "SAME")
        )
    if kind == "pool":
        if len(args) not in (2, 3):
            raise bad(item, " (pool needs max|avg and a size)")
        if args[0] not in ("max", "avg"):
            raise bad(args[0])
        size = _positive_int(args[1])
        if size is None:
            raise bad(args[1])
        stride = size
        if len(args) == 3:
            stride = _positive_int(args[2][1:]) if args[2].startswith("s") else None
            if stride is None:
                raise bad(args[2])
        return PoolSpec(args[0], size, stride)
    if kind == "dropout":
        if len(args) != 1:
            raise bad(item, " (dropout needs one rate)")
        try:
            rate = float(args[0])
        except ValueError:
            rate = math.nan
        if not 0 <= rate < 1:
            raise bad(args[0], " (the rate must be in [0, 1))")
        return DropoutSpec(rate)
    raise bad(kind, " (unknown layer type)")


@functools.cache
def parse_layers(spec: str) -> tuple[LayerSpec, ...]:
    """``"conv:32,pool:max:2"`` -> ``(ConvSpec(32), PoolSpec("max", 2, 2))``."""
    return tuple(_parse_layer(item.strip()) for item in spec.split(",") if item.strip())


@functools.cache
def parse_widths(spec: str) -> tuple[int, ...]:
    """The ``fc`` field: ``"512,256"`` -> ``(512, 256)``, ``""`` -> ``()``."""
    widths = []
    for token in filter(None, (t.strip() for t in spec.split(","))):
        width = _positive_int(token)
        if width is None:
            raise ValueError(
                f"convnet field 'fc': bad token {token!r} in {spec!r}; write comma-separated "
                "positive widths of the hidden dense layers, e.g. '512,256' ('' for none)"
            )
        widths.append(width)
    return tuple(widths)


class ConvNet(nn.Module):
    """Plain ConvNet built from the ``layers`` spec (grammar in the module docstring).

    Submodules: ``conv{i}``/``bn{i}``, ``pool{i}``, ``fc{i}``, ``head`` (numbered from 1).
    """

    num_classes: int = 10
    layers: str = (
        "conv:32,conv:32,pool:max:2,conv:64,conv:64,pool:max:2,conv:128,conv:128,pool:max:2"
    )
    fc: str = "256"
    flatten: str = "avg"
    activation: str = "relu"
    fc_dropout: float = 0.0
    batch_norm: bool = True
    bn_momentum: float = 0.9  # flax convention: decay of the running average
    kernel_init: str = "he_normal:fan_in"
    dtype: Any = jnp.float32
    layer_impl: LayerImpl = PLAIN

    def __post_init__(self) -> None:
        # Check every field now, so a bad config fails when the model is built.
        parse_layers(self.layers)
        parse_widths(self.fc)
        if self.flatten not in FLATTEN_MODES:
            raise ValueError(f"convnet field 'flatten': got {self.flatten!r}; use {FLATTEN_MODES}")
        if is_number(self.fc_dropout) and not 0 <= self.fc_dropout < 1:
            raise ValueError(f"convnet field 'fc_dropout': got {self.fc_dropout}; use [0, 1)")
        for field, build in (("activation", activation), ("kernel_init", initializer)):
            try:
                build(getattr(self, field))
            except ValueError as e:
                raise ValueError(f"convnet field {field!r}: {e}") from None
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        act = activation(self.activation)
        init = initializer(self.kernel_init)
        count = {"conv": 0, "pool": 0}
        for layer in parse_layers(self.layers):
            if isinstance(layer, ConvSpec):
                count["conv"] += 1
                i = count["conv"]
                x = self.layer_impl.conv(
                    layer.filters,
                    (layer.kernel, layer.kernel),
                    strides=layer.stride,
                    padding=layer.padding,
                    use_bias=not self.batch_norm,
                    kernel_init=init,
                    dtype=self.dtype,
                    name=f"conv{i}",
                )(x)
                if self.batch_norm:
                    x = self.layer_impl.batch_norm(train, momentum=self.bn_momentum,
                                                   dtype=self.dtype, name=f"bn{i}")(x)
                x = act(x)
            elif isinstance(layer, PoolSpec):
                count["pool"] += 1
                pool = self.layer_impl.max_pool if layer.kind == "max" else AvgPool
                x = pool(layer.size, layer.stride, name=f"pool{count['pool']}")(x)
            else:
                x = Dropout(layer.rate, deterministic=not train)(x)

        if self.flatten == "flatten":
            x = x.reshape(x.shape[0], -1)
        elif self.flatten == "avg":
            x = global_avg_pool(x)
        else:
            x = jnp.max(x, axis=(1, 2))

        for i, width in enumerate(parse_widths(self.fc), start=1):
            x = act(nn.Dense(width, kernel_init=init, dtype=self.dtype, name=f"fc{i}")(x))
            x = Dropout(self.fc_dropout, deterministic=not train)(x)
        x = nn.Dense(self.num_classes, kernel_init=init, dtype=self.dtype, name="head")(x)
        return x.astype(jnp.float32)


register("convnet")(ConvNet)

KERAS_CIFAR_LAYERS = (
    "conv:32,conv:32:valid,pool:max:2,dropout:0.25,"
    "conv:64,conv:64:valid,pool:max:2,dropout:0.25"
)


@register("keras_cifar_cnn")
def keras_cifar_cnn(
    *,
    num_classes: int = 10,
    layers: str = KERAS_CIFAR_LAYERS,
    fc: str = "512",
    flatten: str = "flatten",
    activation: str = "relu",
    fc_dropout: float = 0.5,
    batch_norm: bool = False,
    bn_momentum: float = 0.9,
    kernel_init: str = "glorot_uniform",
    dtype: Any = jnp.float32,
    layer_impl: LayerImpl = PLAIN,
) -> ConvNet:
    """The Keras example CIFAR-10 CNN: :class:`ConvNet` with other defaults (see module doc)."""
    return ConvNet(
        num_classes=num_classes,
        layers=layers,
        fc=fc,
        flatten=flatten,
        activation=activation,
        fc_dropout=fc_dropout,
        batch_norm=batch_norm,
        bn_momentum=bn_momentum,
        kernel_init=kernel_init,
        dtype=dtype,
        layer_impl=layer_impl,
    )
