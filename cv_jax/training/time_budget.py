"""Training to a wall-clock budget: ``config.training.time_budget_minutes``.

Where it is set, the run's length is not ``num_epochs`` but the most tenths of an epoch whose
training, evaluations and compiling fit in the budget, counted from the start of
:func:`cv_jax.training.train.train_and_evaluate` (loading the data included, Python's start-up not):

1. the train step is compiled for the configured run and timed on the training data, from a
   throwaway copy of the initial state, and each evaluation set's step is timed on one batch
   (:func:`cv_jax.training.train.measure_timings`);
2. :func:`fit_epochs` picks the epochs from those times, keeping :data:`MARGIN` of what is left
   spare;
3. :func:`scale_run` sets ``num_epochs`` to them and scales every duration given in epochs by
   the same factor (the learning rate's through :func:`cv_jax.optim.lr.scale_durations`:
   warmup, multistep boundaries, SGDR cycles, ...), so the recipe keeps its shape.

The plan is written to ``workdir/time_budget.json``, and a resumed run reads it instead of
timing again. The run is then exactly the run of the scaled config (the timing steps update
only their own copy of the state), which is the config the workdir's config.json holds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable

import jax
import ml_collections as mlc

from cv_jax.config import ConfigError
from cv_jax.optim import lr

log = logging.getLogger("cv_jax")

# Of the time left, kept spare for what the timings miss: logging, checkpoints, and above all a
# CPU that runs slower under sustained load than in a few seconds of timing (a 15-minute run
# on a 2-core Intel VM: 0.401 s per step timed after an idle spell, 0.440 on average over the
# run; experiments/speed/RESULTS.md).
MARGIN = 0.12
FILE = "time_budget.json"
# Durations in epochs besides the learning rate's (cv_jax.optim.lr.scale_durations) that scale
# with the run.
EPOCH_DURATIONS = (("mixup", "off_epoch"), ("early_stopping", "start_epoch"))


@dataclasses.dataclass(frozen=True)
class Timings:
    """What a run costs, measured on this machine before it starts (seconds)."""

    elapsed: float  # since the run started, when the timing ended
    compile: float  # compiling the train step and every evaluation's step
    step: float  # one train step (median)
    evaluation: float  # one evaluation of every evaluation set


def evaluations(total_steps: int, eval_every_steps: int) -> int:
    """How many evaluations a run of ``total_steps`` makes
    (cv_jax.training.plan.Plan.is_eval_step)."""
    return total_steps // eval_every_steps + (total_steps % eval_every_steps != 0)


def fit_epochs(budget_seconds: float, timings: Timings, steps_per_epoch: int,
               eval_every_epochs: float) -> float:
    """The most tenths of an epoch whose steps, evaluations and compile fit in the budget less
    the time already spent, after keeping MARGIN of that spare."""
    usable = (budget_seconds - timings.elapsed) * (1 - MARGIN) - timings.compile
    eval_every_steps = max(1, round(eval_every_epochs * steps_per_epoch))

    def cost(tenths: int) -> float:
        steps = math.ceil(tenths * steps_per_epoch / 10)
        return steps * timings.step + evaluations(steps, eval_every_steps) * timings.evaluation

    tenths = max(0, math.floor(10 * usable / (steps_per_epoch * timings.step)))
    while tenths > 0 and cost(tenths) > usable:
        tenths -= 1
    if tenths == 0:
        raise ConfigError(
            f"config.training.time_budget_minutes={budget_seconds / 60:g} leaves {usable:.1f} s "
            f"for training after {timings.elapsed:.1f} s of loading and timing and "
            f"{timings.compile:.1f} s of compiling, less than a tenth of an epoch "
            f"({cost(1):.1f} s here): raise the budget or make the run cheaper")
    return tenths / 10


def scale_run(config: mlc.ConfigDict, epochs: float) -> mlc.ConfigDict:
    """A copy of ``config`` that trains ``epochs`` epochs with no budget, every duration in
    epochs scaled by epochs / num_epochs."""
    scaled = config.copy_and_resolve_references()
    factor = epochs / config.training.num_epochs
    scaled.training.num_epochs = epochs
    scaled.training.time_budget_minutes = 0.0
    for section, key in EPOCH_DURATIONS:
        scaled[section][key] = config[section][key] * factor
    lr.scale_durations(scaled, factor)
    return scaled


def resolve(config: mlc.ConfigDict, workdir: str, steps_per_epoch: int,
            measure: Callable[[], Timings]) -> mlc.ConfigDict:
    """The run of a budgeted ``config``: its plan from ``workdir``/time_budget.json when the run
    is resumed, else from ``measure()``."""
    budget = config.training.time_budget_minutes
    path = os.path.join(workdir, FILE)
    if os.path.exists(path):
        with open(path) as f:
            plan = json.load(f)
        if plan["time_budget_minutes"] != budget:
            raise ConfigError(
                f"{path} planned this workdir's run for config.training.time_budget_minutes="
                f"{plan['time_budget_minutes']:g}, not {budget:g}: use that budget to resume it, "
                "or a new --workdir")
        log.info("Time budget: %g epochs, as planned when the run started (%s).",
                 plan["epochs"], path)
        return scale_run(config, plan["epochs"])
    timings = measure()
    epochs = fit_epochs(60 * budget, timings, steps_per_epoch,
                        config.training.eval_every_epochs)
    plan = {"time_budget_minutes": budget, "epochs": epochs,
            "configured_epochs": config.training.num_epochs,
            "timings_s": dataclasses.asdict(timings), "margin": MARGIN,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if jax.process_index() == 0:
        with open(path + ".tmp", "w") as f:
            json.dump(plan, f, indent=2, sort_keys=True)
        os.replace(path + ".tmp", path)
    log.info("Time budget %g min: %.1f s spent so far, %.1f s to compile, %.3f s per step, "
             "%.1f s per evaluation -> %g epochs (the recipe's %g scaled).", budget,
             timings.elapsed, timings.compile, timings.step, timings.evaluation, epochs,
             config.training.num_epochs)
    return scale_run(config, epochs)
