"""Forward FLOPs per image of a model, as XLA counts them (reports' GFLOPs column).

XLA's cost analysis of the inference-mode forward pass on one image, before optimisation: a
multiply-add counts 2 and a convolution tap that falls on zero padding counts 0, so a 3x3
convolution at 32x32 costs a little less than ``2 * 9 * C_in * C_out * 32 * 32``. (Papers
and timm often quote multiply-adds, "GMACs": about half of this.)
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import ml_collections as mlc

from cv_jax.training import runs
from cv_jax.training.state import init_variables


def forward_flops(config: mlc.ConfigDict, num_classes: int,
                  image_shape: tuple[int, int, int]) -> float:
    """FLOPs of one inference-mode forward pass of ``config.model`` on one image (H, W, C)."""
    model_key = json.dumps(config.model.to_dict(), sort_keys=True, default=str)
    return _forward_flops(model_key, config.training.compute_dtype, num_classes,
                          tuple(image_shape))


@functools.lru_cache(maxsize=64)
def _forward_flops(model_key: str, compute_dtype: str, num_classes: int,
                   image_shape: tuple[int, int, int]) -> float:
    config = mlc.ConfigDict({"model": json.loads(model_key),
                             "training": {"compute_dtype": compute_dtype}})
    model = runs.build_model(config, num_classes)
    key = jax.random.key_data(jax.random.key(0))
    variables = jax.eval_shape(lambda: init_variables(model, key, image_shape))
    image = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    cost = jax.jit(functools.partial(model.apply, train=False)).lower(variables, image)
    cost = cost.cost_analysis()
    if isinstance(cost, list):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    return float(cost["flops"])


def run_gflops(workdir: str, signature: dict) -> float | None:
    """Forward GFLOPs per image of the run in ``workdir``, at the image shape and number of
    classes its checkpoint ``signature`` records; None when this version of cv_jax cannot build
    the run's model (a model name or argument it does not know)."""
    config = runs.read_config(workdir)
    try:
        model_flops = forward_flops(config, len(signature["class_names"]),
                                    tuple(signature["image_shape"]))
    except ValueError:
        return None
    return model_flops / 1e9
