"""Resuming after SIGKILL and SIGTERM, damaged checkpoints, and write failures.

The reference is the shared tiny run (``trained_run``: 12 steps, evaluated and checkpointed at 6
and 12). The runs here add a checkpoint every 2 steps (same compiled programs, so the
compilation cache serves them), are interrupted, and must end with the same parameters (bit for
bit), results and metrics.jsonl, apart from the timing fields below.
"""

import errno
import json
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import REPO, TIMING, tiny_config

from cv_jax.training import checkpoint, checkpoint_integrity, runs, train
from cv_jax.training.metrics import drop_records_after

pytestmark = pytest.mark.reliability

RUN = {"checkpoint_every_steps": 2}
TOTAL_STEPS = 12


def run_config(tiny_folder, cache_dir):
    return tiny_config(tiny_folder, cache_dir, **RUN)


def cli(workdir, tiny_folder, cache_dir, **extra) -> list[str]:
    """``python -m cv_jax.main`` with the flags that give ``run_config`` (and ``extra``:
    dotted key -> value)."""
    overrides = {"dataset.data_dir": tiny_folder, "dataset.cache_dir": cache_dir,
                 "dataset.max_train_examples": 0, "dataset.max_eval_examples": 0,
                 "model_init_examples": 64, "training.batch_size": 16,
                 "training.log_every_steps": 1, "eval.batch_size": 16,
                 "training.cpu_formulations": "off",  # as tiny_config (conftest.load_config)
                 **{f"training.{k}": v for k, v in RUN.items()}, **extra}
    return [sys.executable, "-m", "cv_jax.main", "--config=configs/cifar10.py:smoke",
            f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in overrides.items())]


def start(workdir, tiny_folder, cache_dir, log_path, **extra) -> subprocess.Popen:
    """A training process that shares this session's compilation cache; output to log_path
    (``extra``: more overrides, as :func:`cli`)."""
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    with open(log_path, "w") as log:
        return subprocess.Popen(cli(workdir, tiny_folder, cache_dir, **extra), cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT)


def wait_for_step(process, log_path, step, timeout=300.0) -> bool:
    """Waits until ``process`` has logged training step ``step``; False if it exited first."""
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        logged = re.findall(r"step (\d+)/\d+ ", log_path.read_text())
        if logged and int(logged[-1]) >= step:
            return True
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no step {step} after {timeout} s:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.01)
    return False


def steps_on_disk(workdir) -> list[int]:
    """The finished checkpoints, as Orbax lists them."""
    found = ocp.path.step.standard_name_format().find_all(os.path.join(workdir, "checkpoints"))
    return sorted(m.step for m in found)


def latest_step(workdir) -> int:
    return max(steps_on_disk(workdir), default=0)


def params_of(workdir):
    return jax.device_get(runs.load_run(str(workdir)).state.params)


def metrics_of(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


def assert_same_run(workdir, reference_dir, results, reference_results):
    """Bit-identical parameters, equal metrics.jsonl and results.json, timing aside."""
    same = jax.tree.map(np.array_equal, params_of(workdir), params_of(reference_dir))
    assert all(jax.tree.leaves(same))
    assert metrics_of(workdir) == metrics_of(reference_dir)
    untimed = [{k: v for k, v in r.items() if k not in TIMING}
               for r in (results, reference_results)]
    assert untimed[0] == untimed[1]


@pytest.fixture(scope="module")
def reference(trained_run):
    """``(workdir, results)`` of the run trained in one go; read-only."""
    workdir, results = trained_run
    return pathlib.Path(workdir), results


def kill_at_random_steps(workdir, tiny_folder, cache_dir, tmp_path, rng: random.Random,
                         attempts: int, **overrides) -> None:
    """Starts the run ``attempts`` times, each killed (SIGKILL) at a random moment after a
    random step past its latest checkpoint; every latest checkpoint left must be intact."""
    for attempt in range(attempts):
        target = rng.randint(latest_step(workdir) + 1, TOTAL_STEPS - 2)
        log_path = tmp_path / f"attempt{attempt}.log"
        process = start(workdir, tiny_folder, cache_dir, log_path, **overrides)
        if wait_for_step(process, log_path, target):
            time.sleep(rng.uniform(0.0, 0.5))  # anywhere in the step, eval or checkpoint write
            process.kill()
        process.wait()
        latest = os.path.join(workdir, "checkpoints", str(latest_step(workdir)))
        assert checkpoint_integrity.problem(latest) is None, latest


def test_sigkill_at_random_moments_then_resuming_equals_an_uninterrupted_run(
        reference, tiny_folder, cache_dir, tmp_path):
    workdir = tmp_path / "run"
    kill_at_random_steps(workdir, tiny_folder, cache_dir, tmp_path, random.Random(1), 3)
    config = run_config(tiny_folder, cache_dir)
    with open(workdir / "config.json") as f:  # the command line gave the same config
        assert json.load(f) == json.loads(config.to_json_best_effort())
    results = train.train_and_evaluate(config, str(workdir))
    assert_same_run(workdir, reference[0], results, reference[1])


def test_sigterm_saves_a_checkpoint_at_that_step_exits_0_and_resumes_exactly(
        reference, tiny_folder, cache_dir, tmp_path):
    workdir, log_path = tmp_path / "run", tmp_path / "run.log"
    process = start(workdir, tiny_folder, cache_dir, log_path)
    assert wait_for_step(process, log_path, 3)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=300) == 0
    log = log_path.read_text()
    assert "Received SIGTERM: stopping after this step with a checkpoint" in log
    stopped = re.search(r"Stopped by SIGTERM at step (\d+) of 12 with a checkpoint in (\S+); "
                        r"rerun with the same workdir to continue\.", log)
    assert stopped, log[-3000:]
    step = int(stopped[1])
    assert stopped[2] == str(workdir / "checkpoints")
    assert latest_step(workdir) == step and 3 <= step < TOTAL_STEPS
    assert metrics_of(workdir)[-1]["step"] == step
    assert not (workdir / "results.json").exists()
    results = train.train_and_evaluate(run_config(tiny_folder, cache_dir), str(workdir))
    assert_same_run(workdir, reference[0], results, reference[1])
    # The timing covers the steps the resuming process trained.
    assert (reference[1]["timed_from_step"], results["timed_from_step"]) == (0, step)


def largest_file(directory) -> str:
    files = [os.path.join(root, f) for root, _, names in os.walk(directory) for f in names]
    return max(files, key=os.path.getsize)


@pytest.mark.parametrize("damage", ["truncate", "overwrite"])
def test_damaged_latest_checkpoint_is_moved_aside_and_the_run_resumes_from_the_previous(
        damage, reference, tiny_folder, cache_dir, tmp_path, caplog):
    workdir = tmp_path / "run"
    shutil.copytree(reference[0], workdir)
    latest = workdir / "checkpoints" / "12"
    victim = largest_file(latest / "state")
    if damage == "truncate":
        os.truncate(victim, os.path.getsize(victim) // 2)
    else:
        with open(victim, "r+b") as f:
            f.seek(os.path.getsize(victim) // 2)
            middle = f.read(8)
            f.seek(-len(middle), os.SEEK_CUR)
            f.write(bytes(255 - b for b in middle))
    relative = os.path.relpath(victim, latest)
    with caplog.at_level("INFO", logger="cv_jax"):
        results = train.train_and_evaluate(run_config(tiny_folder, cache_dir), str(workdir))
    aside = workdir / "checkpoints" / "damaged" / "12"
    assert (f"Checkpoint {latest} is damaged: {relative} does not match its SHA-256 in "
            f"sha256.json. Moved it to {aside}; the newest intact checkpoint, if any, is used "
            "instead."
            ) in caplog.text
    assert "Resuming from step 6 of 12." in caplog.text
    assert (aside / relative).exists()  # kept for inspection, not deleted
    assert_same_run(workdir, reference[0], results, reference[1])


def test_a_write_cut_short_is_never_the_latest_and_is_removed(
        reference, tiny_folder, cache_dir, tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    shutil.copytree(reference[0], tmp_path / "run")
    unfinished = checkpoints / ("12" + ocp.path.step.TMP_DIR_SUFFIX)
    os.rename(checkpoints / "12", unfinished)
    os.remove(largest_file(unfinished))
    ckpt = checkpoint.Checkpoints.for_run(tmp_path / "run", run_config(tiny_folder, cache_dir),
                                          resume=True)
    assert ckpt.latest_step() == 6
    assert not unfinished.exists()
    ckpt.close()


def test_full_disk_while_saving_names_the_directory_and_keeps_earlier_checkpoints(
        tiny_folder, cache_dir, tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    seal, sealed = checkpoint_integrity.seal, []

    def seal_until_the_disk_is_full(directory):
        sealed.append(directory)
        if len(sealed) == 3:  # steps 2 and 4 are written; step 6 is not
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), directory)
        seal(directory)

    monkeypatch.setattr(checkpoint_integrity, "seal", seal_until_the_disk_is_full)
    config = run_config(tiny_folder, cache_dir)
    directory = workdir / "checkpoints"
    with pytest.raises(checkpoint.CheckpointWriteError) as error:
        train.train_and_evaluate(config, str(workdir))
    assert str(error.value).startswith(
        f"Could not write checkpoint step 6 to {directory}: [Errno 28] No space left on device")
    assert str(error.value).endswith(
        "Earlier checkpoints are kept (latest: step 4); free disk space or fix the directory's "
        "permissions, then rerun with the same --workdir to resume.")
    assert steps_on_disk(workdir) == [2, 4]
    assert all(checkpoint_integrity.problem(str(directory / s)) is None for s in ("2", "4"))


def test_a_workdir_that_cannot_be_created_is_named(tiny_folder, cache_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    message = (f"Cannot write to the workdir {blocker}/run: Not a directory. Pass a --workdir "
               "that can be created and written (check its permissions and free space).")
    with pytest.raises(checkpoint.CheckpointWriteError, match=re.escape(message)):
        train.train_and_evaluate(run_config(tiny_folder, cache_dir), str(blocker / "run"))


def test_resuming_drops_metrics_after_the_checkpoint_and_a_line_cut_short(tmp_path):
    lines = [json.dumps({"step": s, "split": split}) + "\n"
             for s, split in ((1, "train"), (2, "train"), (2, "test"), (3, "train"))]
    (tmp_path / "metrics.jsonl").write_text("".join(lines) + '{"step": 4, "spl')
    assert drop_records_after(str(tmp_path), 2) == 2
    assert (tmp_path / "metrics.jsonl").read_text() == "".join(lines[:3])
