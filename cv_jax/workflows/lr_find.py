"""Learning-rate range test (Smith, 2017; fastai's ``lr_find``):

    python -m cv_jax.workflows.lr_find --config=configs/cifar10.py:cpu [--steps=100 --min_lr=1e-7
        --max_lr=10 --out=lr_find.png]

Trains the config's model on its training data, with its optimizer chain, augmentation and
loss, for at most ``--steps`` steps while the learning rate grows exponentially from
``--min_lr`` to ``--max_lr`` (the config's own schedule is ignored). The loss is smoothed with
a bias-corrected exponential moving average (beta 0.98, as fastai); the test stops early once
the smoothed loss exceeds 4x its minimum (or is not finite). Writes the loss-vs-LR plot (log
x) to ``--out`` and the numbers to the same path with a ``.json`` suffix, and prints the
suggested learning rate. The defaults are fastai's (100 steps from 1e-7 to 10); the cpu
CIFAR-10 recipe takes about 2 s a step on a 2-core CPU, so ~4 minutes (``--steps=200``: ~8).

The suggestion is the LR at the minimum of the smoothed loss divided by 10 (fastai's
``lr_min``): at the minimum the LR is already about as large as training tolerates, and a
tenth of it is still on the steep, decreasing part of the curve. It is more robust than the
point of steepest descent (fastai's older ``lr_steep``), which on a short, noisy test can jump
to a random early bump; the steepest point is reported as well. For a schedule with warmup
and decay, the suggestion is a candidate for ``optimizer.learning_rate`` (the peak).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import sys
import time

import jax
import ml_collections as mlc
import numpy as np

from cv_jax.config import ConfigError, validate
from cv_jax.optim import chain
from cv_jax.runtime import cpu_defaults
from cv_jax.training import datasets, setup
from cv_jax.training.loop import EveryStep, Loop, run
from cv_jax.training.plan import Plan

log = logging.getLogger("cv_jax")


def exponential_lrs(min_lr: float, max_lr: float, num_steps: int):
    """step -> min_lr * (max_lr / min_lr) ** (step / (num_steps - 1)), an optax schedule."""
    ratio = math.log(max_lr / min_lr) / max(num_steps - 1, 1)
    return lambda step: min_lr * jax.numpy.exp(ratio * step)


def smooth(values: list[float], beta: float = 0.98) -> np.ndarray:
    """Bias-corrected exponential moving average (fastai's ``SmoothenValue``)."""
    out, avg = [], 0.0
    for i, v in enumerate(values):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta ** (i + 1)))
    return np.asarray(out)


def suggest(lrs: np.ndarray, smoothed: np.ndarray) -> dict[str, float]:
    """``lr_min``: LR at the smoothed-loss minimum / 10 (the suggestion, clipped to the tested
    range); ``lr_steep``: LR of the steepest descent of smoothed loss vs log LR before it."""
    best = int(np.argmin(smoothed))
    lr_min = float(max(lrs[best] / 10, lrs[0]))
    if best >= 2:
        slope = np.gradient(smoothed[: best + 1], np.log(lrs[: best + 1]))
        lr_steep = float(lrs[int(np.argmin(slope))])
    else:
        lr_steep = float(lrs[best])
    return {"suggested_lr": lr_min, "lr_at_min_loss": float(lrs[best]),
            "min_smoothed_loss": float(smoothed[best]), "lr_steep": lr_steep}


class RangeTest(EveryStep):
    """Records each step's LR, loss and smoothed loss (bias-corrected, as ``smooth``); stops
    the loop once the smoothed loss is not finite (dropping that step) or exceeds
    ``stop_factor`` x its minimum."""

    def __init__(self, schedule, num_steps: int, stop_factor: float, beta: float):
        self.schedule, self.num_steps = schedule, num_steps
        self.stop_factor, self.beta = stop_factor, beta
        self.lrs: list[float] = []
        self.raw: list[float] = []
        self.smoothed: list[float] = []
        self.avg, self.best, self.stopped = 0.0, math.inf, ""
        self.started = time.perf_counter()

    def act(self, loop: Loop) -> None:
        step = loop.step - 1  # the step just taken, from 0
        loss = float(loop.metrics["loss"])
        self.lrs.append(float(self.schedule(step)))
        self.raw.append(loss)
        self.avg = self.beta * self.avg + (1 - self.beta) * loss
        self.smoothed.append(self.avg / (1 - self.beta ** (step + 1)))
        if not math.isfinite(self.smoothed[-1]):
            self.stopped = f"the loss became {loss} at LR {self.lrs[-1]:.3g}"
            self.lrs, self.raw, self.smoothed = self.lrs[:-1], self.raw[:-1], self.smoothed[:-1]
            loop.stop = self.stopped
            return
        self.best = min(self.best, self.smoothed[-1])
        if (step + 1) % 20 == 0:
            log.info("step %d/%d  LR %.3g  loss %.4f  smoothed %.4f  (%.0f s)", step + 1,
                     self.num_steps, self.lrs[-1], loss, self.smoothed[-1],
                     time.perf_counter() - self.started)
        if step > 0 and self.smoothed[-1] > self.stop_factor * self.best:
            self.stopped = (f"the smoothed loss {self.smoothed[-1]:.3g} exceeded "
                            f"{self.stop_factor:g}x its minimum {self.best:.3g} at LR "
                            f"{self.lrs[-1]:.3g}")
            loop.stop = self.stopped


def lr_find(config: mlc.ConfigDict, num_steps: int = 100, min_lr: float = 1e-7,
            max_lr: float = 10.0, stop_factor: float = 4.0, beta: float = 0.98) -> dict:
    """Runs the range test; returns the LRs, raw and smoothed losses and the suggestion."""
    if not 0 < min_lr < max_lr:
        raise ConfigError(f"need 0 < min_lr < max_lr, got {min_lr} and {max_lr}")
    if num_steps < 2:
        raise ConfigError(f"--steps={num_steps}: the test needs at least 2 steps")
    validate(config)
    mesh = setup.make_mesh(config)
    data = datasets.load_datasets(config)
    plan = Plan.from_config(config, len(data.train))
    schedule = exponential_lrs(min_lr, max_lr, num_steps)
    tx = chain.create_optimizer(config, schedule)
    settings = setup.step_settings(config, data.train, plan, schedule)
    state = setup.build_state(config, data.train, settings, tx, mesh)
    make_step = functools.partial(setup.make_train_step, settings, config.training.batch_size,
                                  mesh)
    program = setup.compile_program(  # the test records every step: one step per call
        setup.device_program(config, data.train, plan, mesh, make_step, steps_per_call=1),
        state).program
    test = RangeTest(schedule, num_steps, stop_factor, beta)
    run(program, state, 0, num_steps, [test])
    lrs, raw, smoothed, stopped = test.lrs, test.raw, test.smoothed, test.stopped
    elapsed = time.perf_counter() - test.started
    if len(lrs) < 2:
        raise FloatingPointError(f"the range test diverged at once ({stopped}); lower --min_lr")
    note = None
    if int(np.argmin(smoothed)) == len(smoothed) - 1:
        note = ("the smoothed loss was still falling at the last LR tested: the suggestion is "
                "a lower bound; a larger --max_lr would show where it turns up")
    result = {
        "note": note,
        "config_recipe": config.recipe, "model": config.model.name,
        "optimizer": config.optimizer.name, "batch_size": config.training.batch_size,
        "min_lr": min_lr, "max_lr": max_lr, "steps_requested": num_steps,
        "steps_run": len(lrs), "stopped_early": stopped or None, "seconds": elapsed,
        **suggest(np.asarray(lrs), np.asarray(smoothed)),
        "lrs": lrs, "losses": raw, "smoothed_losses": smoothed,
    }
    return result


def save(result: dict, out: str) -> str:
    """Writes the plot to ``out`` and the numbers to ``out`` with a .json suffix; returns that."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(result["lrs"], result["losses"], alpha=0.3, label="loss")
    ax.plot(result["lrs"], result["smoothed_losses"], label="smoothed loss")
    ax.axvline(result["suggested_lr"], color="C3", linestyle="--",
               label=f"suggested {result['suggested_lr']:.3g} (min/10)")
    ax.axvline(result["lr_steep"], color="C2", linestyle=":",
               label=f"steepest {result['lr_steep']:.3g}")
    ax.set_xscale("log")
    finite = [v for v in result["losses"] if math.isfinite(v)]
    low = min(min(finite), min(result["smoothed_losses"]))
    high = max(result["smoothed_losses"])
    ax.set_ylim(low - 0.1 * (high - low), high + 0.1 * (high - low) + 1e-9)
    ax.set(xlabel="learning rate", ylabel="training loss",
           title=f"LR range test: {result['model']}, {result['optimizer']}, "
                 f"batch {result['batch_size']}")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    path = os.path.splitext(out)[0] + ".json"
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    return path


def main(argv: list[str] | None = None) -> None:
    from absl import app, flags
    from absl import logging as absl_logging
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config file (and :variant).",
                                    lock_config=True)
    flags.DEFINE_integer("steps", 100, "Maximum number of steps (fastai's default).")
    flags.DEFINE_float("min_lr", 1e-7, "Learning rate of the first step.")
    flags.DEFINE_float("max_lr", 10.0, "Learning rate of the last step.")
    flags.DEFINE_string("out", "lr_find.png", "Plot path; the JSON goes next to it.")
    flags.mark_flags_as_required(["config"])

    def run(args):
        if len(args) > 1:
            raise app.UsageError(f"Unexpected arguments: {args[1:]}")
        absl_logging.set_verbosity(absl_logging.WARNING)
        logging.getLogger("cv_jax").setLevel(logging.INFO)
        f = flags.FLAGS
        result = lr_find(f.config, f.steps, f.min_lr, f.max_lr)
        json_path = save(result, f.out)
        print(f"{result['steps_run']} steps in {result['seconds']:.1f} s"
              + (f"; stopped early: {result['stopped_early']}" if result["stopped_early"]
                 else ""))
        print(f"minimum smoothed loss {result['min_smoothed_loss']:.4f} at LR "
              f"{result['lr_at_min_loss']:.3g}; steepest descent at LR {result['lr_steep']:.3g}")
        print(f"suggested learning rate: {result['suggested_lr']:.3g} (min-loss LR / 10)")
        if result["note"]:
            print(f"note: {result['note']}")
        print(f"plot: {f.out}  numbers: {json_path}")

    app.run(run, argv=argv or sys.argv)


if __name__ == "__main__":
    cpu_defaults.apply()  # before JAX starts its backend
    main()
