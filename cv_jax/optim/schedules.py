"""Learning-rate schedules from config, with durations given in epochs.

Every schedule is an optax schedule (train step -> learning rate). Warmup, when asked for, is a
linear ramp from ``warmup_init_factor * lr`` to ``lr`` over ``warmup_epochs``, joined in front
of the main schedule, which then runs over the remaining steps. ``config.schedule.name``:

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
                     reduce_on_plateau factor, driven by the eval metric (cv_jax.optim.chain):
                     ``decay_factor`` after ``plateau_patience`` evaluations without a relative
                     improvement of ``plateau_rtol``, never below ``end_factor``. The logged
                     ``learning_rate`` metric is the unscaled schedule; each change of the
                     factor is logged, and the factor is checkpointed with the optimizer state.

``python -m cv_jax.optim.schedules --config=configs/cifar10.py[:...] [--out=lr.png]`` prints and
plots
a config's schedule without training or loading data.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import ml_collections as mlc
import numpy as np
import optax

from cv_jax.config import ConfigError
from cv_jax.runtime import cpu_defaults
from cv_jax.training.plan import Plan


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


def warmup_steps(config: mlc.ConfigDict, steps_per_epoch: int, total_steps: int) -> int:
    return min(round(config.schedule.warmup_epochs * steps_per_epoch), total_steps)


def create_schedule(config: mlc.ConfigDict, steps_per_epoch: int,
                    total_steps: int) -> optax.Schedule:
    """The learning-rate schedule of ``config.schedule`` for ``config.optimizer.learning_rate``."""
    cfg = config.schedule
    if cfg.name not in SCHEDULES:
        raise ConfigError(
            f"config.schedule.name={cfg.name!r} is unknown; choose one of {sorted(SCHEDULES)}"
        )
    lr = config.optimizer.learning_rate
    warmup = warmup_steps(config, steps_per_epoch, total_steps)
    main = SCHEDULES[cfg.name](lr, cfg, total_steps - warmup, steps_per_epoch, warmup)
    if warmup == 0:
        return main
    ramp = optax.linear_schedule(cfg.warmup_init_factor * lr, lr, transition_steps=warmup)
    return optax.join_schedules([ramp, main], boundaries=[warmup])


# --- python -m cv_jax.optim.schedules ------------------------------------------------------------

def events(config: mlc.ConfigDict, spe: int, total: int) -> list[int]:
    """Steps where the schedule changes course: warmup end, multistep boundaries, restarts."""
    cfg = config.schedule
    warmup = warmup_steps(config, spe, total)
    points = [warmup] if warmup else []
    if cfg.name in ("multistep", "piecewise"):
        points += [warmup + s for s in multistep_scales(cfg, spe, warmup)]
    if cfg.name == "sgdr":
        points += [warmup + s for s in np.cumsum(sgdr_cycles(cfg, total - warmup, spe))[:-1]]
    return [int(p) for p in points if 0 < p < total]


def describe(config: mlc.ConfigDict, train_examples: int) -> tuple[str, np.ndarray, int]:
    """A text report of a config's schedule, the LR at every step 0..total-1, and steps/epoch."""
    from cv_jax.optim import chain as optim

    num_train = train_examples - config.dataset.validation_size
    if config.dataset.max_train_examples:
        num_train = min(num_train, config.dataset.max_train_examples)
    plan = Plan.from_config(config, num_train)
    spe, total = plan.steps_per_epoch, plan.total_steps
    schedule = create_schedule(config, spe, total)
    lrs = np.asarray(schedule(np.arange(total)), np.float64)
    cfg = config.schedule
    lines = [
        f"schedule {cfg.name!r}, peak LR {config.optimizer.learning_rate:g}, optimizer "
        f"{config.optimizer.name!r}; {num_train} training examples / batch "
        f"{config.training.batch_size} = {spe} steps per epoch, {total} steps "
        f"({total / spe:g} epochs)",
        f"{'step':>8} {'epoch':>8}  learning rate",
    ]
    rows = sorted({*np.linspace(0, total - 1, 11).round().astype(int).tolist(),
                   *events(config, spe, total)})
    lines += [f"{s:>8} {s / spe:>8.3f}  {lrs[s]:.6g}" for s in rows]
    peak = int(np.argmax(lrs))
    lines += [f"peak  {lrs[peak]:.6g} at step {peak} (epoch {peak / spe:.3f})",
              f"final {lrs[-1]:.6g} at step {total - 1} (the last update)"]
    per_update = optim.steps_per_update(config)
    if per_update > 1:
        lines.append(f"one optimizer update every {per_update} steps (accumulate_steps, sam); "
                     "each uses the LR of the first step of its window")
    if cfg.name == "reduce_on_plateau":
        lines.append(f"reduce_on_plateau: at run time the LR is also multiplied by "
                     f"{cfg.decay_factor:g} after {cfg.plateau_patience} evaluations without "
                     f"improvement of {optim.plateau_metric(config)} (floor "
                     f"{cfg.end_factor:g} x)")
    return "\n".join(lines), lrs, spe


def plot(lrs: np.ndarray, spe: int, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(np.arange(len(lrs)) / spe, lrs)
    ax.set(xlabel="epoch", ylabel="learning rate", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    from absl import app, flags
    from absl import logging as absl_logging
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config file (and :variant).",
                                    lock_config=True)
    flags.DEFINE_string("out", "lr.png", "Where to save the plot ('' = no plot).")
    flags.DEFINE_integer("train_examples", 50000,
                         "Training-set size (before validation_size / max_train_examples), "
                         "which the config does not know.")
    flags.mark_flags_as_required(["config"])

    def run(args):
        if len(args) > 1:
            raise app.UsageError(f"Unexpected arguments: {args[1:]}")
        absl_logging.set_verbosity(absl_logging.WARNING)
        config = flags.FLAGS.config
        from cv_jax.config import validate

        validate(config)
        text, lrs, spe = describe(config, flags.FLAGS.train_examples)
        print(text)
        if flags.FLAGS.out:
            plot(lrs, spe, flags.FLAGS.out, f"{config.schedule.name} (peak "
                 f"{config.optimizer.learning_rate:g}, {len(lrs) / spe:g} epochs)")
            print(f"plot: {flags.FLAGS.out}")

    app.run(run, argv=argv or sys.argv)


if __name__ == "__main__":
    cpu_defaults.apply()  # before JAX starts its backend
    main()
