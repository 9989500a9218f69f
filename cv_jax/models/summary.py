"""Model summaries: parameter counts and forward FLOPs, for the whole model and per layer.

FLOPs come from XLA's cost analysis of the lowered (not compiled) eval-mode forward pass at
batch size 1, so they count what the program really computes, padding borders included. XLA counts
a multiply-add as 2 FLOPs; papers that quote "FLOPs" often count multiply-adds, i.e. half of this.
Nothing here allocates parameters: shapes are traced with ``jax.eval_shape``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cv_jax.models.registry import create_model, default_input_shape


@dataclasses.dataclass(frozen=True)
class LayerRow:
    """One leaf layer (a module without submodules) of a model's forward pass."""

    path: str  # e.g. "layer1_0/conv1"
    kind: str  # module class, e.g. "Conv"
    output_shape: tuple[int, ...]  # batch size 1
    params: int
    flops: float


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    params: int
    flops: float
    layers: tuple[LayerRow, ...] = ()

    @property
    def other_flops(self) -> float:
        """FLOPs outside the listed layers: activations, residual adds, concatenations, ..."""
        return self.flops - sum(row.flops for row in self.layers)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"other_flops": self.other_flops if self.layers else None}


def _is_array(value: Any) -> bool:
    return isinstance(value, jax.Array | np.ndarray | jax.ShapeDtypeStruct)


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), tree)


def _count(tree: Any) -> int:
    return sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree.leaves(tree))


def lowered_flops(fn: Any, *args: Any) -> float:
    """FLOPs of ``fn(*args)`` from XLA's cost analysis of the lowered program."""
    analysis = jax.jit(fn).lower(*args).cost_analysis()
    if isinstance(analysis, list | tuple):  # some JAX versions return one dict per computation
        analysis = analysis[0]
    return float(analysis.get("flops", 0.0))


def _module_key(module: nn.Module, args: tuple, kwargs: dict) -> tuple:
    fields = tuple(
        (f.name, repr(getattr(module, f.name)))
        for f in dataclasses.fields(module)
        if f.name not in ("parent", "name")
    )
    shapes = tuple(
        (np.shape(a), str(a.dtype)) if _is_array(a) else repr(a) for a in jax.tree.leaves(args)
    )
    variable_shapes = tuple((np.shape(a), str(a.dtype)) for a in jax.tree.leaves(module.variables))
    return type(module), fields, shapes, variable_shapes, repr(sorted(kwargs.items()))


class _LayerRecorder:
    """Method interceptor collecting every module call's output shape, parameters and FLOPs."""

    def __init__(self) -> None:
        self.calls: dict[str, tuple[str, tuple[int, ...], int, Any]] = {}
        self._flops_cache: dict[tuple, float] = {}
        self._measuring = False  # True while lowering one layer on its own: record nothing

    def __call__(self, next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module = context.module
        if self._measuring or context.method_name != "__call__" or module.scope is None:
            return out
        path = "/".join(module.scope.path)
        if path and path not in self.calls and _is_array(out):
            params = _count(module.variables.get("params", {}))
            flops = self._flops(module, args, kwargs)
            self.calls[path] = (type(module).__name__, tuple(out.shape), params, flops)
        return out

    def _flops(self, module: nn.Module, args: tuple, kwargs: dict) -> float:
        key = _module_key(module, args, kwargs)
        if key not in self._flops_cache:
            unbound = module.clone(parent=None)
            leaves, treedef = jax.tree.flatten(args)
            arrays = [i for i, leaf in enumerate(leaves) if _is_array(leaf)]

            def call(variables: Any, *array_args: Any) -> Any:
                filled = list(leaves)
                for i, value in zip(arrays, array_args, strict=True):
                    filled[i] = value
                return unbound.apply(
                    variables, *jax.tree.unflatten(treedef, filled), **kwargs,
                    mutable=[c for c in variables if c != "params"],
                )

            self._measuring = True
            try:
                self._flops_cache[key] = lowered_flops(
                    call, _abstract(module.variables), *[_abstract(leaves[i]) for i in arrays]
                )
            finally:
                self._measuring = False
        return self._flops_cache[key]

    def leaf_rows(self) -> tuple[LayerRow, ...]:
        paths = list(self.calls)
        leaves = [p for p in paths if not any(q.startswith(p + "/") for q in paths)]
        return tuple(LayerRow(p, *self.calls[p]) for p in leaves)


def summarize(
    name: str,
    input_shape: tuple[int, int, int] | None = None,
    num_classes: int = 1000,
    *,
    per_layer: bool = False,
    **model_kwargs: Any,
) -> ModelSummary:
    """Parameters and forward FLOPs of model ``name`` at ``input_shape`` (default: its design
    input); with ``per_layer`` also one :class:`LayerRow` per leaf layer, in call order."""
    input_shape = tuple(input_shape or default_input_shape(name))
    model = create_model(name, num_classes=num_classes, **model_kwargs)
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    key = jax.random.key(0)
    variables = jax.eval_shape(
        lambda: model.init({"params": key, "dropout": key}, jnp.zeros(x.shape), train=False)
    )
    forward = functools.partial(model.apply, train=False)
    flops = lowered_flops(forward, variables, x)
    layers: tuple[LayerRow, ...] = ()
    if per_layer:
        recorder = _LayerRecorder()
        with nn.intercept_methods(recorder):  # a new function: a cached trace would skip it
            jax.eval_shape(lambda v, images: model.apply(v, images, train=False), variables, x)
        layers = recorder.leaf_rows()
    return ModelSummary(name, input_shape, num_classes, _count(variables["params"]), flops, layers)
