"""Print and plot a config's learning rate, without training or loading data:

    python -m cv_jax.tools.schedules --config=configs/cifar10.py:cpu [--out=lr.png]

The table is the schedule (warmup included) at evenly spaced steps and where it changes course;
then each group of the model's parameters that learns differently (``optimizer.freeze``,
``optimizer.lr_multipliers``, a transfer run's head and backbone) with its learning rate at
the first, peak and last step. Every number comes from :func:`cv_jax.optim.lr.learning_rate`,
the function the optimizer chain is built from; the plot has a curve per group.
"""

from __future__ import annotations

import collections
import sys

import jax
import ml_collections as mlc
import numpy as np
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from cv_jax import models
from cv_jax.config import validate
from cv_jax.optim import lr, schedules
from cv_jax.optim.chain import param_path
from cv_jax.optim.plateau import plateau_metric
from cv_jax.runtime import cpu_defaults
from cv_jax.training import runs
from cv_jax.training.plan import Plan


def events(config: mlc.ConfigDict, spe: int, total: int) -> list[int]:
    """Steps where the schedule changes course: warmup end, multistep boundaries, restarts."""
    cfg = config.schedule
    warmup = lr.warmup_steps(config, spe, total)
    points = [warmup] if warmup else []
    if cfg.name in ("multistep", "piecewise"):
        points += [warmup + s for s in schedules.multistep_scales(cfg, spe, warmup)]
    if cfg.name == "sgdr":
        cycles = schedules.sgdr_cycles(cfg, total - warmup, spe)
        points += [warmup + s for s in np.cumsum(cycles)[:-1]]
    return [int(p) for p in points if 0 < p < total]


def parameter_paths(config: mlc.ConfigDict, num_classes: int) -> list[str]:
    """The paths of the config's model's parameters (shapes only: nothing is computed)."""
    model = runs.build_model(config, num_classes)
    shape = (1, *models.default_input_shape(config.model.name))
    key = jax.random.key_data(jax.random.key(0))
    params = jax.eval_shape(lambda: model.init({"params": key, "dropout": key},
                                               np.zeros(shape, np.float32), train=False))
    return [param_path(path) for path, _ in
            jax.tree_util.tree_flatten_with_path(params["params"])[0]]


def describe(config: mlc.ConfigDict, train_examples: int,
             num_classes: int = 10) -> tuple[str, dict[str, np.ndarray], int]:
    """A text report of a config's learning rate; ``{group: LR at every step}``; steps/epoch."""
    num_train = train_examples - config.dataset.validation_size
    if config.dataset.max_train_examples:
        num_train = min(num_train, config.dataset.max_train_examples)
    plan = Plan.from_config(config, num_train)
    spe, total = plan.steps_per_epoch, plan.total_steps
    steps = np.arange(total)
    lrs = np.asarray(lr.schedule(config, spe, total)(steps), np.float64)
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
    per_update = lr.steps_per_update(config)
    if per_update > 1:
        lines.append(f"one optimizer update every {per_update} steps (accumulate_steps, sam); "
                     "each uses the LR of the first step of its window")
    if cfg.name == "reduce_on_plateau":
        lines.append(f"reduce_on_plateau: at run time the LR is also multiplied by "
                     f"{cfg.decay_factor:g} after {cfg.plateau_patience} evaluations without "
                     f"improvement of {plateau_metric(config)} (floor {cfg.end_factor:g} x)")
    groups = parameter_groups(config, num_classes, spe, total, steps)
    lines.append(f"parameter groups of {config.model.name!r} ({num_classes} classes):")
    for name, (count, curve) in groups.items():
        lines.append(f"  {name}: {count} parameter arrays; LR {curve[0]:.6g} at step 0, "
                     f"max {curve.max():.6g}, {curve[-1]:.6g} at step {total - 1}")
    return "\n".join(lines), {name: curve for name, (_, curve) in groups.items()}, spe


def parameter_groups(config: mlc.ConfigDict, num_classes: int, spe: int, total: int,
                     steps: np.ndarray) -> dict[str, tuple[int, np.ndarray]]:
    """``{group: (number of parameter arrays, LR at each step)}``: parameters with the same
    learning rate at every step form one group, named after its first parameter."""
    paths = parameter_paths(config, num_classes)
    head = (runs.head_paths(config, num_classes, models.default_input_shape(config.model.name))
            if lr.splits_by_transfer(config) else frozenset())
    curves: dict[bytes, list] = collections.OrderedDict()
    for path in paths:
        curve = lr.learning_rate(config, spe, total, path, steps, head)
        entry = curves.setdefault(curve.tobytes(), [path, 0, curve])
        entry[1] += 1
    return {(first if count == 1 else f"{first} and {count - 1} more"): (count, curve)
            for first, count, curve in curves.values()}


def plot(curves: dict[str, np.ndarray], spe: int, path: str, title: str) -> None:
    """One curve per parameter group, LR against epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, curve in curves.items():
        ax.plot(np.arange(len(curve)) / spe, curve, label=name)
    ax.set(xlabel="epoch", ylabel="learning rate", title=title)
    if len(curves) > 1:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def define_flags() -> None:
    config_flags.DEFINE_config_file("config", None, "Config file (and :variant).",
                                    lock_config=True)
    flags.DEFINE_string("out", "lr.png", "Where to save the plot ('' = no plot).")
    flags.DEFINE_integer("train_examples", 50000,
                         "Training-set size (before validation_size / max_train_examples), "
                         "which the config does not know.")
    flags.DEFINE_integer("num_classes", 10, "Classes of the dataset (the model's head).")
    flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)
    config = flags.FLAGS.config
    validate(config)
    text, curves, spe = describe(config, flags.FLAGS.train_examples, flags.FLAGS.num_classes)
    print(text)
    if flags.FLAGS.out:
        total = len(next(iter(curves.values())))
        plot(curves, spe, flags.FLAGS.out, f"{config.schedule.name} (peak "
             f"{config.optimizer.learning_rate:g}, {total / spe:g} epochs)")
        print(f"plot: {flags.FLAGS.out}")


if __name__ == "__main__":
    cpu_defaults.apply()  # before JAX starts its backend
    define_flags()
    app.run(main, argv=sys.argv)
