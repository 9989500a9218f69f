"""Same config and seed, same parameters: bit for bit on the same CPU devices, and to float32
reduction order across 1, 2 and 8 devices (the tiny smoke run: 12 steps, 2 evaluations)."""

import jax
import numpy as np
import pytest
from conftest import tiny_config

from cv_jax.training import runs, train


def params_of(workdir) -> dict:
    return jax.device_get(runs.load_run(str(workdir)).state.params)


@pytest.mark.reliability
def test_same_config_and_seed_give_identical_parameters(trained_run, tiny_folder, cache_dir,
                                                        tmp_path):
    workdir, results = trained_run
    again = train.train_and_evaluate(tiny_config(tiny_folder, cache_dir), str(tmp_path))
    jax.tree.map(np.testing.assert_array_equal, params_of(tmp_path), params_of(workdir))
    assert again["test_loss"] == results["test_loss"]
    assert again["test_correct"] == results["test_correct"]


@pytest.mark.slow
@pytest.mark.reliability
@pytest.mark.parametrize("num_devices", [1, 2])
def test_parameters_agree_across_device_counts(trained_run, tiny_folder, cache_dir, tmp_path,
                                               num_devices):
    """The global batch is the same however it is split; only the order of the cross-device
    sums changes (observed differences: ~1e-6; tolerance rtol 2e-4, atol 2e-5)."""
    workdir, _ = trained_run  # 8 devices
    config = tiny_config(tiny_folder, cache_dir, num_devices=num_devices)
    train.train_and_evaluate(config, str(tmp_path))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
                 params_of(tmp_path), params_of(workdir))
