"""The device mesh and the two shardings the loop needs: replicated and batch-split."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(num_devices: int = 0) -> Mesh:
    """A 1-D mesh over the first ``num_devices`` devices (0: all of them) on a 'data' axis."""
    devices = jax.devices()
    if num_devices > len(devices):
        raise ValueError(
            f"config.training.num_devices={num_devices} but only {len(devices)} "
            f"{devices[0].platform} device(s) exist; use 0 for all of them"
        )
    return Mesh(np.array(devices[: num_devices or len(devices)]), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, optimizer state, the dataset)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_split(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis is split across the 'data' axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))
