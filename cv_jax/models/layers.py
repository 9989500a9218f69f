"""Building blocks shared by the model files.

- :class:`Conv`, :class:`MaxPool`, :class:`AvgPool`: layers that check, while the model is traced
  (before anything compiles), that their input has enough pixels for their window, and otherwise
  fail with :class:`InputTooSmall` naming the layer.
- :class:`LayerImpl`: which implementation a model's convolutions, BatchNorms and max pools use
  (:data:`PLAIN`, or the CPU formulations of :mod:`cv_jax.models.cpu.formulations`), and whether
  its BatchNorm is frozen; a model field, and the factory of those layers (:meth:`LayerImpl.conv`,
  :meth:`LayerImpl.batch_norm` with the train/eval switch and our dtype convention,
  :meth:`LayerImpl.max_pool`).
- :func:`activation` and :func:`initializer`: activations and weight initialisers by name, so that
  configs can choose them (``"leaky_relu:0.1"``, ``"he_normal:fan_out"``, ``"normal:0.01"``).
- :func:`adaptive_avg_pool`: PyTorch's ``AdaptiveAvgPool2d`` (used by the ImageNet VGG head).

Conventions of every model: NHWC inputs, parameters in float32, computation in ``dtype``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Padding = str | int | Sequence[tuple[int, int]]
Pads = str | Sequence[tuple[int, int]]  # 'SAME'/'VALID' or explicit (low, high) pairs
# (x, window, strides, pads) -> y: max pooling of NHWC x, as flax.linen.max_pool
MaxPooling = Callable[[jax.Array, tuple[int, int], tuple[int, int], Pads], jax.Array]
# (x, scale, bias, epsilon) -> y: BatchNorm over the last axis with the batch's statistics
TrainingBatchNorm = Callable[[jax.Array, jax.Array, jax.Array, float], jax.Array]


class InputTooSmall(ValueError):
    """The input image is too small for a layer's window (raised before compiling)."""


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    first, second = value
    return int(first), int(second)


def _pads(padding: Padding, window: tuple[int, int]) -> Pads:
    """Padding as 'SAME'/'VALID' or explicit (low, high) pairs per spatial dimension."""
    if isinstance(padding, str):
        return padding.upper()
    if isinstance(padding, int):
        return [(padding, padding)] * len(window)
    return [(int(lo), int(hi)) for lo, hi in padding]


def output_size(size: int, window: int, stride: int, pads: str | tuple[int, int]) -> int:
    """Spatial output size of a window/stride/padding along one dimension (< 1: no output)."""
    if pads == "SAME":
        return -(-size // stride)
    low, high = (0, 0) if pads == "VALID" else pads
    return (size + low + high - window) // stride + 1


def check_fits(x: jax.Array, window: Any, strides: Any, padding: Padding, where: str) -> None:
    """Raise :class:`InputTooSmall` if ``x`` (NHWC) has fewer pixels than the window needs."""
    window = _pair(window)
    strides = _pair(1 if strides is None else strides)
    pads = _pads(padding, window)
    height, width = x.shape[1:3]
    for axis, size in enumerate((height, width)):
        axis_pads = pads if isinstance(pads, str) else pads[axis]
        if output_size(size, window[axis], strides[axis], axis_pads) < 1:
            raise InputTooSmall(
                f"layer {where!r} runs out of pixels: its {window[0]}x{window[1]} window "
                f"(stride {strides[axis]}, padding {padding!r}) gets a {height}x{width} input. "
                "Use larger images (--config.dataset.image_size=(H, W)) or a model variant made "
                "for small inputs (e.g. the *_cifar models; `python -m cv_jax.models` lists them)."
            )


def _path(module: nn.Module) -> str:
    return "/".join(module.scope.path) if module.scope is not None else type(module).__name__


class Conv(nn.Conv):
    """``flax.linen.Conv`` that reports an input smaller than its kernel by layer name; it
    convolves with its ``conv_general_dilated`` (:attr:`LayerImpl.convolution`)."""

    @nn.nowrap
    def _check(self, x: jax.Array) -> None:
        check_fits(x, self.kernel_size, self.strides, self.padding, _path(self))

    def __call__(self, inputs: jax.Array) -> jax.Array:
        self._check(inputs)
        return super().__call__(inputs)


def batch_statistics(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean and variance of ``x`` over all but its last axis, as flax's BatchNorm
    computes them (``use_fast_variance``: E[x^2] - E[x]^2, clipped at 0)."""
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axes)
    return mean, jnp.maximum(0.0, jnp.mean(x * x, axes) - mean * mean)


class BatchNorm(nn.BatchNorm):
    """``flax.linen.BatchNorm``; given a ``training_batch_norm``
    (:attr:`LayerImpl.training_batch_norm`), a float32 training-mode BatchNorm over the last axis
    (with scale and bias, no mask, no cross-device axis) normalises through it and updates its
    running averages from :func:`batch_statistics`: the same variables, flax's values up to
    float32 rounding."""

    training_batch_norm: TrainingBatchNorm | None = None

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None, *,
                 mask: jax.Array | None = None) -> jax.Array:
        train = not nn.merge_param("use_running_average", self.use_running_average,
                                   use_running_average)
        fused = (train and self.training_batch_norm is not None and not self.is_initializing()
                 and mask is None and self.axis_name is None and self.axis in (-1, x.ndim - 1)
                 and self.use_scale and self.use_bias and self.use_fast_variance
                 and x.dtype == self.param_dtype == jnp.float32
                 and self.dtype in (None, jnp.float32))
        if not fused:
            return super().__call__(x, use_running_average, mask=mask)
        features = (x.shape[-1],)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, features, jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, features, jnp.float32)
        mean, var = jax.lax.stop_gradient(batch_statistics(x))
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        scale = self.param("scale", self.scale_init, features, self.param_dtype)
        bias = self.param("bias", self.bias_init, features, self.param_dtype)
        return self.training_batch_norm(x, scale, bias, self.epsilon)


class Dropout(nn.Dropout):
    """``flax.linen.Dropout`` whose rate may also be an array: a traced value, one per member
    of a vectorised run (``cv_jax.workflows.vectorized --vary``). A Python number takes flax's path
    unchanged; an array always draws the mask, which for a rate of 0 keeps every unit."""

    def __call__(self, inputs: jax.Array, deterministic: bool | None = None,
                 rng: jax.Array | None = None) -> jax.Array:
        if is_number(self.rate):
            return super().__call__(inputs, deterministic, rng)
        if nn.merge_param("deterministic", self.deterministic, deterministic):
            return inputs
        keep = 1.0 - jnp.asarray(self.rate, jnp.float32)
        rng = self.make_rng(self.rng_collection) if rng is None else rng
        shape = [1 if i in self.broadcast_dims else n for i, n in enumerate(inputs.shape)]
        mask = jnp.broadcast_to(jax.random.bernoulli(rng, p=keep, shape=shape), inputs.shape)
        return jax.lax.select(mask, inputs / keep.astype(inputs.dtype), jnp.zeros_like(inputs))


def is_number(value: Any) -> bool:
    """A Python number (a config value), not an array or a traced value."""
    return isinstance(value, (int, float))


def flax_max_pool(x: jax.Array, window: tuple[int, int], strides: tuple[int, int],
                  padding: Pads) -> jax.Array:
    """``flax.linen.max_pool`` (:data:`PLAIN`'s max pooling)."""
    return nn.max_pool(x, window, strides, padding)


class MaxPool(nn.Module):
    """Max pooling as a named layer (it shows up in summaries and in size errors); it pools with
    ``pooling`` (:attr:`LayerImpl.max_pooling`)."""

    window: int | tuple[int, int]
    strides: int | tuple[int, int] | None = None  # None: the window (non-overlapping)
    padding: Padding = "VALID"
    pooling: MaxPooling = flax_max_pool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        window, strides = _pair(self.window), _pair(self.strides or self.window)
        check_fits(x, window, strides, self.padding, _path(self))
        return self.pooling(x, window, strides, _pads(self.padding, window))


class AvgPool(nn.Module):
    """Average pooling as a named layer; padded zeros count in the mean, as in PyTorch."""

    window: int | tuple[int, int]
    strides: int | tuple[int, int] | None = None
    padding: Padding = "VALID"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        window, strides = _pair(self.window), _pair(self.strides or self.window)
        check_fits(x, window, strides, self.padding, _path(self))
        return nn.avg_pool(x, window, strides, _pads(self.padding, window), count_include_pad=True)


@dataclasses.dataclass(frozen=True)
class LayerImpl:
    """Which implementation a model's convolutions, BatchNorms and max pools use, chosen when
    the model is built: every model has a field ``layer_impl: LayerImpl = PLAIN``, passes it to
    its blocks, and builds those layers with :meth:`conv`, :meth:`batch_norm` and
    :meth:`max_pool` (or pools with :attr:`max_pooling`). Every choice has the same variables.

    - ``convolution``: what :class:`Conv` convolves with (``lax.conv_general_dilated``'s
      signature);
    - ``max_pooling``: ``(x, window, strides, pads) -> y``, what max pooling computes;
    - ``training_batch_norm``: ``(x, scale, bias, epsilon) -> y``, what a float32 BatchNorm
      normalises with in training mode (None: flax's BatchNorm);
    - ``frozen_batch_norm``: BatchNorm normalises with (and keeps) its running statistics even in
      training mode, while dropout and the rest still train (Keras' frozen BatchNorm for transfer
      learning).

    :data:`PLAIN` is flax's and XLA's layers; ``cv_jax.models.cpu.formulations.CPU`` trains with
    formulations XLA:CPU runs faster.
    """

    convolution: Callable[..., jax.Array] = lax.conv_general_dilated
    max_pooling: MaxPooling = flax_max_pool
    training_batch_norm: TrainingBatchNorm | None = None
    frozen_batch_norm: bool = False

    def conv(self, features: int, kernel_size: Sequence[int], **fields: Any) -> Conv:
        """:class:`Conv` (``fields``: flax's ``Conv`` fields) convolving with ``convolution``."""
        return Conv(features, kernel_size, conv_general_dilated=self.convolution, **fields)

    def batch_norm(
        self,
        train: bool,
        *,
        name: str,
        dtype: Any = jnp.float32,
        momentum: float = 0.9,
        epsilon: float = 1e-5,
        scale_init: Callable = nn.initializers.ones,
    ) -> BatchNorm:
        """:class:`BatchNorm` using batch statistics when ``train`` (unless
        ``frozen_batch_norm``) and the running averages otherwise.

        ``momentum`` is flax's decay of the running average (PyTorch's momentum 0.1 is 0.9 here).
        """
        return BatchNorm(
            use_running_average=not train or self.frozen_batch_norm,
            momentum=momentum,
            epsilon=epsilon,
            dtype=dtype,
            param_dtype=jnp.float32,
            scale_init=scale_init,
            training_batch_norm=self.training_batch_norm,
            name=name,
        )

    def max_pool(self, window: int | tuple[int, int], strides: int | tuple[int, int] | None = None,
                 padding: Padding = "VALID", *, name: str | None = None) -> MaxPool:
        """:class:`MaxPool` pooling with ``max_pooling``."""
        return MaxPool(window, strides, padding, pooling=self.max_pooling, name=name)


PLAIN = LayerImpl()  # flax's and XLA's layers


def global_avg_pool(x: jax.Array) -> jax.Array:
    """``[B, H, W, C] -> [B, C]``."""
    return jnp.mean(x, axis=(1, 2))


def _adaptive_matrix(size_in: int, size_out: int) -> np.ndarray:
    """``[size_out, size_in]`` averaging weights of PyTorch's adaptive pooling windows."""
    matrix = np.zeros((size_out, size_in), np.float32)
    for i in range(size_out):
        start = (i * size_in) // size_out
        end = -(-((i + 1) * size_in) // size_out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def adaptive_avg_pool(x: jax.Array, output_hw: tuple[int, int]) -> jax.Array:
    """PyTorch ``AdaptiveAvgPool2d``: average over windows that tile the input into ``output_hw``.

    Window ``i`` covers ``[floor(i*H/h), ceil((i+1)*H/h))``; windows overlap when H is not a
    multiple of h, and a smaller input is upsampled by repetition.
    """
    rows = jnp.asarray(_adaptive_matrix(x.shape[1], output_hw[0]), x.dtype)
    cols = jnp.asarray(_adaptive_matrix(x.shape[2], output_hw[1]), x.dtype)
    return jnp.einsum("bhwc,ih,jw->bijc", x, rows, cols)


# --- Activations by name ----------------------------------------------------------------------

def _mish(x: jax.Array) -> jax.Array:
    return x * jnp.tanh(jax.nn.softplus(x))


# name -> (function, name of its one optional numeric argument or None)
_ACTIVATIONS: dict[str, tuple[Callable[..., jax.Array], str | None]] = {
    "relu": (jax.nn.relu, None),
    "relu6": (jax.nn.relu6, None),
    "leaky_relu": (jax.nn.leaky_relu, "negative_slope"),  # default slope 0.01 (PyTorch)
    "elu": (jax.nn.elu, "alpha"),
    "selu": (jax.nn.selu, None),
    "gelu": (functools.partial(jax.nn.gelu, approximate=False), None),
    "gelu_tanh": (functools.partial(jax.nn.gelu, approximate=True), None),
    "silu": (jax.nn.silu, None),
    "swish": (jax.nn.silu, None),
    "mish": (_mish, None),
    "softplus": (jax.nn.softplus, None),
    "hard_swish": (jax.nn.hard_swish, None),
    "tanh": (jnp.tanh, None),
    "sigmoid": (jax.nn.sigmoid, None),
    "identity": (lambda x: x, None),
}
ACTIVATION_NAMES = tuple(_ACTIVATIONS)


def activation(spec: str) -> Callable[[jax.Array], jax.Array]:
    """The activation named by ``spec``: ``"relu"``, ``"leaky_relu:0.1"``, ``"elu:0.5"``, ..."""
    name, _, arg = spec.partition(":")
    if name not in _ACTIVATIONS:
        raise ValueError(
            f"unknown activation {spec!r}; choose one of {', '.join(ACTIVATION_NAMES)} "
            "(leaky_relu and elu take an optional ':<number>')"
        )
    fn, arg_name = _ACTIVATIONS[name]
    if not arg:
        return fn
    if arg_name is None:
        raise ValueError(f"activation {name!r} takes no argument, got {spec!r}")
    try:
        value = float(arg)
    except ValueError:
        raise ValueError(f"activation {spec!r}: {arg_name} must be a number, got {arg!r}") from None
    return functools.partial(fn, **{arg_name: value})


# --- Initialisers ------------------------------------------------------------------------------

# PyTorch's default nn.Conv2d / nn.Linear weight init (kaiming_uniform with a=sqrt(5)):
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# He et al. 2015 ("Delving Deep into Rectifiers"): N(0, 2/n) with n = fan_out = k*k*out_channels,
# as fb.resnet.torch and torchvision (kaiming_normal_, mode="fan_out") do; untruncated.
he_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# name -> (variance scale, default fan mode). He et al. 2015 keep Var(w) = 2/fan for ReLU;
# Glorot & Bengio 2010 use 1/fan_avg; LeCun 1998 uses 1/fan_in.
_SCALED = {"he": (2.0, "fan_in"), "glorot": (1.0, "fan_avg"), "lecun": (1.0, "fan_in")}
_ALIASES = {"kaiming": "he", "xavier": "glorot"}
_FAN_MODES = ("fan_in", "fan_out", "fan_avg")


def uniform_symmetric(limit: float) -> Callable:
    """U(-limit, limit) (flax's ``uniform`` draws from [0, scale))."""

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -limit, limit)

    return init


def initializer(spec: str) -> Callable:
    """The weight initialiser named by ``spec``.

    - scaled by fan: ``{he,glorot,lecun}_{normal,uniform}[:fan_in|fan_out|fan_avg]`` (aliases
      ``kaiming_*``, ``xavier_*``); normal is untruncated, with Var = scale / fan;
      uniform has the same variance (limit = sqrt(3 * scale / fan)).
    - fixed: ``normal:STD``, ``truncated_normal:STD`` (cut at 2 std), ``uniform:LIMIT``
      (U(-LIMIT, LIMIT)); ``orthogonal``; ``zeros``.
    """
    name, _, arg = spec.partition(":")
    family, _, distribution = name.partition("_")
    family = _ALIASES.get(family, family)
    if family in _SCALED and distribution in ("normal", "uniform"):
        scale, mode = _SCALED[family]
        mode = arg or mode
        if mode not in _FAN_MODES:
            raise ValueError(f"initializer {spec!r}: fan mode must be one of {_FAN_MODES}")
        return nn.initializers.variance_scaling(scale, mode, distribution)
    if name == "orthogonal" and not arg:
        return nn.initializers.orthogonal()
    if name == "zeros" and not arg:
        return nn.initializers.zeros
    fixed = {
        "normal": nn.initializers.normal,
        "truncated_normal": nn.initializers.truncated_normal,
        "uniform": uniform_symmetric,
    }
    if name in fixed:
        try:
            value = float(arg)
        except ValueError:
            value = math.nan
        if not value > 0:
            raise ValueError(
                f"initializer {spec!r} needs a positive std/limit, e.g. '{name}:0.01'"
            )
        return fixed[name](value)
    raise ValueError(
        f"unknown initializer {spec!r}; use he_normal, he_uniform, glorot_normal, glorot_uniform, "
        "lecun_normal, lecun_uniform (optionally ':fan_in', ':fan_out' or ':fan_avg'), "
        "normal:STD, truncated_normal:STD, uniform:LIMIT, orthogonal or zeros"
    )
