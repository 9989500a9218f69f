"""The learning-rate range test on the tiny generated ImageFolder."""

import json
import math

import numpy as np
import pytest
from conftest import tiny_config

from cv_jax.config import ConfigError, base_config, model_section
from cv_jax.workflows import lr_find


def test_exponential_lrs_and_smoothing():
    schedule = lr_find.exponential_lrs(1e-4, 1.0, 5)
    np.testing.assert_allclose([float(schedule(s)) for s in range(5)],
                               [1e-4, 1e-3, 1e-2, 1e-1, 1.0], rtol=1e-5)
    # Bias-corrected EMA: a constant series stays constant from the first value on.
    np.testing.assert_allclose(lr_find.smooth([2.0, 2.0, 2.0]), [2.0, 2.0, 2.0])
    np.testing.assert_allclose(lr_find.smooth([1.0, 3.0], beta=0.5), [1.0, (0.25 + 1.5) / 0.75])


def test_suggestion_is_a_tenth_of_the_minimum_and_steepest_is_before_it():
    lrs = np.logspace(-5, 0, 11)
    loss = np.array([2.3, 2.3, 2.29, 2.2, 1.6, 1.0, 0.9, 0.85, 0.8, 1.5, 4.0])
    got = lr_find.suggest(lrs, loss)
    assert got["lr_at_min_loss"] == pytest.approx(lrs[8])
    assert got["suggested_lr"] == pytest.approx(lrs[8] / 10)
    assert got["lr_steep"] == pytest.approx(lrs[4])  # the largest drop per decade
    # A minimum at the first LR cannot suggest below the tested range.
    assert lr_find.suggest(lrs, loss[::-1])["suggested_lr"] == pytest.approx(lrs[0])


def test_range_test_on_tiny_data_diverges_and_writes_plot_and_json(tiny_folder, cache_dir,
                                                                     tmp_path):
    config = tiny_config(tiny_folder, cache_dir, num_devices=1)
    config.model = model_section("convnet", layers="conv:8,pool:max:2", fc="")
    config.optimizer.update(freeze="", lr_multipliers="")
    result = lr_find.lr_find(config, num_steps=40, min_lr=1e-3, max_lr=1e3)
    lrs, smoothed = np.array(result["lrs"]), np.array(result["smoothed_losses"])
    assert result["steps_run"] == len(lrs) < 40
    assert np.all(np.diff(lrs) > 0) and lrs[0] == pytest.approx(1e-3)
    assert lrs[1] / lrs[0] == pytest.approx(1e6 ** (1 / 39), rel=1e-5)
    # The loss first falls, then blows up: the test stops at the first step past 4x the minimum.
    assert "exceeded 4x its minimum" in result["stopped_early"]
    assert smoothed.min() < smoothed[0]
    assert smoothed[-1] > 4 * smoothed.min() and np.all(smoothed[:-1] <= 4 * smoothed.min())
    assert result["losses"][-1] > result["losses"][np.argmin(smoothed)]
    assert math.isfinite(result["lr_steep"]) and result["lr_steep"] <= result["lr_at_min_loss"]
    assert 1e-3 <= result["suggested_lr"] <= 1e3
    assert result["suggested_lr"] == pytest.approx(max(lrs[np.argmin(smoothed)] / 10, 1e-3))
    json_path = lr_find.save(result, str(tmp_path / "plots" / "lr_find.png"))
    assert (tmp_path / "plots" / "lr_find.png").stat().st_size > 1000
    saved = json.load(open(json_path))
    assert json_path.endswith("plots/lr_find.json")
    assert saved["suggested_lr"] == result["suggested_lr"] and saved["lrs"] == result["lrs"]


def test_bad_range_is_refused_before_loading_data():
    config = base_config()
    with pytest.raises(ConfigError, match="min_lr < max_lr"):
        lr_find.lr_find(config, num_steps=10, min_lr=1.0, max_lr=0.1)
