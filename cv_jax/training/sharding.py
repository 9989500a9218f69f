"""The device mesh, the two shardings the loop needs (replicated and batch-split), and what
the devices are."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(num_devices: int = 0) -> Mesh:
    """A 1-D mesh over the first ``num_devices`` devices (0: all of them) on a 'data' axis.

    In a multi-process job the mesh spans every process's devices, process by process, so
    each process drives a contiguous slice of every batch.
    """
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    if num_devices > len(devices):
        raise ValueError(
            f"config.training.num_devices={num_devices} but only {len(devices)} "
            f"{devices[0].platform} device(s) exist; use 0 for all of them"
        )
    if jax.process_count() > 1 and num_devices not in (0, len(devices)):
        raise ValueError(
            f"config.training.num_devices={num_devices} would leave processes without devices "
            f"in this {jax.process_count()}-process job; use 0 for all {len(devices)} devices"
        )
    return Mesh(np.array(devices[: num_devices or len(devices)]), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, optimizer state, the dataset)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_split(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis is split across the 'data' axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def describe_devices(mesh: jax.sharding.Mesh) -> str:
    """E.g. '8 x cpu (cpu)', or '16 x H100 (gpu) in 2 processes' for a multi-process job."""
    devices = mesh.devices.flatten()
    processes = len({d.process_index for d in devices})
    across = f" in {processes} processes" if processes > 1 else ""
    return f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform}){across}"
