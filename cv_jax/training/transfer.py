"""Transfer learning: start from another run's (or imported torchvision) weights with a new
head, and train in one of four modes (``config.transfer.mode``):

* ``linear_probe``  the backbone is frozen (zero updates, bit-identical) and its BatchNorm layers
  run in inference mode, like Keras' ``base_model.trainable = False``; only the head learns.
* ``finetune``      every layer learns at the run's learning rate.
* ``discriminative`` the backbone learns at ``backbone_lr_multiplier`` x the head's rate.
* ``staged``        linear probe for ``frozen_epochs``, then the backbone is unfrozen at
  ``backbone_lr_multiplier`` x the schedule (its optimizer state starting fresh, as after a
  Keras recompile); BatchNorm stays in inference mode throughout, as the Keras guide does.

The head is found, not named: it is every parameter whose shape depends on the number of
classes (:mod:`cv_jax.models.heads`). Everything else is the backbone and is copied from the
source, which must have the same architecture. How each side learns is decided with the rest of
the learning rate, in :mod:`cv_jax.optim.lr`.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
from flax import traverse_util

from cv_jax.models import pretrained
from cv_jax.models.torchvision_import import import_pretrained, load_variables
from cv_jax.training import runs

MODES = ("linear_probe", "finetune", "discriminative", "staged")


class TransferError(ValueError):
    """The source weights cannot initialise this run's model."""


def enabled(config: mlc.ConfigDict) -> bool:
    return bool(config.transfer.init_from)


def flat(tree: Any) -> dict[str, Any]:
    """``{'a/b/kernel': leaf}`` of a nested dict of arrays."""
    return {"/".join(map(str, k)): v for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def source_variables(config: mlc.ConfigDict) -> dict[str, Any]:
    """``{'params', 'batch_stats'}`` named by ``config.transfer.init_from``: a run's workdir
    (its best or latest checkpoint, raw or EMA weights), a ``.msgpack`` of variables written
    by ``python -m cv_jax.models.torchvision_import``, or torchvision's published weights
    (``torchvision:NAME[.WEIGHTS]``, fetched into the cache on first use)."""
    cfg = config.transfer
    path = cfg.init_from
    if pretrained.is_spec(path):
        return _torchvision_variables(config)
    if os.path.isfile(path):
        variables = load_variables(path)
        return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    if not os.path.isdir(path):
        raise TransferError(f"config.transfer.init_from={path!r} is neither a run directory nor "
                            "a .msgpack weights file")
    source = runs.read_config(path)
    if source.model.name != config.model.name:
        raise TransferError(
            f"config.transfer.init_from={path!r} holds a {source.model.name!r} but this run "
            f"builds {config.model.name!r}; use the same model (config.model.name)")
    run = runs.load_run(path, cfg.checkpoint, num_devices=1)
    try:
        state = run.eval_state(cfg.weights)
    except ValueError as e:
        raise TransferError(f"config.transfer.weights={cfg.weights!r}: {e}") from None
    return jax.device_get({"params": state.params, "batch_stats": state.batch_stats})


def _torchvision_variables(config: mlc.ConfigDict) -> dict[str, Any]:
    spec = config.transfer.init_from
    name, _ = pretrained.parse(spec)
    if name != config.model.name:
        raise TransferError(f"config.transfer.init_from={spec!r} holds a {name!r} but this run "
                            f"builds {config.model.name!r}; use the same model "
                            "(config.model.name)")
    try:
        variables = import_pretrained(spec)
    except (ValueError, ImportError) as e:
        raise TransferError(f"config.transfer.init_from={spec!r}: {e}") from None
    return {"params": variables["params"], "batch_stats": variables["batch_stats"]}


def init_backbone(variables: dict, source: dict, head: frozenset[str],
                  origin: str) -> dict:
    """``variables`` with every non-head leaf (parameters and BatchNorm statistics) replaced by
    the source's. Raises TransferError naming the first path the source lacks or has in
    another shape."""
    result = {}
    for collection, tree in variables.items():
        if collection not in ("params", "batch_stats"):
            result[collection] = tree
            continue
        target, given = flat(tree), flat(source.get(collection, {}))
        merged = {}
        for path, leaf in target.items():
            if collection == "params" and path in head:
                merged[path] = leaf
                continue
            if path not in given:
                raise TransferError(f"{origin} has no {collection} {path!r} (shape "
                                    f"{tuple(leaf.shape)}); is it the same architecture?")
            if tuple(given[path].shape) != tuple(leaf.shape):
                raise TransferError(
                    f"{origin}: {collection} {path!r} has shape {tuple(given[path].shape)}, "
                    f"this model needs {tuple(leaf.shape)}; use the source's architecture and "
                    "model settings")
            merged[path] = jnp.asarray(given[path], leaf.dtype)
        result[collection] = traverse_util.unflatten_dict(
            {tuple(k.split("/")): v for k, v in merged.items()})
    return result


def initialize(config: mlc.ConfigDict, variables: dict, num_classes: int,
               image_shape: tuple[int, ...]) -> dict:
    """Freshly initialised ``variables`` with the backbone taken from ``transfer.init_from``."""
    head = runs.head_paths(config, num_classes, image_shape)
    return init_backbone(variables, source_variables(config), head,
                         origin=f"config.transfer.init_from={config.transfer.init_from!r}")
