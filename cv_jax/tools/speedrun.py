"""Time-to-accuracy over seeds: ``python -m cv_jax.tools.speedrun
--config=configs/cifar10.py:headline --workdir=runs/speedrun [--seeds=25] [--target=0.94]
[--max_seconds=0] [--nowarmup]`` (or ``make speedrun SEEDS=25``).

Each seed is a normal run (``seed_<k>/`` in the workdir; finished ones only report) that
evaluates once, at the end, timed as airbench times its runs (``cv_jax.training.clock``;
``results.json``'s ``timed_s``):

- on the clock: the data-dependent init (the whitening layer computed from training images,
  ``models.data_dependent_init`` in ``setup.build_state``), every training step (with the
  loop's periodic train records) and the final evaluation (with TTA when the recipe has it);
- off it: loading the data and moving the training set to the devices, the model's random
  init, compilation, every checkpoint save (the final one and its SHA-256 seal included) and
  writing the results.

Before the first seed that still has to train, one untimed warm-up run of the first seed's
config in ``workdir/warmup/`` (deleted before and after; never reported) pays the process's
first-time costs (device set-up, the decoded-data cache, caches of the host-side init), so the
first seed is timed like the others. With ``max_seconds`` no further seed starts once the
command's time so far plus the previous run's would pass it (at least one seed runs). The
report gives the test accuracy's mean, sample std and minimum, how many seeds reached the
target, and the mean and std of the timed seconds, with the hardware and versions.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence

import ml_collections as mlc
import numpy as np
from absl import flags

from cv_jax.runtime import cpu_defaults
from cv_jax.training.results import read_results
from cv_jax.workflows import multirun

NAMES = ("seeds", "first_seed", "target", "warmup", "max_seconds")
log = logging.getLogger("cv_jax")


def define_flags() -> None:
    flags.DEFINE_integer("seeds", 25, "Number of seeds (runs).")
    flags.DEFINE_integer("first_seed", 0, "Seeds are first_seed, first_seed + 1, ...")
    flags.DEFINE_float("target", 0.94, "Test accuracy a run must reach.")
    flags.DEFINE_bool("warmup", True, "Train one untimed, unreported run before the seeds.")
    flags.DEFINE_float("max_seconds", 0.0, "Start no seed once the time so far plus the "
                       "previous run's passes this (0: no limit; at least one seed runs).")


def seed_config(config: mlc.ConfigDict, seed: int) -> mlc.ConfigDict:
    """``config`` with ``seed`` (data order included) and a single evaluation at the end."""
    return multirun.variant(config, {"seed": seed, "data_seed": -1,
                                     "training.eval_every_epochs": config.training.num_epochs})


def seed_dir(workdir: str, seed: int) -> str:
    return os.path.join(workdir, f"seed_{seed}")


def timed_seconds(result: dict) -> float:
    if "timed_s" not in result:
        raise ValueError("a seed's results.json has no 'timed_s' (timed by an older cv_jax, "
                         "which did not time the same way): use a new --workdir")
    if result.get("timed_from_step", 0):
        raise ValueError(f"a seed's run was resumed at step {result['timed_from_step']}, so its "
                         "timed_s covers only the steps after it: delete that seed's directory "
                         "(seed_<k>/ in the workdir) to time it in one go")
    return result["timed_s"]


def summary(results: Sequence[dict], target: float) -> dict:
    """Accuracy and timing statistics of finished speed runs."""
    accuracy = [r["test_accuracy"] for r in results]
    seconds = [timed_seconds(r) for r in results]
    return {
        "accuracy": {**multirun.mean_std(accuracy), "min": float(np.min(accuracy))},
        "timed_s": multirun.mean_std(seconds),
        "target": target,
        "reached_target": int(np.sum(np.asarray(accuracy) >= target)),
    }


def markdown(config: mlc.ConfigDict, seeds: Sequence[int], results: Sequence[dict],
             stats: dict, info: dict) -> str:
    acc, secs = stats["accuracy"], stats["timed_s"]
    rows = [(s, f"{r['test_accuracy']:.4f}", f"{r['timed_s']:.2f}",
             f"{r['compile_time_s']:.1f}") for s, r in zip(seeds, results, strict=True)]
    std = "n/a" if secs["std"] is None else f"{secs['std']:.2f}"
    return "\n".join([
        f"# Speed run: {config.recipe} recipe, {config.training.num_epochs:g} epochs", "",
        multirun.provenance_line(info), "",
        f"Test accuracy {multirun.format_mean_std(acc)} (min {acc['min']:.4f}) over "
        f"{acc['n']} seeds; {stats['reached_target']}/{acc['n']} reached "
        f"{stats['target']:.2%}. Timed (data-dependent init, training, final evaluation; not "
        f"data loading, compilation or checkpoints): {secs['mean']:.2f} ± {std} s per run.",
        "",
        multirun.markdown_table(("seed", "test accuracy", "timed s", "compile s"), rows),
    ])


def warm_up(config: mlc.ConfigDict, workdir: str) -> None:
    """One untimed run of ``config`` in ``workdir/warmup`` (removed before and after)."""
    path = os.path.join(workdir, "warmup")
    shutil.rmtree(path, ignore_errors=True)
    log.info("Warm-up run (untimed, not reported) in %s.", path)
    multirun.run(config, path)
    shutil.rmtree(path, ignore_errors=True)


def is_done(workdir: str) -> bool:
    results = read_results(workdir)
    return bool(results and results.get("finished"))


def speedrun(config: mlc.ConfigDict, workdir: str, seeds: int = 25, first_seed: int = 0,
             target: float = 0.94, warmup: bool = True, max_seconds: float = 0.0) -> dict:
    """Runs (or resumes) the seeds, after a warm-up run, and writes ``speedrun.json`` /
    ``speedrun.md``."""
    started = time.perf_counter()
    chosen = list(range(first_seed, first_seed + seeds))
    configs = [seed_config(config, s) for s in chosen]
    previous = 0.0  # how long the previous run took
    warmup = warmup and not all(is_done(seed_dir(workdir, s)) for s in chosen)
    if warmup:
        warm_up(configs[0], workdir)
        previous = time.perf_counter() - started
    ran, results = [], []
    for seed, seed_cfg in zip(chosen, configs, strict=True):
        if ran and max_seconds and time.perf_counter() - started + previous > max_seconds:
            log.info("Stopping after %d seeds: another would pass max_seconds=%g.", len(ran),
                     max_seconds)
            break
        begin = time.perf_counter()
        results.append(multirun.run(seed_cfg, seed_dir(workdir, seed)))
        ran.append(seed)
        previous = time.perf_counter() - begin
    stats = summary(results, target)
    info = multirun.provenance(configs[:len(ran)], results)
    report = {**stats, "seeds": ran, "runs": results, "provenance": info,
              "warmup": warmup, "max_seconds": max_seconds}
    multirun.write_report(workdir, "speedrun", report,
                          markdown(config, ran, results, stats, info))
    return report


if __name__ == "__main__":
    cpu_defaults.apply()  # before JAX starts its backend
    multirun.cli("speedrun", speedrun, define_flags, NAMES)
