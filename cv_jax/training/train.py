"""``train_and_evaluate(config, workdir)``: assemble a run from its config, train, evaluate,
checkpoint and log. Rerunning with the same workdir resumes; a finished run just reports.

Data flows one way: config -> data (``datasets``), model, optimizer and state (``setup``) ->
the loop (``loop``) with the run's hooks (``hooks``: records, evaluations, checkpoints) ->
metrics, checkpoints and results.json (``results``). The training set stays on the devices for
the whole run; each step gathers its batch from the epoch's permutation inside jit, so the host
only dispatches steps.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import jax
import ml_collections as mlc
import numpy as np

from cv_jax.config import validate
from cv_jax.training import (
    checkpoint,
    early_stopping,
    hooks,
    profiling,
    setup,
    sharding,
    streamed,
    time_budget,
    wandb_logging,
)
from cv_jax.training.clock import Clock
from cv_jax.training.datasets import Datasets, load_datasets
from cv_jax.training.evaluation import evaluate_weights
from cv_jax.training.hparams import write_hparams
from cv_jax.training.loop import EveryStep, Loop, run
from cv_jax.training.metrics import MetricWriter, drop_records_after
from cv_jax.training.plan import Plan
from cv_jax.training.results import (
    is_finished,
    read_results,
    results_record,
    save_config,
    write_results,
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
    wandb = wandb_logging.require(config)  # before the data loads: a missing extra fails fast
    checkpoint.prepare_workdir(workdir)
    log.info("Recipe %r: %s", config.recipe, config.recipe_reason)
    if config.early_stopping.patience and checkpoint.selection(config)[0].startswith("test"):
        log.warning("Early stopping watches the test split, so the reported test accuracy is "
                    "selected on it; set config.dataset.validation_size to stop on a validation "
                    "split instead.")
    mesh = setup.make_mesh(config)

    data = load_datasets(config)
    if config.training.time_budget_minutes:
        config = time_budget.resolve(
            config, workdir, Plan.from_config(config, len(data.train)).steps_per_epoch,
            lambda: measure_timings(config, data, mesh, started))
        validate(config)
    plan = Plan.from_config(config, len(data.train))
    profiler = profiling.StepProfiler.from_config(config, workdir, plan.total_steps)
    ckpt = checkpoint.Checkpoints.for_run(workdir, config, resume=True)
    latest = ckpt.latest_step()
    previous = read_results(workdir)
    if is_finished(previous, latest, plan):
        log.info("Run in %s is finished: test accuracy %.4f (%d examples).", workdir,
                 previous["test_accuracy"], previous["test_examples"])
        ckpt.close()
        return previous
    return _train(config, workdir, data, plan, mesh, ckpt, latest, max_steps_this_run,
                  profiler, wandb)


def _train(config: mlc.ConfigDict, workdir: str, data: Datasets, plan: Plan,
           mesh: jax.sharding.Mesh, ckpt: checkpoint.Checkpoints, latest: int | None,
           max_steps_this_run: int | None, profiler: profiling.StepProfiler | None,
           wandb: Any) -> dict:
    """Trains the run of ``train_and_evaluate`` from its ``latest`` checkpoint (or from the
    start), its steps traced by ``profiler`` and its metrics also sent to a W&B run when
    ``wandb`` (the module; None: off) is given, once the workdir is known to belong to the
    config; returns the results, or where an unfinished run stopped."""
    clock = Clock()  # results.json's timed_s (cv_jax.training.clock)
    settings, state = setup.initial_state(config, data.train, plan, mesh, clock)
    sig = checkpoint.signature(config.model.to_dict(), state.params, data.train.class_names,
                               data.train.image_shape)
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
    compiled = setup.compile_run(config, data, plan, mesh, settings, state)

    step = int(state.step)
    if compiled.program.stream is not None:
        resume_stream(ckpt, latest, step, compiled.program.stream)
    stopper = early_stopping.EarlyStopping.from_config(config, plan.steps_per_epoch)
    replayed = stopper is not None and stopper.replay(workdir, step, plan.is_eval_step)
    with wandb_logging.tracking(wandb, config, workdir) as tracker:
        writer = MetricWriter(workdir, sinks=[tracker.write] if tracker is not None else [])
        try:
            trained = hooks.train_runs(
                compiled.program, state, step, config, plan,
                hooks.Runs.alone(hooks.Output(config, ckpt, writer)), compiled.evaluators, sig,
                max_steps_this_run, stopper, stop="early stopping (replayed)" if replayed else "",
                clock=clock, profiler=profiler)
        finally:
            writer.close()
        step, state = trained.loop.step, trained.loop.state
        stopped_early = replayed or trained.hooks.evaluate.stopped_early
        last_eval = trained.hooks.evaluate.last[0]
        if stopped_early:
            log.info("Early stopping at step %d: %s has not improved for %d evaluations "
                     "(best %.4f at step %d).", step, stopper.monitor, stopper.wait,
                     stopper.best, stopper.best_step)
            if config.early_stopping.restore_best:
                state = ckpt.restore(ckpt.best_step(), state, sig)
                last_eval = {}
        elif step < plan.total_steps:
            reason = trained.hooks.stop.reason
            log.info("Stopped %sat step %d of %d with a checkpoint in %s; rerun with the same "
                     "workdir to continue.", f"by {reason} " if reason else "", step,
                     plan.total_steps, ckpt.directory)
            ckpt.close()
            return {"steps": step, "finished": False, **last_eval}

        if not last_eval:  # restored best weights, or resumed after the last eval was logged
            last_eval = evaluate_weights(compiled.evaluators, state, step, None, ckpt)
        timing = trained.timing(compiled.compile_time)
        results = results_record(config, plan, step, state, last_eval, ckpt.best_step(),
                                 timing, mesh, stopped_early=stopped_early,
                                 skipped=data.skipped + streamed_skips(compiled.program))
        write_results(workdir, results)
        write_hparams(workdir, config, results, step)  # TensorBoard's HParams dashboard
        if tracker is not None:
            tracker.summarize(results)
        ckpt.close()
        log.info("Final test accuracy: %.4f (%d / %d examples) after %d steps, %.1f s training "
                 "(+%.1f s compile).", results["test_accuracy"], results["test_correct"],
                 results["test_examples"], step, trained.seconds, compiled.compile_time)
        return results


def resume_stream(ckpt: checkpoint.Checkpoints, latest: int | None, step: int,
                  stream: streamed.StreamedBatches) -> None:
    """Saves the stream's position with every checkpoint; resuming, restores it from the
    ``latest`` checkpoint where that holds one for this process layout (otherwise the stream
    starts at ``step``, the same position: the order is a function of the step)."""
    ckpt.data = stream
    if latest is None:
        return
    if not ckpt.restore_data(latest, stream):
        log.info("Checkpoint %d holds no streaming state for this process layout; the stream "
                 "starts at step %d.", latest, step)
    elif stream.step != step:
        raise RuntimeError(f"checkpoint {latest} holds the streaming state of step "
                           f"{stream.step}, not of its training step {step}; delete "
                           f"{ckpt.directory}/{latest}/data to start the stream at step {step}")


def streamed_skips(program) -> tuple[tuple[str, str], ...]:
    """The bad files the stream passed over in this process (bad_files='skip'); none if the
    program is resident."""
    return tuple(program.stream.skipped.items()) if program.stream is not None else ()


class StepTimes(EveryStep):
    """Times every step (to its metrics on the host) and stops the loop once at least
    ``min_steps`` steps and ``min_seconds`` are timed."""

    def __init__(self, min_steps: int, min_seconds: float):
        self.min_steps, self.min_seconds = min_steps, min_seconds
        self.times: list[float] = []
        self.started = self.last = time.perf_counter()

    def act(self, loop: Loop) -> None:
        jax.block_until_ready(loop.metrics)
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now
        if len(self.times) >= self.min_steps and now - self.started >= self.min_seconds:
            loop.stop = "timed"


def measure_timings(config: mlc.ConfigDict, data: Datasets, mesh: jax.sharding.Mesh,
                    started: float, min_steps: int = 5, min_seconds: float = 3.0
                    ) -> time_budget.Timings:
    """What a run of ``config`` costs here (cv_jax.training.time_budget): its train step compiled
    and timed (the median of at least ``min_steps`` steps and ``min_seconds``, after two untimed
    ones) from a throwaway initial state, and one batch of each evaluation set, timed after an
    untimed one, times its batches. The steps are timed one per call (with
    ``training.steps_per_call`` > 1 the run may take them faster)."""
    plan = Plan.from_config(config, len(data.train))
    settings, state = setup.initial_state(config, data.train, plan, mesh)
    compiled = setup.compile_run(config, data, plan, mesh, settings, state, steps_per_call=1)
    evaluation = 0.0
    for evaluator in compiled.evaluators.values():
        times = []
        for _ in range(2):
            start = time.perf_counter()
            jax.block_until_ready(evaluator.step(state, evaluator.images, evaluator.labels, 0))
            times.append(time.perf_counter() - start)
        evaluation += times[-1] * evaluator.num_batches
    if config.training.ema_decay > 0:  # the EMA weights are evaluated too
        evaluation *= 2
    timer = StepTimes(min_steps + 2, min_seconds)
    run(compiled.program, state, 0, sys.maxsize, [timer])  # until the timer stops it
    return time_budget.Timings(elapsed=time.perf_counter() - started,
                               compile=compiled.compile_time,
                               step=float(np.median(timer.times[2:])), evaluation=evaluation)
