"""Learning-rate schedules from config, with durations given in epochs.

Every schedule is an optax schedule (step -> learning rate). Warmup, when asked for, is a
linear ramp from ``warmup_init_factor * lr`` to ``lr`` over ``warmup_epochs``, joined in
front of the main schedule, which then runs over the remaining steps.
"""

from __future__ import annotations

from collections.abc import Callable

import ml_collections as mlc
import optax

from cv_jax.configlib import ConfigError


def _constant(lr: float, cfg: mlc.ConfigDict, steps: int, spe: int, offset: int):
    del cfg, steps, spe, offset
    return optax.constant_schedule(lr)


def _piecewise(lr: float, cfg: mlc.ConfigDict, steps: int, spe: int, offset: int):
    """Multiply by ``decay_factor`` at each boundary (epochs counted from the start of the run)."""
    del steps
    scales = {round(b * spe) - offset: cfg.decay_factor for b in cfg.boundaries}
    return optax.piecewise_constant_schedule(lr, scales)


def _exponential(lr: float, cfg: mlc.ConfigDict, steps: int, spe: int, offset: int):
    """lr * decay_factor ** (epoch); smooth per step, or per whole epoch when staircase."""
    del steps, offset
    return optax.exponential_decay(lr, transition_steps=spe, decay_rate=cfg.decay_factor,
                                   staircase=cfg.staircase)


def _cosine(lr: float, cfg: mlc.ConfigDict, steps: int, spe: int, offset: int):
    del spe, offset
    return optax.cosine_decay_schedule(lr, decay_steps=max(steps, 1), alpha=cfg.end_factor)


def _linear(lr: float, cfg: mlc.ConfigDict, steps: int, spe: int, offset: int):
    """Linear decay to ``end_factor * lr``; with warmup this is the one-cycle triangle."""
    del spe, offset
    return optax.linear_schedule(lr, cfg.end_factor * lr, transition_steps=max(steps, 1))


SCHEDULES: dict[str, Callable] = {
    "constant": _constant,
    "piecewise": _piecewise,
    "exponential": _exponential,
    "cosine": _cosine,
    "linear": _linear,
}


def create_schedule(config: mlc.ConfigDict, steps_per_epoch: int,
                    total_steps: int) -> optax.Schedule:
    """The learning-rate schedule of ``config.schedule`` for ``config.optimizer.learning_rate``."""
    cfg = config.schedule
    if cfg.name not in SCHEDULES:
        raise ConfigError(
            f"config.schedule.name={cfg.name!r} is unknown; choose one of {sorted(SCHEDULES)}"
        )
    lr = config.optimizer.learning_rate
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total_steps)
    main = SCHEDULES[cfg.name](lr, cfg, total_steps - warmup, steps_per_epoch, warmup)
    if warmup == 0:
        return main
    ramp = optax.linear_schedule(cfg.warmup_init_factor * lr, lr, transition_steps=warmup)
    return optax.join_schedules([ramp, main], boundaries=[warmup])
