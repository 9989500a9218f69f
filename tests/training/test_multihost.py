"""Multi-process training: how a process finds its job (cv_jax.runtime.distributed), and two
processes
on localhost (CPU, gloo collectives, 2 devices each) training one run through
``python -m cv_jax.main`` to the parameters of a one-process run on 4 devices."""

import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from absl import flags
from conftest import REPO

from cv_jax.runtime import distributed
from cv_jax.training import runs

RECIPE = "smoke,model=convnet"
TIMEOUT_S = 300  # for the whole two-process run; a hung collective fails here, not in CI


def job_flags(*argv: str) -> flags.FlagValues:
    values = flags.FlagValues()
    distributed.define_flags(values)
    values(["prog", *argv])
    return values


def test_plain_machine_runs_alone():
    assert distributed.initialize_arguments(distributed.Job(), environ={}) is None


def test_flags_override_environment_variables():
    environ = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2",
               "JAX_PROCESS_ID": "0"}
    job = distributed.job_from(job_flags("--process_id=1"), environ)
    assert job == distributed.Job("10.0.0.1:1234", 2, 1)
    assert distributed.initialize_arguments(job, environ={}) == {
        "coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1}


def test_slurm_step_is_left_to_jax_autodetection():
    slurm = {"SLURM_NTASKS": "4", "SLURM_STEP_NODELIST": "node[1-2]", "SLURM_PROCID": "3"}
    assert distributed.initialize_arguments(distributed.Job(), slurm) == {}
    assert distributed.initialize_arguments(distributed.Job(num_processes=1), slurm) is None
    assert distributed.initialize_arguments(distributed.Job(), slurm | {"SLURM_NTASKS": "1"}) \
        is None


def test_incomplete_or_inconsistent_jobs_are_refused():
    with pytest.raises(ValueError, match="missing --num_processes, --process_id"):
        distributed.initialize_arguments(distributed.Job("localhost:1234"), environ={})
    with pytest.raises(ValueError, match="--process_id=2 must be below --num_processes=2"):
        distributed.initialize_arguments(distributed.Job("localhost:1234", 2, 2), environ={})
    with pytest.raises(ValueError, match=r"\$JAX_NUM_PROCESSES='two' is not an integer"):
        distributed.job_from(job_flags(), {"JAX_NUM_PROCESSES": "two"})


def overrides(data_dir, cache_dir) -> dict:
    """The tiny run both sides train: 4 steps of batch 16, evaluated and saved at 3 and 4."""
    return {"dataset.data_dir": str(data_dir), "dataset.cache_dir": cache_dir,
            "dataset.max_train_examples": 0, "dataset.max_eval_examples": 0,
            "model_init_examples": 64, "model.layers": "conv:8,pool:max:2,conv:8",
            "model.fc": "16", "training.batch_size": 16, "training.num_steps": 4,
            "training.eval_every_epochs": 0.5, "training.log_every_steps": 1,
            "eval.batch_size": 16}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start_job(workdir, settings: dict, num_processes: int, devices_per_process: int,
              log_dir) -> list[tuple[subprocess.Popen, object]]:
    """``python -m cv_jax.main`` as the ``num_processes`` processes of one job on localhost
    (one process: a plain run, no coordinator); returns each process and its log file."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_", "SLURM_", "OMPI_", "TPU_"))}
    # LLVM optimisation of these tiny CPU programs costs more time than it saves; every
    # process of both runs compiles alike.
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process} "
                         "--xla_backend_optimization_level=0",
               JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
    command = [sys.executable, "-m", "cv_jax.main", f"--config=configs/cifar10.py:{RECIPE}",
               f"--workdir={workdir}"]
    command += [f"--config.{key}={value}" for key, value in settings.items()]
    if num_processes > 1:
        command += [f"--coordinator_address=localhost:{free_port()}",
                    f"--num_processes={num_processes}"]
    started = []
    for i in range(num_processes):
        log = open(log_dir / f"{os.path.basename(workdir)}{i}.log", "w+")  # noqa: SIM115
        args = command + ([f"--process_id={i}"] if num_processes > 1 else [])
        started.append((subprocess.Popen(args, cwd=REPO, env=env, stdout=log,
                                         stderr=subprocess.STDOUT), log))
    return started


def wait_for(started: list[tuple[subprocess.Popen, object]]) -> None:
    """Waits for every process; when one fails or TIMEOUT_S passes, kills the rest (they would
    wait on it) and fails with each process's output."""
    processes = [p for p, _ in started]
    deadline = time.monotonic() + TIMEOUT_S
    while (any(p.poll() is None for p in processes) and not any(p.poll() for p in processes)
           and time.monotonic() < deadline):
        time.sleep(0.5)
    for p in processes:
        if p.poll() is None:
            p.kill()
        p.wait()
    outputs = []
    for (p, log), name in zip(started, map(str, range(len(started))), strict=True):
        log.seek(0)
        outputs.append(f"--- process {name} ({log.name}, exit code {p.returncode}) ---\n"
                       f"{log.read()[-4000:]}")
        log.close()
    if any(p.returncode for p in processes):
        pytest.fail(f"a process failed or passed {TIMEOUT_S} s:\n" + "\n".join(outputs))


def params_of(workdir) -> dict:
    return jax.device_get(runs.load_run(str(workdir)).state.params)


@pytest.mark.slow
@pytest.mark.reliability
@pytest.mark.parametrize("pipeline", ["resident", "streaming"])
def test_two_processes_train_like_one_process_on_four_devices(pipeline, tiny_folder, cache_dir,
                                                              tmp_path):
    """Streaming: each process reads its half of every batch (the single process trains from
    the resident set)."""
    settings = overrides(tiny_folder, cache_dir)
    single, multi = tmp_path / "single", tmp_path / "multi"
    wait_for(start_job(single, settings, 1, 4, tmp_path)
             + start_job(multi, settings | {"dataset.pipeline": pipeline}, 2, 2, tmp_path))
    results = {}
    for run in (single, multi):
        with open(run / "results.json") as f:
            results[run.name] = json.load(f)
    assert results["single"]["device"] == "4 x cpu (cpu)"
    assert results["multi"]["device"] == "4 x cpu (cpu) in 2 processes"
    # Every test example counted once: 36 = 2 batches of 16 + 4, padding dropped.
    assert results["multi"]["test_examples"] == results["single"]["test_examples"] == 36
    assert results["multi"]["test_correct"] == results["single"]["test_correct"]
    # Process 0 alone writes metrics: one line per step, one eval record per evaluation.
    records = [json.loads(line) for line in open(multi / "metrics.jsonl")]
    assert [(r["step"], r["split"]) for r in records] == [
        (1, "train"), (2, "train"), (3, "train"), (3, "test"), (4, "train"), (4, "test")]
    assert sorted(os.listdir(multi / "checkpoints")) == ["3", "4"]
    if pipeline == "streaming":  # each process's Grain state, saved with the checkpoint
        assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(
            os.listdir(multi / "checkpoints" / "4" / "data"))
    # The cross-process gradient all-reduce (gloo) sums in another order than one process
    # does, so parameters agree to float32 rounding, not bit for bit.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 params_of(multi), params_of(single))
