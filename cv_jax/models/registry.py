"""The model registry: :func:`register` a factory under a name, then :func:`create_model` builds
it. The model families register themselves here when :mod:`cv_jax.models` imports them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from cv_jax.models.layers import PLAIN, LayerImpl

# (variables, images_uint8, normalize) -> updated variables
DataInit = Callable[[dict, np.ndarray, Callable[[np.ndarray], Any]], dict]

# Flax's own dataclass fields, which are not model hyperparameters.
_FLAX_RESERVED = frozenset({"parent", "name"})
# Fields every model takes from the run that builds it, not from config.model.
_RUN_FIELDS = frozenset({"num_classes", "dtype", "layer_impl"})


@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., nn.Module]
    data_init: DataInit | None
    input_shape: tuple[int, int, int]


_REGISTRY: dict[str, _Entry] = {}


def register(
    name: str,
    *,
    data_init: DataInit | None = None,
    input_shape: tuple[int, int, int] = (32, 32, 3),
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``factory(**kwargs) -> nn.Module`` under ``name``.

    The factory's signature (keyword parameters) defines which kwargs :func:`create_model`
    accepts; a ``flax.linen.Module`` subclass can be registered directly. ``data_init``, if
    given, is run by :func:`data_dependent_init` to set parameters from training images.
    ``input_shape`` (H, W, C) is the input the architecture was designed for: 32x32 for CIFAR
    models, 224x224 for ImageNet ones (summaries and size warnings use it).
    """

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = _Entry(factory, data_init, tuple(input_shape))
        return factory

    return decorator


def partial_module(cls: type[nn.Module], **fixed: Any) -> Callable[..., nn.Module]:
    """Factory building ``cls`` with some fields fixed (e.g. ``depth=20``).

    The returned factory's signature lists only the remaining fields, so a fixed field can not
    be overridden through :func:`create_model`.
    """

    def factory(**kwargs: Any) -> nn.Module:
        return cls(**fixed, **kwargs)

    signature = inspect.signature(cls)
    params = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        for n, p in signature.parameters.items()
        if n not in fixed and n not in _FLAX_RESERVED
    ]
    factory.__signature__ = signature.replace(parameters=params, return_annotation=cls)
    factory.__name__ = factory.__qualname__ = cls.__name__
    factory.__doc__ = cls.__doc__
    return factory


def model_names() -> list[str]:
    """Sorted names of all registered models."""
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(model_names())}")
    return _REGISTRY[name]


def _accepted_kwargs(factory: Callable[..., nn.Module]) -> set[str] | None:
    """Keyword names ``factory`` accepts, or None if it takes ``**kwargs``."""
    params = inspect.signature(factory).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    keyword_kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in params if p.kind in keyword_kinds} - _FLAX_RESERVED


def default_input_shape(name: str) -> tuple[int, int, int]:
    """The (H, W, C) input model ``name`` was designed for."""
    return _entry(name).input_shape


def input_size_advice(name: str, image_hw: tuple[int, int]) -> str | None:
    """A hint when images are much smaller than the input model ``name`` was designed for
    (e.g. CIFAR images into an ImageNet network), else None."""
    design = default_input_shape(name)[:2]
    if min(image_hw) * 2 > min(design):
        return None
    small_variant = f"{name}_cifar"
    alternative = (
        f"use {small_variant!r}, its form for small images, or "
        if small_variant in _REGISTRY
        else ""
    )
    return (
        f"model {name!r} was designed for {design[0]}x{design[1]} inputs and gets "
        f"{image_hw[0]}x{image_hw[1]} images; its early downsampling leaves little spatial "
        f"detail: {alternative}resize with --config.dataset.image_size=({design[0]}, {design[1]})"
    )


def model_fields(name: str) -> dict[str, Any]:
    """The tunable keyword parameters of model ``name`` with their defaults (for configs).

    ``num_classes``, ``dtype`` and ``layer_impl`` are left out: they come from the data and the
    run.
    """
    params = inspect.signature(_entry(name).factory).parameters.values()
    return {
        p.name: p.default
        for p in params
        if p.default is not inspect.Parameter.empty
        and p.name not in _FLAX_RESERVED | _RUN_FIELDS
    }


def create_model(
    name: str,
    *,
    num_classes: int,
    dtype: Any = jnp.float32,
    layer_impl: LayerImpl = PLAIN,
    **kwargs: Any,
) -> nn.Module:
    """Build the registered model ``name``; ``dtype`` is the compute dtype (params stay f32);
    ``layer_impl`` the implementation of its convolutions, BatchNorms and max pools (the
    same variables whichever it is).

    Raises ValueError for an unknown name (listing registered names) or an unknown kwarg.
    """
    entry = _entry(name)
    accepted = _accepted_kwargs(entry.factory)
    if accepted is not None:
        unknown = sorted(set(kwargs) - accepted)
        if unknown:
            raise ValueError(
                f"model {name!r} got unknown kwarg(s) {', '.join(unknown)}; "
                f"accepted: {', '.join(sorted(accepted - _RUN_FIELDS))}"
            )
    return entry.factory(num_classes=num_classes, dtype=dtype, layer_impl=layer_impl, **kwargs)


def data_dependent_init(
    name: str,
    variables: dict,
    images_uint8: np.ndarray | Callable[[], np.ndarray],
    normalize: Callable[[np.ndarray], Any],
) -> dict:
    """Update ``variables`` from training images if model ``name`` registered a ``data_init``.

    ``images_uint8`` is ``[N, H, W, C]`` uint8, or a function that reads them (called only by
    a model with a ``data_init``: a streamed split's files are decoded then), and
    ``normalize`` maps such an array to the float NHWC input the model expects. Models without
    a ``data_init`` get ``variables`` unchanged.
    """
    entry = _entry(name)
    if entry.data_init is None:
        return variables
    images = images_uint8() if callable(images_uint8) else images_uint8
    return entry.data_init(variables, images, normalize)
