"""Sweep runs as SLURM jobs, submitted through submitit (``--launcher=slurm``).

Each run of a sweep becomes one job running the same ``python -m cv_jax.main ...`` command the
local launcher runs, its output appended to ``WORKDIR/log.txt``. The sweep command waits for its
jobs, then writes the report, as with local runs.

Preemption and time limits: SLURM warns a job before it stops it (submitit asks for the signal);
the job then sends SIGTERM to training, which stops after the step in progress with a
checkpoint (``cv_jax.training.preemption``), and submitit requeues the job, whose new start
resumes from that checkpoint. A job's id is kept in ``WORKDIR/slurm_job.json``; a second sweep
command finds the job still queued or running there and waits for it instead of submitting the
run again.

submitit (``pip install 'cv_jax[slurm]'``) is imported only when a sweep is launched this way.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from cv_jax.analysis.sweep_definition import SweepError

JOB_FILE = "slurm_job.json"
# SLURM states in which a job may still run (squeue/sacct names, as submitit reports them).
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
                 "COMPLETING", "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT"}
# How long training may take to stop and save once asked to (SLURM's warning comes 120 s
# before the end, see Resources.signal_delay_s).
STOP_GRACE_S = 100


@dataclasses.dataclass(frozen=True)
class Resources:
    """What each job of a sweep asks SLURM for. A sweep definition's ``resources`` dict and
    the ``--slurm_*`` flags set these fields; ``extra`` passes any other submitit ``slurm_*``
    parameter (``{'account': 'x', 'qos': 'y'}``)."""

    partition: str = ""
    gpus_per_job: int = 1
    cpus_per_job: int = 8
    mem_gb: int = 0  # 0 = the partition's default
    time_min: int = 240
    signal_delay_s: int = 120  # the warning before preemption or the time limit
    max_requeues: int = 3  # requeues after running out of time (preemptions do not count)
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str) -> Resources:
        """The resources ``values`` names; an unknown key is an error naming ``where``."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise SweepError(f"{where}: unknown SLURM resource(s) {unknown}; known: "
                             f"{sorted(fields)} (other sbatch options go in 'extra')")
        return cls(**values)

    def executor_parameters(self, name: str) -> dict[str, Any]:
        """submitit's ``update_parameters`` arguments for these resources."""
        parameters: dict[str, Any] = {
            "name": name, "timeout_min": self.time_min, "nodes": 1, "tasks_per_node": 1,
            "cpus_per_task": self.cpus_per_job, "slurm_signal_delay_s": self.signal_delay_s,
        }
        if self.gpus_per_job:
            parameters["gpus_per_node"] = self.gpus_per_job
        if self.mem_gb:
            parameters["mem_gb"] = self.mem_gb
        if self.partition:
            parameters["slurm_partition"] = self.partition
        parameters.update({f"slurm_{k}": v for k, v in self.extra.items()})
        return parameters


def start_logged(command: Sequence[str], workdir: str,
                 env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """Starts ``command``, its output appended to ``workdir/log.txt`` after a ``$ command``
    line (the local and the SLURM launcher both run a sweep's runs this way)."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "log.txt"), "a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        return subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT,
                                env=dict(env) if env is not None else None)


@dataclasses.dataclass
class RunJob:
    """What a SLURM job executes: one run's command. ``checkpoint`` is submitit's preemption
    hook: it stops training with SIGTERM (training saves a checkpoint and exits) and returns
    the same job to requeue."""

    command: list[str]
    workdir: str

    def __call__(self) -> int:
        self._process = start_logged(self.command, self.workdir)
        return self._process.wait()

    def checkpoint(self) -> Any:
        from submitit.helpers import DelayedSubmission

        process = getattr(self, "_process", None)
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return DelayedSubmission(RunJob(self.command, self.workdir))


def import_submitit() -> Any:
    try:
        import submitit
    except ImportError as e:
        raise SweepError("--launcher=slurm needs submitit: pip install 'cv_jax[slurm]' "
                         f"({e})") from None
    return submitit


class SlurmRunner:
    """A sweep runner (``Run -> exit code``) that runs each run as a job and waits for it.
    ``cluster='local'`` runs the jobs as local processes through submitit's local executor
    (how the tests run it); job logs go to ``folder``."""

    def __init__(self, folder: str, resources: Resources, cluster: str = "slurm",
                 echo=print):
        self.submitit = import_submitit()
        self.folder, self.resources, self.cluster, self.echo = folder, resources, cluster, echo
        self._lock = threading.Lock()

    def _executor(self, name: str) -> Any:
        executor = self.submitit.AutoExecutor(folder=self.folder, cluster=self.cluster,
                                              slurm_max_num_timeout=self.resources.max_requeues)
        # (other clusters than SLURM ignore the slurm_ parameters)
        executor.update_parameters(**self.resources.executor_parameters(name))
        return executor

    def __call__(self, run: Any) -> int:
        job = self._active_job(run.workdir)
        if job is None:
            with self._lock:  # one sbatch at a time
                job = self._executor(os.path.basename(run.workdir)).submit(
                    RunJob(run.command(), run.workdir))
                os.makedirs(run.workdir, exist_ok=True)
                with open(os.path.join(run.workdir, JOB_FILE), "w") as f:
                    json.dump({"job_id": job.job_id, "folder": self.folder,
                               "cluster": self.cluster}, f)
            self.echo(f"submitted job {job.job_id}: {run.workdir}")
        else:
            self.echo(f"waiting for job {job.job_id}, submitted earlier: {run.workdir}")
        try:
            return int(job.result())
        except Exception as e:  # the job failed outside training (node failure, cancelled)
            with open(os.path.join(run.workdir, "log.txt"), "a") as log:
                log.write(f"SLURM job {job.job_id} did not complete: {type(e).__name__}: "
                          f"{e}\n(its own logs: {self.folder})\n")
            return 1

    def _active_job(self, workdir: str) -> Any:
        """The job a previous sweep command submitted for ``workdir`` if it is still queued or
        running on this cluster, else None."""
        path = os.path.join(workdir, JOB_FILE)
        if self.cluster != "slurm" or not os.path.isfile(path):
            return None
        with open(path) as f:
            recorded = json.load(f)
        job = self.submitit.SlurmJob(folder=recorded["folder"], job_id=recorded["job_id"])
        return job if job.state in ACTIVE_STATES else None
