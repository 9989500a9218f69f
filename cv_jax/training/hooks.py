"""The hooks of a training run (``cv_jax.training.loop``), in the order they act after each
step: stop requests, train records, evaluations (then the reduce-on-plateau update and early
stopping) and checkpoints; and ``train_runs``, the loop run with them.

They report for the runs one loop trains (``Runs``): a run trained alone
(``train.train_and_evaluate``), or the members of a vectorised run, whose states are stacked on
a leading axis (``cv_jax.workflows.vectorized``), each with its own config, checkpoints and
metric writer.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections as mlc
import numpy as np

from cv_jax.optim.plateau import plateau_updater
from cv_jax.training import checkpoint, divergence, evaluation, preemption
from cv_jax.training.clock import Clock
from cv_jax.training.early_stopping import EarlyStopping
from cv_jax.training.loop import Hook, Loop, Program, run
from cv_jax.training.metrics import MetricWriter, Progress, mean_metrics
from cv_jax.training.plan import Plan
from cv_jax.training.state import TrainState

log = logging.getLogger("cv_jax")


@dataclasses.dataclass
class Output:
    """Where one run reports: its config, checkpoints and metric writer. ``name`` ('' for a run
    trained alone) prefixes its errors and evaluation logs."""

    config: mlc.ConfigDict
    ckpt: checkpoint.Checkpoints
    writer: MetricWriter | None
    name: str = ""


@dataclasses.dataclass(frozen=True)
class Runs:
    """The runs a loop trains, and how each one's state and per-step metrics are read from the
    loop's: ``take(state, i)`` is run i's state, ``stack(states)`` the loop's state of the runs'
    states, ``split(history)`` each run's list of per-step metrics."""

    outputs: Sequence[Output]
    take: Callable[[Any, int], TrainState]
    stack: Callable[[list[TrainState]], Any]
    split: Callable[[list[dict]], list[list[dict]]]

    @classmethod
    def alone(cls, output: Output) -> Runs:
        """One run: the loop's state and metrics are its own."""
        return cls([output], take=lambda state, i: state, stack=lambda states: states[0],
                   split=lambda history: [history])

    def states(self, state: Any) -> list[TrainState]:
        """Each run's state in the loop's ``state``."""
        return [self.take(state, i) for i in range(len(self.outputs))]


class StopOnRequest(Hook):
    """Ends the loop after the step at which a stop was requested (SIGTERM or SIGINT, or a
    multi-process preemption notice: ``preemption.StopRequests``); the checkpoint hook saves
    that step."""

    def __init__(self, requests: preemption.StopRequests):
        self.requests = requests
        self.reason: str | None = None  # e.g. 'SIGTERM', once it stopped the loop

    def due(self, loop: Loop) -> bool:
        return self.requests.requested(loop.step)

    def act(self, loop: Loop) -> None:
        self.reason = self.requests.reason
        loop.stop = f"stop requested ({self.reason})"


class TrainRecords(Hook):
    """Every ``every`` steps, and at the steps ``boundary`` names (the checkpoints, so a resumed
    run logs the same records), writes each run's mean training metrics since its last record
    (``divergence.train_summary``: a non-finite one stops the run) with the images/s and epoch;
    keeps the images/s for the results."""

    def __init__(self, runs: Runs, every: int, steps_per_epoch: int, progress: Progress,
                 boundary: Callable[[Loop], bool]):
        self.runs, self.every, self.steps_per_epoch = runs, every, steps_per_epoch
        self.progress, self.boundary = progress, boundary
        self.history: list[Any] = []  # the per-step metrics since the last record
        self.rates: list[float] = []

    def __call__(self, loop: Loop) -> None:
        self.history.append(loop.metrics)
        super().__call__(loop)

    def due(self, loop: Loop) -> bool:
        return loop.step % self.every == 0 or self.boundary(loop)

    def act(self, loop: Loop) -> None:
        histories = self.runs.split(self.history)
        summaries = [summary(output, history, state, loop.step) for output, history, state
                     in zip(self.runs.outputs, histories, self.runs.states(loop.state),
                            strict=True)]
        self.history = []
        rate = self.progress.update(loop.step, mean_metrics(summaries))
        self.rates.append(rate)
        epoch = loop.step / self.steps_per_epoch
        for output, record in zip(self.runs.outputs, summaries, strict=True):
            output.writer.write(loop.step, "train", record | {"images_per_sec": rate,
                                                              "epoch": epoch})


def summary(output: Output, history: list[dict], state: TrainState, step: int) -> dict:
    """``divergence.train_summary`` of one run; its error names the run."""
    try:
        return divergence.train_summary(history, state, step, output.config, output.ckpt)
    except divergence.TrainingDiverged as e:
        if not output.name:
            raise
        raise divergence.TrainingDiverged(f"{output.name}: {e}") from None


class SaveCheckpoints(Hook):
    """Saves each run's checkpoint at the plan's checkpoint steps, at the loop's end and when
    the loop stops. An evaluation saves its step's checkpoint with the metrics (``save``), and
    a step is saved once. Saving is off the run's ``clock``."""

    def __init__(self, runs: Runs, plan: Plan, sig: dict, clock: Clock):
        self.runs, self.plan, self.sig, self.clock = runs, plan, sig, clock
        self.saved_step: int | None = None

    def due(self, loop: Loop) -> bool:
        return self.plan.is_checkpoint_step(loop.step) or loop.step == loop.end or bool(loop.stop)

    def act(self, loop: Loop) -> None:
        if self.saved_step != loop.step:
            self.save(loop.step, self.runs.states(loop.state))

    def save(self, step: int, states: list[TrainState],
             metrics: list[dict] | None = None) -> None:
        """Saves run i's ``states[i]`` with ``metrics[i]`` (its evaluation) when given."""
        jax.block_until_ready(states)  # the steps before it stay on the clock
        with self.clock.paused():
            for i, (output, state) in enumerate(zip(self.runs.outputs, states, strict=True)):
                output.ckpt.save(step, state, self.sig,
                                 metrics=None if metrics is None else metrics[i])
        self.saved_step = step


class Evaluate(Hook):
    """At the plan's evaluation steps and at the loop's end: evaluates each run
    (``evaluation.evaluate_weights``: the weights it reports and its EMA); after a scheduled
    evaluation (not a mere end of the loop) updates reduce-on-plateau (``plateau``) and early
    stopping (``stopper``, for a run trained alone); then saves the step's checkpoints with
    the metrics. The time it takes is not counted as training (``progress``)."""

    def __init__(self, runs: Runs, plan: Plan, evaluators: dict[str, evaluation.Evaluator],
                 progress: Progress, checkpoints: SaveCheckpoints,
                 plateau: Callable[[TrainState, dict], TrainState] | None = None,
                 stopper: EarlyStopping | None = None):
        if stopper is not None and len(runs.outputs) > 1:
            raise ValueError("early stopping decides for a run trained alone")
        self.runs, self.plan, self.evaluators, self.progress = runs, plan, evaluators, progress
        self.checkpoints, self.plateau, self.stopper = checkpoints, plateau, stopper
        self.last: list[dict] = [{} for _ in runs.outputs]  # each run's latest evaluation
        self.stopped_early = False

    def due(self, loop: Loop) -> bool:
        return self.plan.is_eval_step(loop.step) or loop.step == loop.end

    def act(self, loop: Loop) -> None:
        jax.block_until_ready(loop.state)  # finish queued steps before the clock stops
        self.progress.pause()
        states = self.runs.states(loop.state)
        for i, (output, state) in enumerate(zip(self.runs.outputs, states, strict=True)):
            if output.name:
                log.info("%s:", output.name)
            self.last[i] = evaluation.evaluate_weights(self.evaluators, state, loop.step,
                                                       output.writer, output.ckpt)
        if self.plan.is_eval_step(loop.step):  # not at a mere stop
            if self.plateau is not None:
                states = [self.plateau(s, e) for s, e in zip(states, self.last, strict=True)]
                loop.state = self.runs.stack(states)
            if self.stopper is not None and self.stopper.update(loop.step, self.last[0]):
                self.stopped_early = True
                loop.stop = "early stopping"
        self.checkpoints.save(loop.step, states, self.last)
        self.progress.resume()


@dataclasses.dataclass
class RunHooks:
    """The hooks of a training run, in the order they act after each step."""

    stop: StopOnRequest
    records: TrainRecords
    evaluate: Evaluate
    checkpoints: SaveCheckpoints

    @classmethod
    def create(cls, config: mlc.ConfigDict, plan: Plan, runs: Runs,
               evaluators: dict[str, evaluation.Evaluator], sig: dict, progress: Progress,
               requests: preemption.StopRequests, stopper: EarlyStopping | None = None,
               clock: Clock | None = None) -> RunHooks:
        checkpoints = SaveCheckpoints(runs, plan, sig, clock or Clock())
        # A train record ends at every checkpoint, so a resumed run logs the same records.
        records = TrainRecords(runs, config.training.log_every_steps, plan.steps_per_epoch,
                               progress, boundary=checkpoints.due)
        plateau = plateau_updater(config)  # None unless schedule.name='reduce_on_plateau'
        evaluate = Evaluate(runs, plan, evaluators, progress, checkpoints, plateau, stopper)
        return cls(StopOnRequest(requests), records, evaluate, checkpoints)

    def all(self) -> list[Hook]:
        return [self.stop, self.records, self.evaluate, self.checkpoints]


@dataclasses.dataclass
class Trained:
    """Where a training run's loop ended, its hooks (with what they recorded), how long it
    trained and the run's clock (``cv_jax.training.clock``)."""

    loop: Loop
    hooks: RunHooks
    seconds: float
    clock: Clock

    def timing(self, compile_time: float) -> dict[str, float | None]:
        """The results' timing: train, clock and compile seconds, the median images/s."""
        rates = self.hooks.records.rates
        return {"train_time_s": self.seconds, "timed_s": self.clock.seconds,
                "compile_time_s": compile_time,
                "images_per_sec": float(np.median(rates)) if rates else None}


def train_runs(program: Program, state: Any, start: int, config: mlc.ConfigDict, plan: Plan,
               runs: Runs, evaluators: dict[str, evaluation.Evaluator], sig: dict,
               max_steps_this_run: int | None = None, stopper: EarlyStopping | None = None,
               stop: str = "", clock: Clock | None = None) -> Trained:
    """Trains ``runs`` from ``state`` (after ``start`` steps) to the end of the plan, or for
    ``max_steps_this_run`` steps, with a training run's hooks (``stopper``: early stopping;
    ``stop``: why the loop does not start), the loop on ``clock`` (checkpoint saves off it).
    SIGTERM and SIGINT stop it with a checkpoint."""
    clock = clock or Clock()
    end = plan.total_steps if max_steps_this_run is None else min(
        plan.total_steps, start + max_steps_this_run)
    progress = Progress(plan.total_steps, start, config.training.batch_size)
    requests = preemption.StopRequests()
    hooks = RunHooks.create(config, plan, runs, evaluators, sig, progress, requests, stopper,
                            clock)
    started = time.perf_counter()
    try:
        requests.install()
        clock.start()
        loop = run(program, state, start, end, hooks.all(), stop)
    finally:
        clock.stop()  # the last step was evaluated or saved, both synchronising
        requests.uninstall()
        progress.close()
        for output in runs.outputs:
            output.ckpt.wait()
    return Trained(loop, hooks, time.perf_counter() - started, clock)
