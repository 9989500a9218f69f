"""What a run directory records about the run: its config (config.json) and, once it is
finished, its results (results.json); whether a directory's run is finished."""

from __future__ import annotations

import json
import os
import platform

import jax
import ml_collections as mlc
import numpy as np

from cv_jax.optim import opt_state
from cv_jax.training.plan import Plan
from cv_jax.training.sharding import describe_devices
from cv_jax.training.state import TrainState


def save_config(config: mlc.ConfigDict, workdir: str) -> None:
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def write_results(workdir: str, results: dict) -> None:
    """Writes workdir/results.json atomically."""
    if jax.process_index() != 0:
        return
    path = os.path.join(workdir, "results.json")
    with open(path + ".tmp", "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)


def read_json(workdir: str, name: str) -> dict | None:
    """``workdir/name`` parsed, or None when the run has not written it."""
    path = os.path.join(workdir, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def read_results(workdir: str) -> dict | None:
    return read_json(workdir, "results.json")


def is_finished(previous: dict | None, latest: int | None, plan: Plan) -> bool:
    """Whether ``results.json`` belongs to a run that completed at the latest checkpoint:
    all its planned steps, or stopped early."""
    if not previous or not previous.get("finished") or previous.get("steps") != latest:
        return False
    return latest == plan.total_steps or bool(previous.get("stopped_early"))


def results_record(config: mlc.ConfigDict, plan: Plan, step: int, state: TrainState,
                   last_eval: dict, best_step: int | None, timing: dict,
                   mesh: jax.sharding.Mesh, stopped_early: bool = False,
                   skipped: tuple[tuple[str, str], ...] = ()) -> dict:
    """What ``results.json`` holds for a finished run: the last evaluation, how long it trained
    (``timing``: train/compile seconds, the clock's ``timed_s``, images/s), where and what it
    ran, and the data files ``skipped`` under dataset.bad_files='skip' (file -> reason)."""
    return {
        **last_eval,
        "best_step": best_step,
        "steps": step,
        "epochs": step / plan.steps_per_epoch,
        "planned_steps": plan.total_steps,
        "stopped_early": stopped_early,
        "restored_best": stopped_early and config.early_stopping.restore_best,
        **timing,
        "device": describe_devices(mesh),
        "jax_version": jax.__version__,
        "python": platform.python_version(),
        "recipe": config.recipe,
        "model": config.model.name,
        "parameters": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params)),
        "skipped_steps": opt_state.skipped_steps(state.opt_state),  # training.nonfinite='skip'
        "num_skipped_files": len(skipped),
        "skipped_files": dict(skipped),
        "finished": True,
    }
