"""The hooks of a training run (``cv_jax.training.loop``), in the order they act after each
call: stop requests, train records, evaluations (then the reduce-on-plateau update and early
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
from cv_jax.training.plan import Plan, next_multiple
from cv_jax.training.profiling import StepProfiler
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
    """Ends the loop after the call in which a stop was requested (SIGTERM or SIGINT, or a
    multi-process preemption notice: ``preemption.StopRequests``), a request coming at any
    time; the checkpoint hook saves that step."""

    def __init__(self, requests: preemption.StopRequests):
        self.requests = requests
        self.reason: str | None = None  # e.g. 'SIGTERM', once it stopped the loop

    def due(self, loop: Loop) -> bool:
        return self.requests.requested(loop.step)

    def act(self, loop: Loop) -> None:
        self.reason = self.requests.reason
        loop.stop = f"stop requested ({self.reason})"

    def next_due(self, loop: Loop) -> int:
        return loop.end  # checked after every call; calls are not cut short for it


@dataclasses.dataclass
class Interval:
    """The steps of one train record: the calls since the previous record, each as ``(steps,
    metrics on the devices)`` (``Loop.steps``, ``Loop.metrics``), up to ``step``."""

    step: int
    calls: list[tuple[int, Any]]

    def history(self) -> list[dict]:
        """The per-step metrics, fetched (this waits for the interval's last step only)."""
        fetched = jax.device_get(self.calls)
        return [step for steps, metrics in fetched
                for step in ([metrics] if steps == 1 else unstack(metrics, steps))]


def unstack(metrics: dict, steps: int) -> list[dict]:
    """Metrics stacked on a leading axis of ``steps`` -> each step's."""
    return [{k: v[i] for k, v in metrics.items()} for i in range(steps)]


class TrainRecords(Hook):
    """Every ``every`` steps, and at the steps where ``boundary`` acts (the checkpoints, so a
    resumed run logs the same records), writes each run's mean training metrics since its last
    record (``divergence.train_summary``: a non-finite one stops the run) with the images/s
    and epoch; keeps the images/s for the results.

    The device does not wait on the host at a record: its metrics stay on the devices until
    the next record is due (the steps up to it are done by then, later ones queued), or are
    fetched at once where ``boundary`` acts (the checkpoint's save waits for the device
    anyway). So a non-finite loss stops the run up to one record late, but before the next
    checkpoint is saved. The images/s are the steps between two fetched records over the wall
    time between the fetches."""

    def __init__(self, runs: Runs, every: int, steps_per_epoch: int, progress: Progress,
                 boundary: Hook):
        self.runs, self.every, self.steps_per_epoch = runs, every, steps_per_epoch
        self.progress, self.boundary = progress, boundary
        self.calls: list[tuple[int, Any]] = []  # the calls since the last record
        self.pending: Interval | None = None  # the last record, not yet fetched
        self.rates: list[float] = []

    def __call__(self, loop: Loop) -> None:
        self.calls.append((loop.steps, loop.metrics))
        super().__call__(loop)

    def due(self, loop: Loop) -> bool:
        return loop.step % self.every == 0 or self.boundary.due(loop)

    def next_due(self, loop: Loop) -> int:
        return min(next_multiple(loop.step, self.every), self.boundary.next_due(loop))

    def act(self, loop: Loop) -> None:
        interval, self.calls = Interval(loop.step, self.calls), []
        self.flush()
        if self.boundary.due(loop):
            self.write(interval)
        else:
            self.pending = interval

    def flush(self) -> None:
        """Writes the record not yet fetched, if any."""
        if self.pending is not None:
            interval, self.pending = self.pending, None
            self.write(interval)

    def write(self, interval: Interval) -> None:
        histories = self.runs.split(interval.history())
        summaries = [summary(output, history, interval.step)
                     for output, history in zip(self.runs.outputs, histories, strict=True)]
        rate = self.progress.update(interval.step, mean_metrics(summaries))
        self.rates.append(rate)
        epoch = interval.step / self.steps_per_epoch
        for output, record in zip(self.runs.outputs, summaries, strict=True):
            output.writer.write(interval.step, "train", record | {"images_per_sec": rate,
                                                                  "epoch": epoch})


def summary(output: Output, history: list[dict], step: int) -> dict:
    """``divergence.train_summary`` of one run; its error names the run."""
    try:
        return divergence.train_summary(history, None, step, output.config, output.ckpt)
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

    def next_due(self, loop: Loop) -> int:
        return min(self.plan.next_checkpoint_step(loop.step), loop.end)

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

    def next_due(self, loop: Loop) -> int:
        return min(self.plan.next_eval_step(loop.step), loop.end)

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
                               progress, boundary=checkpoints)
        plateau = plateau_updater(config)  # None unless schedule.name='reduce_on_plateau'
        evaluate = Evaluate(runs, plan, evaluators, progress, checkpoints, plateau, stopper)
        return cls(StopOnRequest(requests), records, evaluate, checkpoints)

    def all(self) -> list[Hook]:
        return [self.stop, self.records, self.evaluate, self.checkpoints]


@dataclasses.dataclass
class Trained:
    """Where a training run's loop ended, its hooks (with what they recorded), how long it
    trained from step ``start`` (this process's loop: a resumed run's time starts at its
    checkpoint) and the run's clock (``cv_jax.training.clock``)."""

    loop: Loop
    hooks: RunHooks
    seconds: float
    clock: Clock
    start: int

    def timing(self, compile_time: float) -> dict[str, float | None]:
        """The results' timing: train, clock and compile seconds, the median images/s, and the
        step they count from (``timed_from_step``: 0 unless the run was resumed)."""
        rates = self.hooks.records.rates
        return {"train_time_s": self.seconds, "timed_s": self.clock.seconds,
                "compile_time_s": compile_time,
                "images_per_sec": float(np.median(rates)) if rates else None,
                "timed_from_step": self.start}


def train_runs(program: Program, state: Any, start: int, config: mlc.ConfigDict, plan: Plan,
               runs: Runs, evaluators: dict[str, evaluation.Evaluator], sig: dict,
               max_steps_this_run: int | None = None, stopper: EarlyStopping | None = None,
               stop: str = "", clock: Clock | None = None,
               profiler: StepProfiler | None = None) -> Trained:
    """Trains ``runs`` from ``state`` (after ``start`` steps) to the end of the plan, or for
    ``max_steps_this_run`` steps (rounded up to a multiple of ``program.steps_per_call``, where
    the run in one go ends a call too), with a training run's hooks (``stopper``: early
    stopping; ``stop``: why the loop does not start), the loop on ``clock`` (checkpoint saves
    off it) and its calls traced by ``profiler`` (``training.profile_steps``). SIGTERM and
    SIGINT stop it with a checkpoint."""
    clock = clock or Clock()
    end = plan.total_steps
    if max_steps_this_run is not None:
        k = program.steps_per_call
        end = min(end, -(-(start + max_steps_this_run) // k) * k)
    progress = Progress(plan.total_steps, start, config.training.batch_size)
    requests = preemption.StopRequests()
    hooks = RunHooks.create(config, plan, runs, evaluators, sig, progress, requests, stopper,
                            clock)
    started = time.perf_counter()
    try:
        requests.install()
        clock.start()
        loop = run(program, state, start, end, hooks.all(), stop, around=profiler)
        hooks.records.flush()
    finally:
        clock.stop()  # the last step was evaluated or saved, both synchronising
        if profiler is not None:
            profiler.close()  # a loop that ended inside the traced steps
        requests.uninstall()
        progress.close()
        for output in runs.outputs:
            output.ckpt.wait()
    return Trained(loop, hooks, time.perf_counter() - started, clock, start)
