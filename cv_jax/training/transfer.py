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
classes (the final classifier, and GoogLeNet's auxiliary classifiers). Everything else is the
backbone and is copied from the source, which must have the same architecture.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections as mlc
import optax
from flax import traverse_util

from cv_jax import models
from cv_jax.config import model_kwargs
from cv_jax.optim import chain as optim
from cv_jax.training.state import init_variables

MODES = ("linear_probe", "finetune", "discriminative", "staged")


class TransferError(ValueError):
    """The source weights cannot initialise this run's model."""


def enabled(config: mlc.ConfigDict) -> bool:
    return bool(config.transfer.init_from)


def head_paths(config: mlc.ConfigDict, num_classes: int,
               image_shape: tuple[int, ...]) -> frozenset[str]:
    """Paths ('fc/kernel', ...) of the parameters whose shapes change with the class count."""

    def shapes(k: int) -> dict[str, tuple[int, ...]]:
        model = models.create_model(config.model.name, num_classes=k,
                                    **model_kwargs(config.model))
        key = jax.random.key_data(jax.random.key(0))
        params = jax.eval_shape(lambda: init_variables(model, key, image_shape))["params"]
        return {path: leaf.shape for path, leaf in flat(params).items()}

    one, other = shapes(num_classes), shapes(num_classes + 1)
    return frozenset(path for path in one if one[path] != other[path])


def flat(tree: Any) -> dict[str, Any]:
    """``{'a/b/kernel': leaf}`` of a nested dict of arrays."""
    return {"/".join(map(str, k)): v for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def source_variables(config: mlc.ConfigDict) -> dict[str, Any]:
    """``{'params', 'batch_stats'}`` named by ``config.transfer.init_from``: a run's workdir
    (its best or latest checkpoint, raw or EMA weights) or a ``.msgpack`` of variables written
    by ``python -m cv_jax.models.torchvision_import``."""
    cfg = config.transfer
    path = cfg.init_from
    if os.path.isfile(path):
        from cv_jax.models.torchvision_import import load_variables

        variables = load_variables(path)
        return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    if not os.path.isdir(path):
        raise TransferError(f"config.transfer.init_from={path!r} is neither a run directory nor "
                            "a .msgpack weights file")
    from cv_jax.training import runs

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


def backbone_labels(head: frozenset[str]) -> Callable[[Any], Any]:
    """A labelling function for ``optax.multi_transform``: 'head' or 'backbone' per leaf."""
    return lambda params: jax.tree_util.tree_map_with_path(
        lambda path, _: "head" if optim.param_path(path) in head else "backbone", params)


class DelayedState(NamedTuple):
    count: jax.Array
    inner: Any


def delayed(inner: optax.GradientTransformation, start: int) -> optax.GradientTransformation:
    """Zero updates for the first ``start`` steps, then ``inner`` (whose state, and step count,
    start at that point: nothing is accumulated while frozen)."""

    def init(params):
        return DelayedState(jnp.zeros([], jnp.int32), inner.init(params))

    def update(updates, state, params=None):
        def run(_):
            return inner.update(updates, state.inner, params)

        def hold(_):
            return jax.tree.map(jnp.zeros_like, updates), state.inner

        new_updates, new_inner = jax.lax.cond(state.count >= start, run, hold, None)
        return new_updates, DelayedState(state.count + 1, new_inner)

    return optax.GradientTransformation(init, update)


def create_optimizer(config: mlc.ConfigDict, schedule: optax.Schedule,
                     head: frozenset[str], steps_per_epoch: int) -> optax.GradientTransformation:
    """The run's optimizer (``optim.create_optimizer``) split into head and backbone as the
    transfer mode says. The backbone's schedule is ``backbone_lr_multiplier`` x the run's."""
    cfg = config.transfer
    head_tx = optim.create_optimizer(config, schedule)
    if cfg.mode == "finetune":
        return head_tx
    factor = cfg.backbone_lr_multiplier
    if cfg.mode == "linear_probe":
        backbone_tx = optax.set_to_zero()
    elif cfg.mode == "discriminative":
        backbone_tx = optim.create_optimizer(config, lambda count: factor * schedule(count))
    else:  # staged
        start = round(cfg.frozen_epochs * steps_per_epoch)
        backbone_tx = delayed(
            optim.create_optimizer(config, lambda count: factor * schedule(count + start)), start)
    return optax.multi_transform({"head": head_tx, "backbone": backbone_tx},
                                 backbone_labels(head))


def run_optimizer(config: mlc.ConfigDict, schedule: optax.Schedule, num_classes: int,
                  image_shape: tuple[int, ...],
                  steps_per_epoch: int) -> optax.GradientTransformation:
    """The optimizer of a run: ``optim.create_optimizer``, split by the transfer mode when the
    run starts from other weights, and skipping non-finite steps if the config says so."""
    if not enabled(config) or config.transfer.mode == "finetune":
        return optim.skip_nonfinite(config, optim.create_optimizer(config, schedule))
    head = head_paths(config, num_classes, image_shape)
    return optim.skip_nonfinite(config, create_optimizer(config, schedule, head, steps_per_epoch))


def initialize(config: mlc.ConfigDict, variables: dict, num_classes: int,
               image_shape: tuple[int, ...]) -> dict:
    """Freshly initialised ``variables`` with the backbone taken from ``transfer.init_from``."""
    head = head_paths(config, num_classes, image_shape)
    return init_backbone(variables, source_variables(config), head,
                         origin=f"config.transfer.init_from={config.transfer.init_from!r}")


def freezes_batch_norm(config: mlc.ConfigDict) -> bool:
    """Whether BatchNorm runs in inference mode while training (``transfer.batch_norm``;
    'auto': for linear_probe and staged, as Keras does for a frozen base)."""
    setting = config.transfer.batch_norm
    if setting == "auto":
        return enabled(config) and config.transfer.mode in ("linear_probe", "staged")
    return setting == "frozen"
