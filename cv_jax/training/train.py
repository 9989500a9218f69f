"""``train_and_evaluate(config, workdir)``: assemble a run from its config, train, evaluate,
checkpoint and log. Rerunning with the same workdir resumes; a finished run just reports.

Data flows one way: config -> data, model, optimizer -> TrainState -> steps -> metrics and
checkpoints. The training set stays on the devices for the whole run; each step gathers
its batch from the epoch's permutation inside jit, so the host only dispatches steps.
"""

from __future__ import annotations

import logging
import time

import jax
import ml_collections as mlc
import numpy as np

from cv_jax.config import validate
from cv_jax.optim import chain as optim
from cv_jax.training import checkpoint, distill, early_stopping, preemption, sharding, time_budget
from cv_jax.training.datasets import Datasets, load_datasets
from cv_jax.training.divergence import train_summary
from cv_jax.training.evaluation import evaluate_weights, make_evaluators
from cv_jax.training.metrics import MetricWriter, Progress, drop_records_after
from cv_jax.training.plan import Plan
from cv_jax.training.results import (
    is_finished,
    read_results,
    results_record,
    save_config,
    write_results,
)
from cv_jax.training.setup import (
    build_state,
    check_batch_size,
    device_train_set,
    make_train_step,
    optimizer_and_settings,
)

log = logging.getLogger("cv_jax")


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
             sharding.describe_devices(mesh))

    images, labels, permute = device_train_set(data.train, config, mesh)
    evaluators = make_evaluators(config, data, mesh)

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
    plateau = optim.plateau_updater(config)  # None unless schedule.name='reduce_on_plateau'
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
    evaluators = make_evaluators(config, data, mesh).values()
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
