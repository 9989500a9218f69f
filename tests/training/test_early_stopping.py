"""Early stopping: Keras' rule on a metric sequence, config checks, and a real (resumed) run."""

import json
import os

import pytest
from conftest import load_config, tiny_config

from cv_jax.config import ConfigError, validate
from cv_jax.training import checkpoint, curves, train
from cv_jax.training.early_stopping import EarlyStopping, eval_metrics_by_step


def stop_step(values, **settings):
    """The step (evaluations at 1, 2, ...) at which the tracker stops, or None."""
    tracker = EarlyStopping(monitor="m", **settings)
    for step, value in enumerate(values, 1):
        if tracker.update(step, {"m": value}):
            return step, tracker
    return None, tracker


def test_stops_after_patience_evaluations_without_improvement():
    step, tracker = stop_step([0.5, 0.6, 0.6, 0.59, 0.7], mode="max", patience=2)
    assert step == 4 and tracker.best == 0.6 and tracker.best_step == 2
    step, tracker = stop_step([0.5, 0.6, 0.6, 0.7, 0.7, 0.69], mode="max", patience=2)
    assert step == 6 and tracker.best_step == 4  # the wait restarts at each improvement
    assert stop_step([2.0, 1.5, 1.6, 1.4, 1.45], mode="min", patience=2)[0] is None


def test_min_delta_is_the_margin_an_improvement_must_beat():
    # 0.505 is not more than 0.01 above 0.5; 0.52 is.
    step, tracker = stop_step([0.5, 0.505, 0.52, 0.529, 0.525], mode="max", patience=2,
                              min_delta=0.01)
    assert step == 5 and tracker.best == 0.52
    step, tracker = stop_step([1.0, 0.995, 0.99, 0.98], mode="min", patience=3, min_delta=0.01)
    assert step is None and tracker.best == 0.98 and tracker.best_step == 4


def test_evaluations_before_start_step_are_ignored():
    step, tracker = stop_step([0.9, 0.1, 0.2, 0.1, 0.1], mode="max", patience=2, start_step=2)
    assert tracker.best == 0.2 and step == 5


def test_unknown_monitor_lists_the_metrics():
    tracker = EarlyStopping("validation_accuracy", "max", patience=1)
    with pytest.raises(KeyError, match=r"monitor='validation_accuracy'.*\['test_accuracy'"):
        tracker.update(1, {"test_accuracy": 0.5, "test_correct": 3})


@pytest.mark.parametrize("overrides, message", [
    ({"early_stopping.monitor": "test_acc"}, r"early_stopping.monitor='test_acc' is invalid"),
    ({"early_stopping.monitor": "validation_loss"}, r"needs a validation split"),
    ({"early_stopping.monitor": "test_ema_accuracy"}, r"ema_decay > 0"),
    ({"early_stopping.mode": "best"}, r"early_stopping.mode='best' is invalid"),
    ({"early_stopping.patience": -1}, r"early_stopping.patience=-1 is invalid"),
])
def test_bad_settings_name_the_key(overrides, message):
    config = load_config("smoke")
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    with pytest.raises(ConfigError, match=message):
        validate(config)


def test_monitor_picks_the_best_checkpoint_with_its_mode():
    config = load_config("smoke")
    assert checkpoint.selection(config) == ("test_accuracy", "max")
    config.early_stopping.monitor = "test_loss"
    assert checkpoint.selection(config) == ("test_loss", "min")
    config.early_stopping.mode = "max"
    assert checkpoint.selection(config) == ("test_loss", "max")


def test_run_stops_where_the_rule_says_resumes_identically_and_restores_the_best(
        tiny_folder, cache_dir, tmp_path):
    # Monitoring the test loss in 'max' mode: the loss falls, so the run stops early.
    settings = {"monitor": "test_loss", "mode": "max", "patience": 1}
    full_dir, stopped_dir = str(tmp_path / "full"), str(tmp_path / "stopped")
    full = train.train_and_evaluate(tiny_config(tiny_folder, cache_dir, num_epochs=4.0), full_dir)
    evals = eval_metrics_by_step(curves.read_metrics(full_dir))
    assert [step for step, _ in evals] == [6, 12, 18, 24]
    expected_stop = next(step for (_, before), (step, now) in zip(evals, evals[1:], strict=False)
                         if now["test_loss"] <= max(m["test_loss"] for s, m in evals if s < step))
    best_step, best = max(((s, m) for s, m in evals if s <= expected_stop),
                          key=lambda item: item[1]["test_loss"])
    assert full["steps"] == 24 and not full["stopped_early"] and expected_stop < 24

    config = tiny_config(tiny_folder, cache_dir, num_epochs=4.0)
    config.early_stopping.update(settings)
    first = train.train_and_evaluate(config, stopped_dir, max_steps_this_run=7)
    assert first["steps"] == 7 and not first["finished"]
    results = train.train_and_evaluate(config, stopped_dir)
    assert results["steps"] == expected_stop and results["stopped_early"]
    assert results["restored_best"] and results["best_step"] == best_step
    assert results["planned_steps"] == 24 and results["epochs"] == expected_stop / 6
    for key in ("test_accuracy", "test_loss", "test_correct"):
        assert results[key] == best[key], key
    with open(os.path.join(stopped_dir, "results.json")) as f:
        assert json.load(f) == results
    assert train.train_and_evaluate(config, stopped_dir) == results  # finished: just reports
