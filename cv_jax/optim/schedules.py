"""The shapes of learning-rate schedules, with durations given in epochs.

Every schedule is an optax schedule (train step -> learning rate) from the peak ``lr``.
:func:`cv_jax.optim.lr.schedule` puts the warmup in front of the shape, which then runs over the
remaining steps. ``config.schedule.name``:

  constant           lr.
  multistep          lr times a factor at each boundary (epochs from the start of the run):
  (alias piecewise)  ``decay_factors`` gives one factor per boundary, or () applies
                     ``decay_factor`` at each. The classic 0.1 -> 0.01 -> 0.001 recipe is
                     ``learning_rate=0.1, boundaries=(100, 150), decay_factor=0.1``.
  exponential        lr * decay_factor ** epoch: every step (smooth) or, with
                     ``staircase=True``, once per whole epoch.
  cosine             half cosine from lr to ``end_factor * lr`` (Loshchilov & Hutter).
  linear             straight line to ``end_factor * lr``; with warmup, the one-cycle triangle.
  polynomial         ``end + (lr - end) * (1 - t/T) ** power``, end = ``end_factor * lr``.
  sgdr               cosine restarts (optax.sgdr_schedule): cycles of ``cycle_epochs``, each
                     ``cycle_mult`` times longer than the one before (SGDR's T_mult), from lr
                     down to ``end_factor * lr`` and back to lr. The cycles are laid out until
                     the run ends; the last is cut off at the end of training.
  reduce_on_plateau  constant lr (after warmup), multiplied at run time by optax.contrib's
                     reduce_on_plateau factor, driven by the eval metric (cv_jax.optim.plateau):
                     ``decay_factor`` after ``plateau_patience`` evaluations without a relative
                     improvement of ``plateau_rtol``, never below ``end_factor``. The logged
                     ``learning_rate`` metric is the unscaled schedule; each change of the
                     factor is logged, and the factor is checkpointed with the optimizer state.

``python -m cv_jax.tools.schedules --config=configs/cifar10.py[:...] [--out=lr.png]`` prints and
plots a config's learning rate without training or loading data.
"""

from __future__ import annotations

from collections.abc import Callable

import ml_collections as mlc
import optax

from cv_jax.config import ConfigError


def _constant(lr: float, cfg: mlc.ConfigDict, steps: int, spe: int, offset: int):
    del cfg, steps, spe, offset
    return optax.constant_schedule(lr)


def multistep_scales(cfg: mlc.ConfigDict, spe: int, offset: int = 0) -> dict[int, float]:
    """{step of the main schedule: factor} for the multistep boundaries (epochs, run start)."""
    factors = tuple(cfg.decay_factors) or (cfg.decay_factor,) * len(cfg.boundaries)
    if len(factors) != len(cfg.boundaries):
        raise ConfigError(
            f"config.schedule.decay_factors={tuple(cfg.decay_factors)} has {len(factors)} "
            f"factors for {len(cfg.boundaries)} boundaries {tuple(cfg.boundaries)}: give one "
            "per boundary, or () to use decay_factor at each"
        )
    scales: dict[int, float] = {}
    for boundary, factor in zip(cfg.boundaries, factors, strict=True):
        step = round(boundary * spe) - offset
        if step < 0:
            raise ConfigError(
                f"config.schedule.boundaries: {boundary} epochs falls inside the warmup "
                f"({offset / spe:g} epochs); put boundaries after config.schedule.warmup_epochs"
            )
        scales[step] = scales.get(step, 1.0) * factor  # boundaries that round to one step
    return scales


def _multistep(lr: float, cfg: mlc.ConfigDict, steps: int, spe: int, offset: int):
    """lr times each boundary's factor from that boundary on (epochs from the run's start)."""
    del steps
    return optax.piecewise_constant_schedule(lr, multistep_scales(cfg, spe, offset))


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


def _polynomial(lr: float, cfg: mlc.ConfigDict, steps: int, spe: int, offset: int):
    del spe, offset
    return optax.polynomial_schedule(lr, cfg.end_factor * lr, power=cfg.power,
                                     transition_steps=max(steps, 1))


def sgdr_cycles(cfg: mlc.ConfigDict, steps: int, spe: int) -> list[int]:
    """Cycle lengths in steps: cycle_epochs * cycle_mult**i, until they cover ``steps``."""
    cycles: list[int] = []
    length = cfg.cycle_epochs * spe
    while sum(cycles) < steps:
        cycles.append(max(1, round(length)))
        length *= cfg.cycle_mult
    return cycles or [max(1, round(length))]


def _sgdr(lr: float, cfg: mlc.ConfigDict, steps: int, spe: int, offset: int):
    del offset
    return optax.sgdr_schedule([
        dict(init_value=lr, peak_value=lr, warmup_steps=0, decay_steps=n,
             end_value=cfg.end_factor * lr)
        for n in sgdr_cycles(cfg, steps, spe)
    ])


SCHEDULES: dict[str, Callable] = {
    "constant": _constant,
    "multistep": _multistep,
    "piecewise": _multistep,
    "exponential": _exponential,
    "cosine": _cosine,
    "linear": _linear,
    "polynomial": _polynomial,
    "sgdr": _sgdr,
    "reduce_on_plateau": _constant,  # the plateau factor is applied by the optimizer chain
}
