"""A run's model and optimizer from its config, and a trained run loaded back from its workdir
(config, model and restored state)."""

from __future__ import annotations

import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import optax

from cv_jax import models
from cv_jax.config import base_config, model_kwargs
from cv_jax.models import heads
from cv_jax.models.cpu import formulations
from cv_jax.models.layers import PLAIN, LayerImpl
from cv_jax.optim import chain, lr, opt_state
from cv_jax.training import checkpoint, sharding
from cv_jax.training.state import TrainState, create_train_state, ema_view, init_variables

CHECKPOINTS = ("latest", "best")


@dataclasses.dataclass
class Run:
    config: mlc.ConfigDict
    model: nn.Module
    state: TrainState
    signature: dict
    step: int
    workdir: str = ""

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.signature["class_names"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.signature["image_shape"])

    def eval_state(self, weights: str = "raw") -> TrainState:
        """The state as evaluation sees it: ``'raw'`` weights (a schedule-free or SAM
        optimizer's evaluation weights) or ``'ema'``, the moving average of weights and
        BatchNorm statistics (needs ``training.ema_decay > 0``)."""
        if weights == "raw":
            return opt_state.eval_state(self.state)
        if weights != "ema":
            raise ValueError(f"weights={weights!r}: use 'raw' or 'ema'")
        if not self.config.training.ema_decay:
            raise ValueError(
                f"the run in {self.workdir} kept no moving average of its weights "
                "(config.training.ema_decay=0); use weights='raw', or train a run with "
                "--config.training.ema_decay=0.999"
            )
        return ema_view(self.state)


def training_layers(config: mlc.ConfigDict) -> LayerImpl:
    """The layer implementations a run trains its model with: the CPU formulations
    (``cv_jax.models.cpu.formulations.CPU``) where ``config.training.cpu_formulations`` resolves
    to on, plain layers otherwise; BatchNorm frozen where ``transfer.freezes_batch_norm``."""
    layer_impl = formulations.CPU if uses_cpu_formulations(config) else PLAIN
    return dataclasses.replace(layer_impl, frozen_batch_norm=freezes_batch_norm(config))


def uses_cpu_formulations(config: mlc.ConfigDict) -> bool:
    """``config.training.cpu_formulations`` resolved: 'auto' is on for the CPU backend."""
    choice = config.training.cpu_formulations
    return choice == "on" or (choice == "auto" and jax.default_backend() == "cpu")


def freezes_batch_norm(config: mlc.ConfigDict) -> bool:
    """Whether BatchNorm runs in inference mode while training (``transfer.batch_norm``;
    'auto': for a transfer run in linear_probe or staged mode, as Keras does for a frozen
    base)."""
    setting = config.transfer.batch_norm
    if setting == "auto":
        return bool(config.transfer.init_from) and config.transfer.mode in ("linear_probe",
                                                                           "staged")
    return setting == "frozen"


def build_model(config: mlc.ConfigDict, num_classes: int,
                layer_impl: LayerImpl = PLAIN) -> nn.Module:
    """The model ``config.model`` describes, for ``num_classes`` classes, built with
    ``layer_impl``: :func:`training_layers` for the train step; plain layers (the default) for
    evaluation and inference, which then compute alike on every backend (the CPU kernels'
    convolution rounds differently from XLA's)."""
    return models.create_model(config.model.name, num_classes=num_classes,
                               dtype=jnp.dtype(config.training.compute_dtype),
                               layer_impl=layer_impl, **model_kwargs(config.model))


def head_paths(config: mlc.ConfigDict, num_classes: int,
               image_shape: tuple[int, ...]) -> frozenset[str]:
    """The paths of the model's head (:func:`cv_jax.models.heads.head_paths`)."""
    return heads.head_paths(lambda k: build_model(config, k), num_classes, image_shape)


def build_optimizer(config: mlc.ConfigDict, schedule: optax.Schedule, num_classes: int,
                    image_shape: tuple[int, ...],
                    steps_per_epoch: int) -> optax.GradientTransformation:
    """The run's optimizer (:func:`cv_jax.optim.chain.run_optimizer`), split at the model's
    head when it is a transfer run whose head and backbone learn differently."""
    head = (head_paths(config, num_classes, image_shape) if lr.splits_by_transfer(config)
            else frozenset())
    return chain.run_optimizer(config, schedule, head, steps_per_epoch)


def read_config(workdir: str) -> mlc.ConfigDict:
    """The resolved config a run saved in ``workdir/config.json``, laid over today's defaults
    (so a run saved before a config key existed reads it at its neutral default)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} does not exist: {workdir} is not a cv_jax run directory "
            "(train one with python -m cv_jax.main --workdir=...)"
        )
    with open(path) as f:
        saved = json.load(f)
    return mlc.ConfigDict(_overlay(base_config().to_dict(), saved))


def _overlay(defaults: dict, saved: dict) -> dict:
    """``saved`` with the keys it lacks filled from ``defaults``, section by section."""
    merged = dict(defaults)
    for key, value in saved.items():
        if isinstance(value, dict) and isinstance(defaults.get(key), dict):
            value = _overlay(defaults[key], value)
        merged[key] = value
    return merged


def load_run(workdir: str, which: str = "latest", num_devices: int = 0) -> Run:
    """Restores the ``'latest'`` or ``'best'`` checkpoint of a run, replicated over the mesh."""
    if which not in CHECKPOINTS:
        raise ValueError(f"checkpoint {which!r} of {workdir}: use one of {CHECKPOINTS}")
    config = read_config(workdir)
    ckpt = checkpoint.Checkpoints.for_run(workdir, config)
    step = ckpt.best_step() if which == "best" else ckpt.latest_step()
    if step is None:
        raise FileNotFoundError(
            f"{ckpt.directory} holds no checkpoint: the run in {workdir} has not saved one yet. "
            f"Train it (python -m cv_jax.main --workdir={workdir} ...) or wait until it saves "
            "its first evaluated checkpoint."
        )
    sig = ckpt.signature(step)
    model = build_model(config, len(sig["class_names"]))
    # The optimizer only fixes the structure of opt_state; any schedule callable gives the same.
    tx = build_optimizer(config, lambda count: 0.0, len(sig["class_names"]),
                         tuple(sig["image_shape"]), steps_per_epoch=1)

    def skeleton():
        variables = init_variables(model, jax.random.key_data(jax.random.key(0)),
                                   tuple(sig["image_shape"]))
        return create_train_state(model, tx, variables, jax.random.key_data(jax.random.key(0)),
                                  ema=config.training.ema_decay > 0,
                                  slow=config.optimizer.lookahead_every > 0)

    mesh = sharding.make_mesh(num_devices)
    abstract = jax.eval_shape(skeleton)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.replicated(mesh)),
        abstract)
    state = ckpt.restore(step, abstract, sig)
    ckpt.close()
    return Run(config, model, state, sig, step, workdir)
