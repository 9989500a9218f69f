"""Time-to-accuracy over seeds: ``python -m cv_jax.tools.speedrun
--config=configs/cifar10.py:headline
--workdir=runs/speedrun [--seeds=25] [--target=0.94]`` (or ``make speedrun SEEDS=25``).

Each seed is a normal run (``seed_<k>/`` in the workdir; finished ones only report) that
evaluates once, at the end, as CIFAR-10 speed runs are timed: compilation and the transfer of
the data to the device happen before the clock starts; every training step and the final
(TTA, if the recipe has it) evaluation are inside it (``results.json``'s ``train_time_s``). The
report gives the test accuracy's mean, sample std and minimum, how many seeds reached the
target, and the mean and std of the timed seconds, with the hardware and versions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import ml_collections as mlc
import numpy as np
from absl import flags

from cv_jax.runtime import cpu_defaults
from cv_jax.workflows import multirun

NAMES = ("seeds", "first_seed", "target")


def define_flags() -> None:
    flags.DEFINE_integer("seeds", 25, "Number of seeds (runs).")
    flags.DEFINE_integer("first_seed", 0, "Seeds are first_seed, first_seed + 1, ...")
    flags.DEFINE_float("target", 0.94, "Test accuracy a run must reach.")


def seed_config(config: mlc.ConfigDict, seed: int) -> mlc.ConfigDict:
    """``config`` with ``seed`` (data order included) and a single evaluation at the end."""
    return multirun.variant(config, {"seed": seed, "data_seed": -1,
                                     "training.eval_every_epochs": config.training.num_epochs})


def summary(results: Sequence[dict], target: float) -> dict:
    """Accuracy and timing statistics of finished speed runs."""
    accuracy = [r["test_accuracy"] for r in results]
    seconds = [r["train_time_s"] for r in results]
    return {
        "accuracy": {**multirun.mean_std(accuracy), "min": float(np.min(accuracy))},
        "train_time_s": multirun.mean_std(seconds),
        "target": target,
        "reached_target": int(np.sum(np.asarray(accuracy) >= target)),
    }


def markdown(config: mlc.ConfigDict, seeds: Sequence[int], results: Sequence[dict],
             stats: dict, info: dict) -> str:
    acc, secs = stats["accuracy"], stats["train_time_s"]
    rows = [(s, f"{r['test_accuracy']:.4f}", f"{r['train_time_s']:.2f}",
             f"{r['compile_time_s']:.1f}") for s, r in zip(seeds, results, strict=True)]
    std = "n/a" if secs["std"] is None else f"{secs['std']:.2f}"
    return "\n".join([
        f"# Speed run: {config.recipe} recipe, {config.training.num_epochs:g} epochs", "",
        multirun.provenance_line(info), "",
        f"Test accuracy {multirun.format_mean_std(acc)} (min {acc['min']:.4f}) over "
        f"{acc['n']} seeds; {stats['reached_target']}/{acc['n']} reached "
        f"{stats['target']:.2%}. Timed (first step to final evaluation): "
        f"{secs['mean']:.2f} ± {std} s per run.", "",
        multirun.markdown_table(("seed", "test accuracy", "timed s", "compile s"), rows),
    ])


def speedrun(config: mlc.ConfigDict, workdir: str, seeds: int = 25, first_seed: int = 0,
             target: float = 0.94) -> dict:
    """Runs (or resumes) every seed and writes ``speedrun.json`` / ``speedrun.md``."""
    chosen = list(range(first_seed, first_seed + seeds))
    configs = [seed_config(config, s) for s in chosen]
    results = [multirun.run(c, os.path.join(workdir, f"seed_{s}"))
               for s, c in zip(chosen, configs, strict=True)]
    stats = summary(results, target)
    info = multirun.provenance(configs, results)
    report = {**stats, "seeds": chosen, "runs": results, "provenance": info}
    multirun.write_report(workdir, "speedrun", report,
                          markdown(config, chosen, results, stats, info))
    return report


if __name__ == "__main__":
    cpu_defaults.apply()  # before JAX starts its backend
    multirun.cli("speedrun", speedrun, define_flags, NAMES)
