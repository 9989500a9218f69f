"""The learning rate: every source of it, composed in one place.

The learning rate a parameter is updated with at a train step (one mini-batch) is

    transfer factor x schedule(step the update is counted at) x multiplier(path)
        x reduce-on-plateau scale

and :func:`learning_rate` computes exactly that; the optimizer chain
(:mod:`cv_jax.optim.chain`) is built from the same pieces, and ``python -m
cv_jax.tools.schedules`` prints and plots it. The pieces, each from its config keys:

* **schedule** (:func:`schedule`): the shape of ``config.schedule.name``
  (:mod:`cv_jax.optim.schedules`) over the run's train steps, peaking at
  ``optimizer.learning_rate``, after a linear **warmup** (:func:`warmup_steps`: over
  ``schedule.warmup_epochs``, or over ``schedule.warmup_fraction`` of the run) from
  ``warmup_init_factor`` x the peak;
* **per-update scaling** (:func:`per_update`): an optimizer that makes one update out of k
  train steps (``optimizer.accumulate_steps`` = k, ``sam``: 2, both: 2k) feeds its n-th update
  the schedule at train step n x k, the first step of that update's window;
* **per-group multipliers** (:func:`multiplier`): ``optimizer.lr_multipliers``, the factor of
  the first regex that matches a parameter's path;
* **transfer** (:func:`transfer_group`): with ``transfer.mode`` discriminative or staged, the
  backbone learns at ``backbone_lr_multiplier`` x the schedule (staged: from the end of
  ``frozen_epochs``, 0 before; linear_probe: 0 throughout); parameters matching
  ``optimizer.freeze`` never change;
* **freezing after a while** (:func:`freeze_step`): parameters matching a regex of
  ``optimizer.freeze_after`` stop changing after that many epochs (airbench trains its
  whitening layer's bias for 3);
* **reduce-on-plateau**: with schedule ``reduce_on_plateau``, the factor that
  :mod:`cv_jax.optim.plateau` lowers after evaluations, kept in the optimizer state (a run-time
  value, passed to :func:`learning_rate`);
* **time budgets** (:func:`scale_durations`): a run trained to a wall-clock budget stretches
  or shrinks every duration above by one factor, so the schedule keeps its shape.

A step skipped for non-finite gradients (``training.nonfinite='skip'``) leaves the optimizer
state, and so its schedule position, where it was: the schedule then runs that many steps behind.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import ml_collections as mlc
import numpy as np
import optax

from cv_jax.config import ConfigError, parse_multipliers
from cv_jax.optim.schedules import SCHEDULES

SAM_SYNC_PERIOD = 2  # train steps per SAM update: one adversarial step, one descent step
HEAD, BACKBONE = "head", "backbone"


def warmup_steps(config: mlc.ConfigDict, steps_per_epoch: int, total_steps: int) -> int:
    """Train steps of linear warmup: ``warmup_epochs`` of epochs, or ``warmup_fraction`` of the
    run, rounded down as airbench does (at most the whole run)."""
    cfg = config.schedule
    if cfg.warmup_fraction:
        return min(int(cfg.warmup_fraction * total_steps), total_steps)
    return min(round(cfg.warmup_epochs * steps_per_epoch), total_steps)


def schedule(config: mlc.ConfigDict, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
    """The run's schedule, train step -> learning rate: warmup, then ``config.schedule.name``
    over the remaining steps."""
    cfg = config.schedule
    if cfg.name not in SCHEDULES:
        raise ConfigError(
            f"config.schedule.name={cfg.name!r} is unknown; choose one of {sorted(SCHEDULES)}"
        )
    peak = config.optimizer.learning_rate
    warmup = warmup_steps(config, steps_per_epoch, total_steps)
    main = SCHEDULES[cfg.name](peak, cfg, total_steps - warmup, steps_per_epoch, warmup)
    if warmup == 0:
        return main
    ramp = optax.linear_schedule(cfg.warmup_init_factor * peak, peak, transition_steps=warmup)
    return optax.join_schedules([ramp, main], boundaries=[warmup])


def steps_per_update(config: mlc.ConfigDict) -> int:
    """Train steps (mini-batches) per optimizer update: accumulate_steps, times 2 for SAM."""
    sam = SAM_SYNC_PERIOD if config.optimizer.name == "sam" else 1
    return config.optimizer.accumulate_steps * sam


def per_update(lr: optax.ScalarOrSchedule, updates_every: int) -> optax.ScalarOrSchedule:
    """``lr`` as an update rule sees it: its n-th update happens at train step
    n * ``updates_every`` (the first step of its window)."""
    if updates_every == 1 or not callable(lr):
        return lr
    return lambda count: lr(count * updates_every)


def multiplier(config: mlc.ConfigDict) -> Callable[[str], float]:
    """``path -> factor`` of ``optimizer.lr_multipliers``: the first matching regex's, else 1."""
    compiled = [(re.compile(p), f) for p, f in parse_multipliers(
        config.optimizer.lr_multipliers).items()]
    return lambda path: next((f for regex, f in compiled if regex.search(path)), 1.0)


def freeze_step(config: mlc.ConfigDict, steps_per_epoch: int) -> Callable[[str], int | None]:
    """``path -> train step`` from which the parameter no longer changes (the first matching
    regex of ``optimizer.freeze_after``, its epochs x ``steps_per_epoch``, rounded), or None."""
    compiled = [(re.compile(p), round(epochs * steps_per_epoch)) for p, epochs in
                parse_multipliers(config.optimizer.freeze_after,
                                  "optimizer.freeze_after", "EPOCHS").items()]
    return lambda path: next((step for regex, step in compiled if regex.search(path)), None)


@dataclasses.dataclass(frozen=True)
class TransferGroup:
    """How one side of a transfer run (the new head or the copied backbone) learns: at
    ``factor`` x the schedule from train step ``start`` on (never, when ``frozen``); a
    ``delayed`` group's optimizer starts its state at ``start`` (staged transfer)."""

    factor: float = 1.0
    start: int = 0
    frozen: bool = False
    delayed: bool = False


def splits_by_transfer(config: mlc.ConfigDict) -> bool:
    """Whether the head and the backbone learn differently (a transfer run, not finetune)."""
    return bool(config.transfer.init_from) and config.transfer.mode != "finetune"


def transfer_group(config: mlc.ConfigDict, group: str, steps_per_epoch: int) -> TransferGroup:
    """The :class:`TransferGroup` of ``group`` (HEAD or BACKBONE) in this run."""
    if group == HEAD or not splits_by_transfer(config):
        return TransferGroup()
    cfg = config.transfer
    if cfg.mode == "linear_probe":
        return TransferGroup(frozen=True)
    if cfg.mode == "staged":
        return TransferGroup(factor=cfg.backbone_lr_multiplier,
                             start=round(cfg.frozen_epochs * steps_per_epoch), delayed=True)
    return TransferGroup(factor=cfg.backbone_lr_multiplier)


def group_schedule(base: optax.Schedule, group: TransferGroup) -> optax.Schedule:
    """The schedule of a transfer group, in the count of its own optimizer, which starts at
    ``group.start`` (:func:`cv_jax.optim.chain.delayed`)."""
    if group.factor == 1.0 and group.start == 0:
        return base
    return lambda count: group.factor * base(count + group.start)


def learning_rate(config: mlc.ConfigDict, steps_per_epoch: int, total_steps: int, path: str,
                  step: int | np.ndarray, head: frozenset[str] = frozenset(),
                  plateau_scale: float = 1.0) -> float | np.ndarray:
    """The learning rate of the parameter at ``path`` ('stage1/conv/kernel') in the update
    made at train ``step`` (an int, or an array of steps), where ``head`` holds the paths of a
    transfer run's new head and ``plateau_scale`` is reduce-on-plateau's current factor. 0 for
    a parameter that does not change then. (With accumulation or SAM an update is applied at
    the last train step of its window; every step of the window reports its learning rate.)"""
    steps = np.asarray(step)
    group = transfer_group(config, HEAD if path in head else BACKBONE, steps_per_epoch)
    if group.frozen or (config.optimizer.freeze and re.search(config.optimizer.freeze, path)):
        rate = np.zeros(steps.shape)
    else:
        every = steps_per_update(config)
        count = np.maximum(steps - group.start, 0) // every  # updates the group made before
        base = group_schedule(schedule(config, steps_per_epoch, total_steps), group)
        scale = plateau_scale if config.schedule.name == "reduce_on_plateau" else 1.0
        rate = np.asarray(base(count * every), np.float64) * multiplier(config)(path) * scale
        rate = np.where(steps < group.start, 0.0, rate)
        frozen_from = freeze_step(config, steps_per_epoch)(path)
        if frozen_from is not None:
            rate = np.where(steps >= frozen_from, 0.0, rate)
    return float(rate) if rate.ndim == 0 else rate


# Durations in epochs of the learning rate that a time budget scales (schedule.boundaries and
# exponential decay too, in scale_durations).
EPOCH_DURATIONS = (("schedule", "warmup_epochs"), ("schedule", "cycle_epochs"),
                   ("transfer", "frozen_epochs"))


def scale_durations(config: mlc.ConfigDict, factor: float) -> None:
    """Multiplies, in place, every learning-rate duration in epochs by ``factor`` (a run made
    ``factor`` times as long keeps its schedule's shape; warmup_fraction needs nothing); a
    per-epoch exponential decay becomes the one that ends at the same factor."""
    original = config.copy_and_resolve_references()
    for section, key in EPOCH_DURATIONS:
        config[section][key] = original[section][key] * factor
    config.schedule.boundaries = tuple(b * factor for b in original.schedule.boundaries)
    if original.schedule.name == "exponential":
        config.schedule.decay_factor = original.schedule.decay_factor ** (1 / factor)
