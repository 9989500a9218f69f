"""Joining a multi-process JAX job (one process per host) before anything starts the backend.

Where the job is described, first match wins:
  1. the --coordinator_address / --num_processes / --process_id flags,
  2. the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID environment variables,
  3. a managed cluster JAX configures itself from (a SLURM step or Open MPI job with several
     tasks, a Cloud TPU VM): ``jax.distributed.initialize()`` with no arguments.
Otherwise, and always with ``--num_processes=1``, the process runs alone, as on one machine.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os
from collections.abc import Mapping

import jax
from absl import flags

ENV = {"coordinator_address": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
       "process_id": "JAX_PROCESS_ID"}


@dataclasses.dataclass(frozen=True)
class Job:
    """How this process joins a job; all None: run alone unless a managed cluster is found."""

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    def given(self) -> dict[str, str | int]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The three flags of a multi-process job (each defaults to its environment variable)."""
    flags.DEFINE_string("coordinator_address", None,
                        f"host:port of process 0's coordinator (or ${ENV['coordinator_address']}).",
                        flag_values=flag_values)
    flags.DEFINE_integer("num_processes", None,
                         f"Processes in the job, one per host (or ${ENV['num_processes']}); "
                         "1 runs alone even inside SLURM or on a TPU VM.",
                         lower_bound=1, flag_values=flag_values)
    flags.DEFINE_integer("process_id", None, f"This process, 0..num_processes-1 "
                         f"(or ${ENV['process_id']}).", lower_bound=0, flag_values=flag_values)


def job_from(flag_values: flags.FlagValues, environ: Mapping[str, str] = os.environ) -> Job:
    """The job the flags describe, each unset flag taken from its environment variable."""
    values = {}
    for name, var in ENV.items():
        value = flag_values[name].value
        if value is None and environ.get(var):
            value = environ[var]
            if name != "coordinator_address":
                try:
                    value = int(value)
                except ValueError:
                    raise ValueError(f"${var}={value!r} is not an integer; set it to one, or "
                                     f"pass --{name}") from None
        values[name] = value
    return Job(**values)


def managed_cluster(environ: Mapping[str, str] = os.environ) -> str | None:
    """The cluster JAX can describe the job from: 'slurm' (an srun step of several tasks),
    'openmpi' (several ranks) or 'tpu' (a Cloud TPU VM: JAX reads its workers from the VM's
    metadata, or from $TPU_WORKER_HOSTNAMES on GKE); None on a plain machine."""
    if int(environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_NODELIST" in environ:
        return "slurm"
    if int(environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return "openmpi"
    if "TPU_WORKER_HOSTNAMES" in environ or _has_tpu():
        return "tpu"
    return None


def _has_tpu() -> bool:
    """libtpu is installed and a TPU chip is attached (v2-v4: /dev/accel*, v5+: /dev/vfio/N)."""
    chips = glob.glob("/dev/accel[0-9]*") + glob.glob("/dev/vfio/[0-9]*")
    return bool(chips) and importlib.util.find_spec("libtpu") is not None


def initialize_arguments(job: Job, environ: Mapping[str, str] = os.environ) -> dict | None:
    """The arguments of ``jax.distributed.initialize`` for ``job``, or None to run alone."""
    if job.num_processes == 1:
        if job.process_id:
            raise ValueError(f"process id {job.process_id} (--process_id or "
                             f"${ENV['process_id']}) needs --num_processes > 1")
        return None
    given = job.given()
    cluster = managed_cluster(environ)
    if not given:
        return {} if cluster else None
    missing = [name for name in ENV if name not in given]
    if missing and not cluster:
        raise ValueError(
            f"a multi-process job needs all of --coordinator_address, --num_processes and "
            f"--process_id (or ${', $'.join(ENV.values())}); got {given}, missing "
            f"{', '.join('--' + name for name in missing)}. Pass them on every process, or none "
            "to run single-process.")
    if "process_id" in given and "num_processes" in given and (
            job.process_id >= job.num_processes):
        raise ValueError(f"--process_id={job.process_id} must be below "
                         f"--num_processes={job.num_processes}")
    return given


def initialize(job: Job) -> None:
    """Joins ``job`` (or the detected cluster) with ``jax.distributed.initialize``; does nothing
    for a single-process run. Call it before anything touches a JAX device."""
    arguments = initialize_arguments(job)
    if arguments is not None:
        jax.distributed.initialize(**arguments)
