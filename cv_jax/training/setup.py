"""From a config and its loaded data to what the training loop needs: the device mesh, the
schedule, optimizer and step settings, the initial state, the training set and the teacher on
the devices, and the train step and the evaluators compiled ahead of the loop.

Every run is set up here: ``train.train_and_evaluate`` and the time-budget timing
(``compile_run``), the vectorised run (its own stacked state and step; the device data and the
compiling here) and the LR range test (its own optimizer; no evaluators).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import optax

from cv_jax import models
from cv_jax.config import ConfigError
from cv_jax.data import pipeline
from cv_jax.data.dataset import ArrayDataset, Split
from cv_jax.optim import lr
from cv_jax.training import distill, losses, runs, sharding, steps, streamed, transfer
from cv_jax.training.clock import Clock
from cv_jax.training.datasets import Datasets
from cv_jax.training.evaluation import Evaluator, make_evaluators
from cv_jax.training.loop import Program
from cv_jax.training.plan import Plan
from cv_jax.training.state import TrainState, create_train_state, init_variables

log = logging.getLogger("cv_jax")


def step_settings(config: mlc.ConfigDict, train: Split, plan: Plan,
                  schedule: optax.Schedule) -> steps.TrainSettings:
    """The train step settings of a run (class weights come from the training labels)."""
    weights = losses.class_weights(config.loss.class_weights, train.labels,
                                   len(train.class_names))
    return steps.TrainSettings.from_config(config, schedule, plan.steps_per_epoch, weights,
                                           plan.total_steps)


def optimizer_and_settings(config: mlc.ConfigDict, train: Split, plan: Plan):
    """``(schedule, tx, settings)`` of a run: the LR schedule over its plan, the optimizer
    (split by the transfer mode) and the step settings."""
    schedule = lr.schedule(config, plan.steps_per_epoch, plan.total_steps)
    tx = runs.build_optimizer(config, schedule, len(train.class_names), train.image_shape,
                              plan.steps_per_epoch)
    return schedule, tx, step_settings(config, train, plan, schedule)


def check_batch_size(batch_size: int, num_devices: int, key: str) -> None:
    if batch_size % num_devices:
        nearest = max(num_devices, batch_size // num_devices * num_devices)
        raise ConfigError(
            f"config.{key}={batch_size} does not divide across the {num_devices} devices; "
            f"use a multiple of {num_devices} (e.g. {nearest})"
        )


def make_mesh(config: mlc.ConfigDict) -> jax.sharding.Mesh:
    """The run's mesh over ``training.num_devices`` devices; its batch must divide across them."""
    mesh = sharding.make_mesh(config.training.num_devices)
    check_batch_size(config.training.batch_size, mesh.devices.size, "training.batch_size")
    return mesh


def train_step_fn(settings: steps.TrainSettings, batch_size: int, mesh: jax.sharding.Mesh):
    """The step, not jitted: slice the epoch permutation, gather the batch, update the state
    (:func:`batch_step_fn`). Its last argument is the distillation teacher, or None."""
    step = batch_step_fn(settings, mesh)

    def run(state, images, labels, permutation, index, teacher=None):
        with jax.named_scope("data"):  # the phase in a profiler trace (steps.train_step)
            idx = jax.lax.dynamic_slice_in_dim(permutation, index * batch_size, batch_size)
            images, labels = images[idx], labels[idx]
        return step(state, images, labels, idx, teacher)

    return run


def batch_step_fn(settings: steps.TrainSettings, mesh: jax.sharding.Mesh):
    """The step on a given batch, not jitted: images, labels and the examples' indices in the
    training set, split over the mesh (the streaming pipeline's step)."""

    def run(state, images, labels, indices, teacher=None):
        with jax.named_scope("data"):
            batch = {"image": images, "label": labels, "index": indices}
            batch = jax.lax.with_sharding_constraint(batch, sharding.batch_split(mesh))
        return steps.train_step(state, batch, settings, teacher)

    return run


def scan_steps(step, count: int):
    """``count`` calls of ``step`` (a function like :func:`train_step_fn`'s) as one
    ``lax.scan``, the batch index advancing by one each time: the state after the last step,
    and the steps' metrics stacked on a leading axis."""

    def run(state, images, labels, permutation, index, teacher=None):
        def body(state, i):
            return step(state, images, labels, permutation, index + i, teacher)

        return jax.lax.scan(body, state, jnp.arange(count, dtype=jnp.int32))

    return run


def jit_steps(step, mesh: jax.sharding.Mesh, steps_per_call: int = 1):
    """``step`` (a function like :func:`train_step_fn`'s), or with ``steps_per_call`` > 1
    :func:`scan_steps` of it, jitted: the state is donated, the outputs replicated."""
    repl = sharding.replicated(mesh)
    if steps_per_call > 1:
        step = scan_steps(step, steps_per_call)
    return jax.jit(step, donate_argnums=0, out_shardings=(repl, repl))


def make_train_step(settings: steps.TrainSettings, batch_size: int, mesh: jax.sharding.Mesh,
                    steps_per_call: int = 1):
    """:func:`train_step_fn`, jitted (:func:`jit_steps`)."""
    return jit_steps(train_step_fn(settings, batch_size, mesh), mesh, steps_per_call)


def seed_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """``(init_key, state_key)`` of a seed: the model's initialisation and the run's base key
    (per-step augmentation and dropout keys are folded from it)."""
    init_key, state_key = jax.random.split(jax.random.key_data(jax.random.key(seed)))
    return init_key, state_key


def shuffle_key(config: mlc.ConfigDict) -> jax.Array:
    """The key of the training-example order: from ``data_seed``, or ``seed`` when it is -1
    (so runs that differ only in ``seed`` but share ``data_seed`` see the same batches)."""
    seed = config.seed if config.data_seed < 0 else config.data_seed
    return jax.random.fold_in(seed_keys(seed)[1], 1)


def permutations(train: Split, config: mlc.ConfigDict, mesh: jax.sharding.Mesh):
    """``permute(epoch)``: that epoch's order of the training examples, on the devices (jitted;
    the same for every run with the same shuffle key, resident or streaming)."""
    repl = sharding.replicated(mesh)
    key = jax.device_put(shuffle_key(config), repl)
    permute = jax.jit(functools.partial(pipeline.epoch_permutation, n=len(train)),
                      out_shardings=repl)
    return lambda epoch: permute(key, epoch)


def device_train_set(train: ArrayDataset, config: mlc.ConfigDict, mesh: jax.sharding.Mesh):
    """The training images and labels on the devices, and ``permute(epoch)``
    (:func:`permutations`)."""
    images, labels = jax.device_put((train.images, train.labels), sharding.replicated(mesh))
    return images, labels, permutations(train, config, mesh)


def create_model(config: mlc.ConfigDict, train: Split) -> nn.Module:
    """The run's model (``config.model``) for the classes of ``train``, as the train step
    applies it: built with the run's training layers (``runs.training_layers``)."""
    return runs.build_model(config, len(train.class_names), runs.training_layers(config))


def build_state(config: mlc.ConfigDict, train: Split, settings: steps.TrainSettings,
                tx, mesh: jax.sharding.Mesh, clock: Clock | None = None) -> TrainState:
    """A fresh state: model init, data-dependent init (on ``clock``), replicated over the
    mesh."""
    advice = models.input_size_advice(config.model.name, train.image_shape[:2])
    if advice:
        log.warning("%s", advice)
    model = create_model(config, train)
    init_key, state_key = seed_keys(config.seed)
    variables = jax.block_until_ready(
        jax.jit(lambda key: init_variables(model, key, train.image_shape))(init_key))
    with (clock or Clock()).timing():
        variables = jax.block_until_ready(models.data_dependent_init(
            config.model.name, variables,
            functools.partial(train.head, config.model_init_examples),
            functools.partial(steps.normalize, normalization=settings.normalization)))
    if transfer.enabled(config):
        variables = transfer.initialize(config, variables, len(train.class_names),
                                        train.image_shape)
    ema, slow = config.training.ema_decay > 0, config.optimizer.lookahead_every > 0
    state = jax.jit(lambda v, k: create_train_state(model, tx, v, k, ema, slow))(
        variables, state_key)
    return jax.device_put(state, sharding.replicated(mesh))


def initial_state(config: mlc.ConfigDict, train: Split, plan: Plan,
                  mesh: jax.sharding.Mesh, clock: Clock | None = None
                  ) -> tuple[steps.TrainSettings, TrainState]:
    """The run's train step settings and fresh state, its optimizer over ``plan``
    (:func:`optimizer_and_settings`)."""
    _, tx, settings = optimizer_and_settings(config, train, plan)
    return settings, build_state(config, train, settings, tx, mesh, clock)


def device_program(config: mlc.ConfigDict, train: Split, plan: Plan,
                   mesh: jax.sharding.Mesh, make_step: Callable[[int], Callable],
                   steps_per_call: int | None = None) -> Program:
    """What the loop runs: the train step ``make_step(1)`` (``make_step(k)``: k steps per call,
    jitted) over the training set on the devices, with the config's distillation teacher (or
    none); ``steps_per_call`` (default ``training.steps_per_call``) > 1 adds ``make_step`` of
    it."""
    k = config.training.steps_per_call if steps_per_call is None else steps_per_call
    images, labels, permute = device_train_set(train, config, mesh)
    teacher = distill.load_teacher(config, train.class_names, mesh)
    return Program(make_step(1), images, labels, permute, plan.steps_per_epoch, teacher,
                   steps_per_call=k, train_steps=make_step(k) if k > 1 else None)


def streamed_program(config: mlc.ConfigDict, train: Split, plan: Plan,
                     mesh: jax.sharding.Mesh, settings: steps.TrainSettings) -> Program:
    """What the loop runs with ``dataset.pipeline='streaming'``: the streamed train step over
    the training split's Grain stream (``cv_jax.training.streamed``), in the order the
    resident pipeline would take, with the config's distillation teacher (or none)."""
    permute = permutations(train, config, mesh)
    stream = streamed.make_stream(config, train, plan.steps_per_epoch, permute)
    teacher = distill.load_teacher(config, train.class_names, mesh)
    return Program(jit_steps(batch_step_fn(settings, mesh), mesh), None, None, None,
                   plan.steps_per_epoch, teacher,
                   stream=streamed.StreamedBatches(stream, mesh, train.image_shape))


@dataclasses.dataclass
class Compiled:
    """A run's program and evaluators, compiled ahead of the loop, and how long that took."""

    program: Program
    evaluators: dict[str, Evaluator]
    compile_time: float


def compile_program(program: Program, state: TrainState,
                    evaluators: dict[str, Evaluator] | None = None,
                    eval_state: TrainState | None = None) -> Compiled:
    """``program`` with its train step (and its ``train_steps``) compiled for ``state`` and
    the ``evaluators`` compiled for ``eval_state`` (default: ``state``)."""
    evaluators = evaluators or {}
    start = time.perf_counter()
    arguments = (state, *program.example_data(), program.teacher)
    compiled = {"train_step": program.train_step.lower(*arguments).compile()}
    if program.train_steps is not None:
        compiled["train_steps"] = program.train_steps.lower(*arguments).compile()
    for evaluator in evaluators.values():
        evaluator.compile(state if eval_state is None else eval_state)
    compile_time = time.perf_counter() - start
    log.info("Compiled in %.1f s.", compile_time)
    return Compiled(dataclasses.replace(program, **compiled), evaluators, compile_time)


def compile_run(config: mlc.ConfigDict, data: Datasets, plan: Plan, mesh: jax.sharding.Mesh,
                settings: steps.TrainSettings, state: TrainState,
                steps_per_call: int | None = None) -> Compiled:
    """A run's train step (from ``settings``; ``steps_per_call``: as :func:`device_program`)
    over its training set and teacher on the devices, and its evaluators, compiled for
    ``state``."""
    def make_step(k):
        return make_train_step(settings, config.training.batch_size, mesh, k)

    if config.dataset.pipeline == "streaming":
        program = streamed_program(config, data.train, plan, mesh, settings)
    else:
        program = device_program(config, data.train, plan, mesh, make_step, steps_per_call)
    return compile_program(program, state, make_evaluators(config, data, mesh))
