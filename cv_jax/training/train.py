"""``train_and_evaluate(config, workdir)``: assemble a run from its config, train, evaluate,
checkpoint and log. Rerunning with the same workdir resumes; a finished run just reports.

Data flows one way: config -> data, model, optimizer -> TrainState -> steps -> metrics and
checkpoints. The training set stays on the devices for the whole run; each step gathers
its batch from the epoch's permutation inside jit, so the host only dispatches steps.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import platform
import time
from typing import Any

import flax.linen as nn
import jax
import ml_collections as mlc
import numpy as np
import optax

from cv_jax import models
from cv_jax.config import ConfigError, validate
from cv_jax.data import pipeline
from cv_jax.data.dataset import ArrayDataset
from cv_jax.data.locate import find_dataset
from cv_jax.data.sources import check_same_classes, load_split
from cv_jax.optim import lr, opt_state
from cv_jax.optim.plateau import plateau_updater
from cv_jax.training import (
    checkpoint,
    distill,
    early_stopping,
    losses,
    preemption,
    runs,
    sharding,
    steps,
    time_budget,
    transfer,
)
from cv_jax.training.metrics import (
    MetricWriter,
    Progress,
    classification_metrics,
    drop_records_after,
    mean_metrics,
)
from cv_jax.training.state import TrainState, create_train_state, ema_view, init_variables

log = logging.getLogger("cv_jax")


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite."""


@dataclasses.dataclass
class Datasets:
    train: ArrayDataset
    test: ArrayDataset
    validation: ArrayDataset | None = None  # carved from train when dataset.validation_size > 0
    skipped: tuple[tuple[str, str], ...] = ()  # (file, reason) under dataset.bad_files='skip'

    def eval_sets(self) -> dict[str, ArrayDataset]:
        """The splits evaluated during training, by the name used in metrics."""
        extra = {"validation": self.validation} if self.validation is not None else {}
        return extra | {"test": self.test}



def load_datasets(config: mlc.ConfigDict) -> Datasets:
    """Reads (or loads from cache) the splits named by ``config.dataset``; with featurewise
    normalisation, sets ``config.dataset.mean``/``std`` from the training split."""
    cfg = config.dataset
    source = find_dataset(cfg.name, cfg.data_dir or None)
    size = tuple(cfg.image_size) or None
    train, test = (load_split(source, split, image_size=size, cache_dir=cfg.cache_dir or None,
                              bad_files=cfg.bad_files)
                   for split in (cfg.train_split, cfg.test_split))
    skipped = train.skipped + test.skipped
    check_same_classes(train, test, cfg.test_split)
    train, test = (pipeline.select_classes(split, cfg.classes) for split in (train, test))
    train, validation = pipeline.split_validation(train, cfg.validation_size)
    if validation is not None:
        validation = pipeline.limit(validation, cfg.max_eval_examples)
    train = pipeline.limit(train, cfg.max_train_examples)
    if cfg.num_folds:
        if validation is not None or config.early_stopping.patience:
            # checkpoint.selection reads validation_size: with folds it would pick on test.
            raise ConfigError(
                f"config.dataset.num_folds={cfg.num_folds} holds out a fold as the validation "
                "split: set config.dataset.validation_size=0 and config.early_stopping.patience=0")
        train, validation = pipeline.split_fold(train, cfg.num_folds, cfg.fold,
                                                cfg.stratified_folds)
    train = pipeline.long_tailed(train, cfg.imbalance_ratio)
    train = pipeline.semi_supervised(train, cfg.num_labelled, cfg.labelled_seed,
                                     cfg.pseudo_labels)
    train = pipeline.rebalance(train, cfg.balance)
    train = pipeline.resample(train, cfg.resample_seed, cfg.resample_weights)
    test = pipeline.limit(test, cfg.max_eval_examples)
    resolve_normalization(config, train)
    return Datasets(train, test, validation, skipped)


def resolve_normalization(config: mlc.ConfigDict, train: ArrayDataset) -> None:
    """With ``dataset.normalization='featurewise'``, set ``dataset.mean``/``std`` to the training
    set's per-channel statistics (so the saved config holds the values the run used)."""
    if config.dataset.normalization == "featurewise":
        mean, std = pipeline.channel_stats(train)
        config.dataset.mean, config.dataset.std = mean, std
        log.info("Featurewise normalisation from %d training images: mean %s, std %s",
                 len(train), np.round(mean, 4).tolist(), np.round(std, 4).tolist())


def step_settings(config: mlc.ConfigDict, train: ArrayDataset, plan: Plan,
                  schedule: optax.Schedule) -> steps.StepSettings:
    """The train/eval step settings of a run (class weights come from the training labels)."""
    weights = losses.class_weights(config.loss.class_weights, train.labels,
                                   len(train.class_names))
    return steps.StepSettings.from_config(config, schedule, plan.steps_per_epoch, weights)


def optimizer_and_settings(config: mlc.ConfigDict, train: ArrayDataset, plan: Plan):
    """``(schedule, tx, settings)`` of a run: the LR schedule over its plan, the optimizer
    (split by the transfer mode) and the step settings."""
    schedule = lr.schedule(config, plan.steps_per_epoch, plan.total_steps)
    tx = runs.build_optimizer(config, schedule, len(train.class_names), train.images.shape[1:],
                              plan.steps_per_epoch)
    return schedule, tx, step_settings(config, train, plan, schedule)


def check_batch_size(batch_size: int, num_devices: int, key: str) -> None:
    if batch_size % num_devices:
        nearest = max(num_devices, batch_size // num_devices * num_devices)
        raise ConfigError(
            f"config.{key}={batch_size} does not divide across the {num_devices} devices; "
            f"use a multiple of {num_devices} (e.g. {nearest})"
        )


@dataclasses.dataclass
class Plan:
    """How long the run is, in steps."""

    steps_per_epoch: int
    total_steps: int
    eval_every_steps: int
    checkpoint_every_steps: int = 0  # between evaluations; 0 = only at evaluations

    @classmethod
    def from_config(cls, config: mlc.ConfigDict, num_train: int) -> Plan:
        t = config.training
        spe = num_train // t.batch_size
        if spe == 0:
            raise ConfigError(
                f"config.training.batch_size={t.batch_size} is larger than the training set "
                f"({num_train} examples); lower it"
            )
        total = t.num_steps or math.ceil(t.num_epochs * spe)
        return cls(spe, total, max(1, round(t.eval_every_epochs * spe)), t.checkpoint_every_steps)

    def is_eval_step(self, step: int) -> bool:
        return step % self.eval_every_steps == 0 or step == self.total_steps

    def is_checkpoint_step(self, step: int) -> bool:
        every = self.checkpoint_every_steps
        return self.is_eval_step(step) or bool(every and step % every == 0)


class Evaluator:
    """Exact evaluation of a dataset: padded to whole batches on device, padding dropped. It
    applies ``model`` (a run's :func:`evaluation_model`) to the weights of the states it is
    given, or, without one, each state's own model (``state.apply_fn``)."""

    def __init__(self, dataset: ArrayDataset, batch_size: int, settings: steps.StepSettings,
                 mesh: jax.sharding.Mesh, model: nn.Module | None = None):
        self.dataset = dataset
        images, labels = pipeline.pad_to_multiple(dataset, batch_size)
        self.num_batches = len(images) // batch_size
        repl = sharding.replicated(mesh)
        self.images, self.labels = jax.device_put((images, labels), repl)

        def run(state, images, labels, index):
            start = index * batch_size
            batch = {"image": jax.lax.dynamic_slice_in_dim(images, start, batch_size),
                     "label": jax.lax.dynamic_slice_in_dim(labels, start, batch_size)}
            batch = jax.lax.with_sharding_constraint(batch, sharding.batch_split(mesh))
            if model is not None:
                state = state.replace(apply_fn=model.apply)
            return steps.eval_step(state, batch, settings)

        self.step = jax.jit(run, out_shardings=repl)

    def compile(self, state: TrainState) -> None:
        self.step = self.step.lower(state, self.images, self.labels, 0).compile()

    def predictions(self, state: TrainState) -> dict[str, np.ndarray]:
        """Per-example prediction and loss for every example, in dataset order."""
        outputs = [self.step(state, self.images, self.labels, i) for i in range(self.num_batches)]
        outputs = jax.device_get(outputs)
        n = len(self.dataset)
        return {k: np.concatenate([o[k] for o in outputs])[:n] for k in outputs[0]}

    def __call__(self, state: TrainState) -> dict[str, Any]:
        return summarize(self.predictions(state), self.dataset)


def make_evaluators(config: mlc.ConfigDict, data: Datasets, settings: steps.StepSettings,
                    mesh: jax.sharding.Mesh) -> dict[str, Evaluator]:
    """An Evaluator per evaluation split, batched by ``eval.batch_size`` rounded up to a
    multiple of the devices."""
    devices = mesh.devices.size
    batch = -(-config.eval.batch_size // devices) * devices
    model = evaluation_model(config, data.train)
    return {name: Evaluator(ds, batch, settings, mesh, model)
            for name, ds in data.eval_sets().items()}


def summarize(outputs: dict[str, np.ndarray], dataset: ArrayDataset) -> dict[str, Any]:
    """Accuracy, balanced accuracy and mean loss of per-example eval outputs."""
    return classification_metrics(outputs["prediction"], outputs["loss"], dataset.labels,
                                  dataset.class_names)


def train_step_fn(settings: steps.StepSettings, batch_size: int, mesh: jax.sharding.Mesh):
    """The step, not jitted: slice the epoch permutation, gather the batch, update the state.
    Its last argument is the distillation teacher, or None."""

    def run(state, images, labels, permutation, index, teacher=None):
        idx = jax.lax.dynamic_slice_in_dim(permutation, index * batch_size, batch_size)
        batch = {"image": images[idx], "label": labels[idx]}
        batch = jax.lax.with_sharding_constraint(batch, sharding.batch_split(mesh))
        return steps.train_step(state, batch, settings, teacher)

    return run


def make_train_step(settings: steps.StepSettings, batch_size: int, mesh: jax.sharding.Mesh):
    """:func:`train_step_fn`, jitted (the state is donated, outputs replicated)."""
    repl = sharding.replicated(mesh)
    return jax.jit(train_step_fn(settings, batch_size, mesh), donate_argnums=0,
                   out_shardings=(repl, repl))


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


def device_train_set(train: ArrayDataset, config: mlc.ConfigDict, mesh: jax.sharding.Mesh):
    """The training images and labels on the devices, and ``permute(epoch)``: that epoch's
    order of the examples (jitted; the same for every run with the same shuffle key)."""
    repl = sharding.replicated(mesh)
    images, labels = jax.device_put((train.images, train.labels), repl)
    key = jax.device_put(shuffle_key(config), repl)
    permute = jax.jit(functools.partial(pipeline.epoch_permutation, n=len(train)),
                      out_shardings=repl)
    return images, labels, lambda epoch: permute(key, epoch)


def create_model(config: mlc.ConfigDict, train: ArrayDataset) -> nn.Module:
    """The run's model (``config.model``) for the classes of ``train``, as the train step
    applies it: built with the run's training layers (``runs.training_layers``)."""
    return runs.build_model(config, len(train.class_names), runs.training_layers(config))


def evaluation_model(config: mlc.ConfigDict, train: ArrayDataset) -> nn.Module:
    """The run's model as evaluation applies it: with plain layers (``runs.build_model``)."""
    return runs.build_model(config, len(train.class_names))


def build_state(config: mlc.ConfigDict, train: ArrayDataset, settings: steps.StepSettings,
                tx, mesh: jax.sharding.Mesh) -> TrainState:
    """A fresh state: model init, data-dependent init, replicated over the mesh."""
    advice = models.input_size_advice(config.model.name, train.images.shape[1:3])
    if advice:
        log.warning("%s", advice)
    model = create_model(config, train)
    init_key, state_key = seed_keys(config.seed)
    variables = jax.jit(lambda key: init_variables(model, key, train.images.shape[1:]))(init_key)
    variables = models.data_dependent_init(
        config.model.name, variables, train.images[: config.model_init_examples],
        functools.partial(steps.normalize, settings=settings))
    if transfer.enabled(config):
        variables = transfer.initialize(config, variables, len(train.class_names),
                                        train.images.shape[1:])
    ema = config.training.ema_decay > 0
    state = jax.jit(lambda v, k: create_train_state(model, tx, v, k, ema))(variables, state_key)
    return jax.device_put(state, sharding.replicated(mesh))


def describe_devices(mesh: jax.sharding.Mesh) -> str:
    """E.g. '8 x cpu (cpu)', or '16 x H100 (gpu) in 2 processes' for a multi-process job."""
    devices = mesh.devices.flatten()
    processes = len({d.process_index for d in devices})
    across = f" in {processes} processes" if processes > 1 else ""
    return f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform}){across}"


def save_config(config: mlc.ConfigDict, workdir: str) -> None:
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def write_results(workdir: str, results: dict) -> None:
    """Writes workdir/results.json atomically."""
    if jax.process_index() != 0:
        return
    path = os.path.join(workdir, "results.json")
    with open(path + ".tmp", "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)


def read_json(workdir: str, name: str) -> dict | None:
    """``workdir/name`` parsed, or None when the run has not written it."""
    path = os.path.join(workdir, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def read_results(workdir: str) -> dict | None:
    return read_json(workdir, "results.json")


def is_finished(previous: dict | None, latest: int | None, plan: Plan) -> bool:
    """Whether ``results.json`` belongs to a run that completed at the latest checkpoint:
    all its planned steps, or stopped early."""
    if not previous or not previous.get("finished") or previous.get("steps") != latest:
        return False
    return latest == plan.total_steps or bool(previous.get("stopped_early"))


def diverged(problem: str, ckpt: checkpoint.Checkpoints) -> TrainingDiverged:
    """The error that stops a run: ``problem``, the last good checkpoint, and what to change."""
    last = ckpt.latest_step()
    where = f"step {last} in {ckpt.directory}" if last is not None else "none yet"
    return TrainingDiverged(
        f"{problem}; training stopped. Last good checkpoint: {where}. "
        "Lower config.optimizer.learning_rate, add warmup (config.schedule.warmup_epochs) "
        "or clipping (config.optimizer.grad_clip_norm)."
    )


def check_finite(value: float, what: str, step: int, ckpt: checkpoint.Checkpoints) -> None:
    if not math.isfinite(value):
        raise diverged(f"{what} is {value} at step {step}", ckpt)


def train_summary(history: list[dict], state: TrainState, step: int, config: mlc.ConfigDict,
                  ckpt: checkpoint.Checkpoints) -> dict[str, float]:
    """The mean of the per-step training metrics in ``history`` (the steps up to ``step``)
    over the steps that were applied; with ``training.nonfinite='skip'`` also the run's
    ``skipped_steps`` so far.

    Raises TrainingDiverged at the first applied step whose loss or gradient norm is not
    finite, or once ``training.max_consecutive_skips`` steps in a row were skipped.
    """
    fetched = jax.device_get(history)
    skipped = [bool(m.pop("skipped", False)) for m in fetched]
    first = step - len(fetched) + 1
    for offset, (metrics, skip) in enumerate(zip(fetched, skipped, strict=True)):
        if not skip:
            check_finite(float(metrics["loss"]), "the training loss", first + offset, ckpt)
            check_finite(float(metrics["grad_norm"]), "the gradient norm (grad_norm)",
                         first + offset, ckpt)
    summary = mean_metrics([m for m, skip in zip(fetched, skipped, strict=True) if not skip]
                           or fetched)  # all skipped: their own non-finite values
    guard = opt_state.nonfinite_guard(state.opt_state)
    if guard is not None:
        summary["skipped_steps"] = opt_state.skipped_steps(state.opt_state)
        in_a_row, limit = int(guard.notfinite_count), config.training.max_consecutive_skips
        if in_a_row >= limit:
            raise diverged(f"the last {in_a_row} steps up to step {step} had non-finite "
                           f"gradients and were skipped (config.training.max_consecutive_skips="
                           f"{limit})", ckpt)
    return summary


def train_and_evaluate(config: mlc.ConfigDict, workdir: str,
                       max_steps_this_run: int | None = None) -> dict:
    """Trains ``config`` in ``workdir`` (resuming from its checkpoints) and returns the results.

    ``max_steps_this_run`` stops the process after that many steps, with a checkpoint, so that
    a long run can be split across jobs; calling again continues it.
    """
    started = time.perf_counter()
    validate(config)
    checkpoint.prepare_workdir(workdir)
    log.info("Recipe %r: %s", config.recipe, config.recipe_reason)
    if config.early_stopping.patience and checkpoint.selection(config)[0].startswith("test"):
        log.warning("Early stopping watches the test split, so the reported test accuracy is "
                    "selected on it; set config.dataset.validation_size to stop on a validation "
                    "split instead.")
    mesh = sharding.make_mesh(config.training.num_devices)
    num_devices = mesh.devices.size
    check_batch_size(config.training.batch_size, num_devices, "training.batch_size")

    data = load_datasets(config)
    if config.training.time_budget_minutes:
        config = time_budget.resolve(
            config, workdir, Plan.from_config(config, len(data.train)).steps_per_epoch,
            lambda: measure_timings(config, data, mesh, started))
        validate(config)
    plan = Plan.from_config(config, len(data.train))
    schedule, tx, settings = optimizer_and_settings(config, data.train, plan)
    ckpt = checkpoint.Checkpoints.for_run(workdir, config, resume=True)
    latest = ckpt.latest_step()
    previous = read_results(workdir)
    if is_finished(previous, latest, plan):
        log.info("Run in %s is finished: test accuracy %.4f (%d examples).", workdir,
                 previous["test_accuracy"], previous["test_examples"])
        ckpt.close()
        return previous
    state = build_state(config, data.train, settings, tx, mesh)
    sig = checkpoint.signature(config.model.to_dict(), state.params, data.train.class_names,
                               data.train.images.shape[1:])
    if latest is not None:
        state = ckpt.restore(latest, state, sig)
        log.info("Resuming from step %d of %d.", latest, plan.total_steps)
    if drop_records_after(workdir, latest or 0):
        log.info("Dropped the metrics logged after step %d; they are logged again.", latest or 0)
    save_config(config, workdir)  # only once the workdir is known to belong to this config
    log.info("%d train / %d validation / %d test examples, %d classes; %d steps (%d per epoch) "
             "on %s.", len(data.train), len(data.validation or ()), len(data.test),
             len(data.train.class_names), plan.total_steps, plan.steps_per_epoch,
             describe_devices(mesh))

    images, labels, permute = device_train_set(data.train, config, mesh)
    evaluators = make_evaluators(config, data, settings, mesh)

    compile_start = time.perf_counter()
    train_step = make_train_step(settings, config.training.batch_size, mesh)
    permutation = permute(0)
    teacher = distill.load_teacher(config, data.train.class_names, mesh)
    train_step = train_step.lower(state, images, labels, permutation, 0, teacher).compile()
    for evaluator in evaluators.values():
        evaluator.compile(state)
    compile_time = time.perf_counter() - compile_start
    log.info("Compiled in %.1f s.", compile_time)

    writer = MetricWriter(workdir)
    step = int(state.step)
    end = plan.total_steps if max_steps_this_run is None else min(
        plan.total_steps, step + max_steps_this_run)
    progress = Progress(plan.total_steps, step, config.training.batch_size)
    history, rates, last_eval = [], [], {}
    plateau = plateau_updater(config)  # None unless schedule.name='reduce_on_plateau'
    stopper = early_stopping.EarlyStopping.from_config(config, plan.steps_per_epoch)
    stop = stopper is not None and stopper.replay(workdir, step, plan.is_eval_step)
    train_start = time.perf_counter()
    epoch = -1
    stop_requests, interrupted = preemption.StopRequests(), False  # SIGTERM/SIGINT
    try:
        stop_requests.install()
        while step < end and not stop and not interrupted:
            if step // plan.steps_per_epoch != epoch:
                epoch = step // plan.steps_per_epoch
                permutation = permute(epoch)
            state, metrics = train_step(state, images, labels, permutation,
                                        step % plan.steps_per_epoch, teacher)
            history.append(metrics)
            step += 1
            interrupted = stop_requests.requested(step)
            evaluate = plan.is_eval_step(step) or step == end
            # A train record ends at every checkpoint, so a resumed run logs the same records.
            save = evaluate or plan.is_checkpoint_step(step) or interrupted
            if step % config.training.log_every_steps == 0 or save:
                summary = train_summary(history, state, step, config, ckpt)
                history = []
                summary["images_per_sec"] = progress.update(step, summary)
                summary["epoch"] = step / plan.steps_per_epoch
                rates.append(summary["images_per_sec"])
                writer.write(step, "train", summary)
            if evaluate:
                jax.block_until_ready(state)  # finish queued steps before the clock stops
                progress.pause()
                last_eval = evaluate_weights(evaluators, state, step, writer, ckpt)
                if plan.is_eval_step(step):  # not at a mere stop
                    if plateau is not None:
                        state = plateau(state, last_eval)
                    stop = stopper is not None and stopper.update(step, last_eval)
                ckpt.save(step, state, sig, metrics=last_eval)
                progress.resume()
            elif save:  # periodic, or a stop request: no evaluation
                ckpt.save(step, state, sig)
    finally:
        stop_requests.uninstall()
        progress.close()
        ckpt.wait()
        writer.close()
    train_time = time.perf_counter() - train_start
    if stop:
        log.info("Early stopping at step %d: %s has not improved for %d evaluations (best %.4f "
                 "at step %d).", step, stopper.monitor, stopper.wait, stopper.best,
                 stopper.best_step)
        if config.early_stopping.restore_best:
            state = ckpt.restore(ckpt.best_step(), state, sig)
            last_eval = {}
    elif step < plan.total_steps:
        log.info("Stopped %sat step %d of %d with a checkpoint in %s; rerun with the same "
                 "workdir to continue.", f"by {stop_requests.reason} " if interrupted else "",
                 step, plan.total_steps, ckpt.directory)
        ckpt.close()
        return {"steps": step, "finished": False, **last_eval}

    if not last_eval:  # restored best weights, or resumed after the last eval was logged
        last_eval = evaluate_weights(evaluators, state, step, None, ckpt)
    timing = {"train_time_s": train_time, "compile_time_s": compile_time,
              "images_per_sec": float(np.median(rates)) if rates else None}
    results = results_record(config, plan, step, state, last_eval, ckpt.best_step(), timing,
                             mesh, stopped_early=stop, skipped=data.skipped)
    write_results(workdir, results)
    ckpt.close()
    log.info("Final test accuracy: %.4f (%d / %d examples) after %d steps, %.1f s training "
             "(+%.1f s compile).", results["test_accuracy"], results["test_correct"],
             results["test_examples"], step, train_time, compile_time)
    return results


def measure_timings(config: mlc.ConfigDict, data: Datasets, mesh: jax.sharding.Mesh,
                    started: float, min_steps: int = 5, min_seconds: float = 3.0
                    ) -> time_budget.Timings:
    """What a run of ``config`` costs here (cv_jax.training.time_budget): its train step compiled
    and
    timed (the median of at least ``min_steps`` steps and ``min_seconds``, after two untimed
    ones) from a throwaway initial state, and one batch of each evaluation set, timed after an
    untimed one, times its batches."""
    plan = Plan.from_config(config, len(data.train))
    _, tx, settings = optimizer_and_settings(config, data.train, plan)
    state = build_state(config, data.train, settings, tx, mesh)
    images, labels, permute = device_train_set(data.train, config, mesh)
    permutation = permute(0)
    teacher = distill.load_teacher(config, data.train.class_names, mesh)
    evaluators = make_evaluators(config, data, settings, mesh).values()
    compile_start = time.perf_counter()
    step = make_train_step(settings, config.training.batch_size, mesh).lower(
        state, images, labels, permutation, 0, teacher).compile()
    for evaluator in evaluators:
        evaluator.compile(state)
    compile_seconds = time.perf_counter() - compile_start
    evaluation = 0.0
    for evaluator in evaluators:
        times = []
        for _ in range(2):
            start = time.perf_counter()
            jax.block_until_ready(evaluator.step(state, evaluator.images, evaluator.labels, 0))
            times.append(time.perf_counter() - start)
        evaluation += times[-1] * evaluator.num_batches
    if config.training.ema_decay > 0:  # the EMA weights are evaluated too
        evaluation *= 2
    times, timing_start = [], time.perf_counter()
    while len(times) < min_steps + 2 or time.perf_counter() - timing_start < min_seconds:
        start = time.perf_counter()
        index = len(times) % plan.steps_per_epoch
        state, metrics = step(state, images, labels, permutation, index, teacher)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return time_budget.Timings(elapsed=time.perf_counter() - started, compile=compile_seconds,
                               step=float(np.median(times[2:])), evaluation=evaluation)


def results_record(config: mlc.ConfigDict, plan: Plan, step: int, state: TrainState,
                   last_eval: dict, best_step: int | None, timing: dict,
                   mesh: jax.sharding.Mesh, stopped_early: bool = False,
                   skipped: tuple[tuple[str, str], ...] = ()) -> dict:
    """What ``results.json`` holds for a finished run: the last evaluation, how long it trained
    (``timing``: train/compile seconds, images/s), where and what it ran, and the data files
    ``skipped`` under dataset.bad_files='skip' (file -> reason)."""
    return {
        **last_eval,
        "best_step": best_step,
        "steps": step,
        "epochs": step / plan.steps_per_epoch,
        "planned_steps": plan.total_steps,
        "stopped_early": stopped_early,
        "restored_best": stopped_early and config.early_stopping.restore_best,
        **timing,
        "device": describe_devices(mesh),
        "jax_version": jax.__version__,
        "python": platform.python_version(),
        "recipe": config.recipe,
        "model": config.model.name,
        "parameters": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params)),
        "skipped_steps": opt_state.skipped_steps(state.opt_state),  # training.nonfinite='skip'
        "num_skipped_files": len(skipped),
        "skipped_files": dict(skipped),
        "finished": True,
    }


def evaluate_weights(evaluators: dict[str, Evaluator], state: TrainState, step: int,
                     writer: MetricWriter | None, ckpt: checkpoint.Checkpoints) -> dict[str, Any]:
    """Evaluates the weights a run reports (schedule-free: the averaged ones) and, when the
    run keeps an EMA, the EMA weights too (as '<split>_ema_*')."""
    flat = evaluate_all(evaluators, opt_state.eval_state(state), step, writer, ckpt)
    if state.ema:
        flat |= evaluate_all(evaluators, ema_view(state), step, writer, ckpt, suffix="_ema")
    return flat


def evaluate_all(evaluators: dict[str, Evaluator], state: TrainState, step: int,
                 writer: MetricWriter | None, ckpt: checkpoint.Checkpoints,
                 suffix: str = "") -> dict[str, Any]:
    """Runs every evaluator; returns ``{'<split><suffix>_accuracy': ..., ...}`` (suffix '_ema'
    for the averaged weights) and logs them with ``writer`` unless it is None."""
    flat = {}
    for split, evaluator in evaluators.items():
        name = split + suffix
        metrics = evaluator(state)
        check_finite(metrics["loss"], f"the {name} loss", step, ckpt)
        if writer is not None:
            writer.write(step, name, metrics)
        flat |= {f"{name}_{k}": v for k, v in metrics.items()}
    log.info("step %d: %s", step, "  ".join(
        f"{k} {v:.4f}" for k, v in flat.items() if k.endswith(("accuracy", "loss"))))
    return flat
