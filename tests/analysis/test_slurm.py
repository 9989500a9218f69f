"""Sweeps as SLURM jobs through submitit: a sweep run by submitit's local executor end to end,
the preemption hook, the resources asked for, a job submitted earlier waited for, errors."""

import json
import os
import sys
import textwrap
import threading
import time
import types

import pytest
import submitit
from conftest import REPO

from cv_jax.analysis import slurm, sweep
from cv_jax.analysis.sweep_definition import SweepError
from cv_jax.training.results import read_results

SMOKE = f"{REPO}/configs/cifar10.py:smoke"
TINY = {"dataset.max_train_examples": 0, "dataset.max_eval_examples": 0,
        "model_init_examples": 64, "training.batch_size": 16, "training.num_steps": 2,
        "eval.batch_size": 16}


def write_definition(path, common, resources=None):
    """Two learning rates of the smoke recipe, asking for ``resources``."""
    path.write_text(textwrap.dedent(f"""
        from cv_jax.analysis.sweep_definition import Sweep, axis

        def get_sweep(arg=None):
            return Sweep(name="demo", config={SMOKE!r}, common={common!r},
                         points=axis("optimizer.learning_rate", [0.1, 0.2]),
                         resources={resources or {}!r})
    """))
    return str(path)


def test_a_sweep_of_jobs_trains_every_point_and_reports(tmp_path, tiny_folder, cache_dir):
    """submitit's local executor runs each point as a job (a process of its own), as SLURM
    would; the sweep waits for them and writes the report."""
    definition = write_definition(
        tmp_path / "d.py", {"dataset.data_dir": str(tiny_folder), "dataset.cache_dir": cache_dir,
                            **TINY}, resources={"time_min": 20, "gpus_per_job": 0})
    root, lines = str(tmp_path / "runs"), []
    outcome = sweep.run_sweep(definition, root, launcher="slurm", cluster="local",
                              resources={"cpus_per_job": 1}, echo=lines.append)
    assert outcome.unfinished == []
    for lr in ("0.1", "0.2"):
        workdir = f"{root}/demo/learning_rate={lr}"
        assert read_results(workdir)["steps"] == 2
        job = json.load(open(f"{workdir}/slurm_job.json"))
        assert job["folder"] == f"{root}/demo/slurm" and job["cluster"] == "local"
        assert f"submitted job {job['job_id']}: {workdir}" in lines
        log = open(f"{workdir}/log.txt").read()
        assert log.startswith(f"$ {sys.executable} -m cv_jax.main --config={SMOKE} "
                              f"--workdir={workdir} ")
    assert "2 of 2 runs already finished" not in "\n".join(lines)
    assert "- **Runs**: 2 (2 finished) in 2 rows" in open(outcome.report).read()


def test_preemption_stops_the_run_with_sigterm_and_requeues_the_same_run(tmp_path):
    """The hook submitit calls before SLURM stops a job: training gets SIGTERM (on which it
    saves and exits), and the job to requeue is the same command in the same workdir."""
    ready, stopped = tmp_path / "ready", tmp_path / "stopped"
    script = textwrap.dedent(f"""
        import pathlib, signal, sys, time
        def stop(*_):
            pathlib.Path({str(stopped)!r}).write_text("saved")
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        pathlib.Path({str(ready)!r}).touch()
        time.sleep(60)
        sys.exit(3)
    """)
    job = slurm.RunJob([sys.executable, "-c", script], str(tmp_path / "run"))
    codes = []
    thread = threading.Thread(target=lambda: codes.append(job()))
    thread.start()
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    requeued = job.checkpoint()
    thread.join(10)
    assert stopped.read_text() == "saved" and codes == [0]
    assert isinstance(requeued, submitit.helpers.DelayedSubmission)
    assert requeued.function == slurm.RunJob(job.command, job.workdir)
    assert open(tmp_path / "run" / "log.txt").read().startswith(f"$ {sys.executable} -c ")


def test_the_resources_become_submitits_slurm_parameters(tmp_path, monkeypatch):
    resources = slurm.Resources(partition="gpu", gpus_per_job=2, cpus_per_job=16, mem_gb=64,
                                time_min=90, extra={"account": "lab", "qos": "high"})
    parameters = resources.executor_parameters("lr=0.1")
    assert parameters == {
        "name": "lr=0.1", "timeout_min": 90, "nodes": 1, "tasks_per_node": 1,
        "cpus_per_task": 16, "slurm_signal_delay_s": 120, "gpus_per_node": 2, "mem_gb": 64,
        "slurm_partition": "gpu", "slurm_account": "lab",
        "slurm_qos": "high"}
    # submitit rejects names it does not know; its batch script shows what SLURM is asked for
    # (a stand-in srun on the PATH: submitit looks for one before it writes a script)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}/bin:{os.environ['PATH']}")
    executor = submitit.AutoExecutor(folder=str(tmp_path), cluster="slurm")
    executor.update_parameters(**parameters)
    script = executor._executor._make_submission_file_text("python job.py", "uid")
    for line in ("--partition=gpu", "--gpus-per-node=2", "--cpus-per-task=16", "--mem=64GB",
                 "--time=90", "--signal=USR2@120", "--account=lab", "--qos=high",
                 "--job-name=lr=0.1"):
        assert f"#SBATCH {line}\n" in script


class FakeSubmitit:
    """submitit's SlurmJob (a job in the state ``state``) and an executor recording submits."""

    def __init__(self, state):
        self.submitted = []
        outer = self

        class Job:
            def __init__(self, folder, job_id):
                self.folder, self.job_id, self.state = folder, job_id, state

            def result(self):
                return 0

        class Executor:
            def __init__(self, folder, cluster, slurm_max_num_timeout):
                pass

            def update_parameters(self, **_):
                pass

            def submit(self, function):
                outer.submitted.append(function)
                return Job("f", "999")

        self.SlurmJob, self.AutoExecutor = Job, Executor


@pytest.mark.parametrize("state, resubmitted", [("RUNNING", False), ("PENDING", False),
                                                ("FAILED", True), ("COMPLETED", True)])
def test_a_job_still_queued_is_waited_for_not_submitted_again(tmp_path, state, resubmitted):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "slurm_job.json").write_text(json.dumps(
        {"job_id": "123", "folder": str(tmp_path / "slurm"), "cluster": "slurm"}))
    lines = []
    runner = slurm.SlurmRunner(str(tmp_path / "slurm"), slurm.Resources(), echo=lines.append)
    runner.submitit = fake = FakeSubmitit(state)
    run = types.SimpleNamespace(workdir=str(workdir), command=lambda: ["python", "-m", "x"])
    assert runner(run) == 0
    if resubmitted:
        assert fake.submitted == [slurm.RunJob(["python", "-m", "x"], str(workdir))]
        assert lines == [f"submitted job 999: {workdir}"]
        assert json.loads((workdir / "slurm_job.json").read_text())["job_id"] == "999"
    else:
        assert fake.submitted == [] and lines == [f"waiting for job 123, submitted earlier: "
                                                  f"{workdir}"]


def test_a_job_that_fails_outside_training_is_logged_in_the_run(tmp_path):
    runner = slurm.SlurmRunner(str(tmp_path / "slurm"), slurm.Resources(), echo=lambda _: None)
    fake = FakeSubmitit("RUNNING")

    class Failed(fake.SlurmJob):
        def result(self):
            raise submitit.core.utils.UncompletedJobError("job 999 was cancelled")

    fake.AutoExecutor.submit = lambda self, function: Failed("f", "999")
    runner.submitit = fake
    run = types.SimpleNamespace(workdir=str(tmp_path / "run"), command=lambda: ["python"])
    assert runner(run) == 1
    assert open(tmp_path / "run" / "log.txt").read() == (
        "SLURM job 999 did not complete: UncompletedJobError: job 999 was cancelled\n"
        f"(its own logs: {tmp_path}/slurm)\n")


def test_an_unknown_resource_is_refused_before_anything_runs(tmp_path):
    definition = write_definition(tmp_path / "d.py", TINY, resources={"gpus": 2})
    with pytest.raises(SweepError, match=r"sweep .*d.py: unknown SLURM resource\(s\) \['gpus'\]; "
                       r"known: \['cpus_per_job', 'extra', 'gpus_per_job', "):
        sweep.run_sweep(definition, str(tmp_path / "runs"), launcher="slurm")
    assert not os.path.exists(tmp_path / "runs")


def test_an_unknown_launcher_and_a_missing_submitit_are_clear_errors(tmp_path, monkeypatch):
    definition = write_definition(tmp_path / "d.py", TINY)
    with pytest.raises(SweepError, match=r"--launcher='pbs' is not one of \['local', 'slurm'\]"):
        sweep.run_sweep(definition, str(tmp_path), launcher="pbs")
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(SweepError, match=r"--launcher=slurm needs submitit: pip install "
                       r"'cv_jax\[slurm\]'"):
        sweep.run_sweep(definition, str(tmp_path), launcher="slurm", echo=lambda _: None)
