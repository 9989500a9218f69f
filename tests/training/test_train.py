"""End-to-end behaviour of train_and_evaluate on a tiny generated ImageFolder."""

import json
import os

import jax
import numpy as np
import pytest
from conftest import convnet_config, tiny_config

from cv_jax.config import ConfigError, model_section
from cv_jax.data.sources import load_split
from cv_jax.training import checkpoint, divergence, evaluation, losses, runs, sharding, steps, train
from cv_jax.training.plan import Plan


def params_of(workdir):
    return jax.device_get(runs.load_run(workdir).state.params)


def assert_trees_equal(a, b, **tolerance):
    check = np.testing.assert_allclose if tolerance else np.testing.assert_array_equal
    jax.tree.map(lambda x, y: check(x, y, **tolerance), a, b)


@pytest.fixture(scope="module")
def straight_run(trained_run):
    """12 steps (2 epochs of 96 images at batch 16) in one go, on 8 devices."""
    return trained_run


def test_smoke_run_writes_results_checkpoints_and_metrics(straight_run):
    workdir, results = straight_run
    assert results["steps"] == 12 and results["finished"]
    assert results["test_examples"] == 36
    assert results["test_accuracy"] == results["test_correct"] / 36
    with open(os.path.join(workdir, "results.json")) as f:
        assert json.load(f) == results
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["12", "6"]
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    assert train_steps == list(range(1, 13))
    assert {"loss", "accuracy", "learning_rate", "images_per_sec"} <= set(records[0])
    assert [r["step"] for r in records if r["split"] == "test"] == [6, 12]
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    saved = json.load(open(os.path.join(workdir, "config.json")))
    assert saved["model"]["name"] == "airbench" and saved["training"]["batch_size"] == 16


def test_resume_replays_exactly(straight_run, tiny_folder, cache_dir, tmp_path):
    workdir, results = straight_run
    config = tiny_config(tiny_folder, cache_dir)
    first = train.train_and_evaluate(config, str(tmp_path), max_steps_this_run=5)
    assert first["steps"] == 5 and not first["finished"]
    resumed = train.train_and_evaluate(config, str(tmp_path))
    assert_trees_equal(params_of(str(tmp_path)), params_of(workdir))
    for key in ("test_accuracy", "test_loss", "test_correct", "steps"):
        assert resumed[key] == results[key], key


def test_finished_run_reports_without_training(straight_run, tiny_folder, cache_dir):
    workdir, results = straight_run
    lines = len(open(os.path.join(workdir, "metrics.jsonl")).readlines())
    again = train.train_and_evaluate(tiny_config(tiny_folder, cache_dir), workdir)
    assert again == results
    assert len(open(os.path.join(workdir, "metrics.jsonl")).readlines()) == lines


def test_one_device_equals_eight_devices(straight_run, tiny_folder, cache_dir, tmp_path):
    """Same global batch split over 1 vs 8 devices: equal up to float reduction order."""
    assert jax.device_count() == 8
    workdir, _ = straight_run
    config = tiny_config(tiny_folder, cache_dir, num_devices=1)
    train.train_and_evaluate(config, str(tmp_path))
    assert_trees_equal(params_of(str(tmp_path)), params_of(workdir), rtol=2e-4, atol=2e-5)


def test_evaluation_counts_every_example_once(straight_run, tiny_folder, cache_dir):
    workdir, _ = straight_run
    run = runs.load_run(workdir)
    test = load_split(str(tiny_folder), "test", cache_dir=cache_dir)
    settings = steps.EvalSettings.from_config(run.config)
    evaluator = evaluation.Evaluator(test, 16, settings, sharding.make_mesh())  # 36 = 2*16 + 4
    out = evaluator.predictions(run.state)
    logits = steps.predict_logits(run.state, test.images, settings)
    np.testing.assert_array_equal(out["prediction"], np.argmax(logits, -1))
    metrics = evaluator(run.state)
    assert metrics["examples"] == 36
    correct = int(np.sum(np.asarray(np.argmax(logits, -1)) == test.labels))
    assert metrics["correct"] == correct and metrics["accuracy"] == correct / 36


def test_workdir_of_another_model_is_refused(straight_run, tiny_folder, cache_dir):
    workdir, _ = straight_run
    config = tiny_config(tiny_folder, cache_dir)
    config.model.widths = (8, 16, 24)
    config.training.num_epochs = 3.0  # not finished, so it tries to resume
    with pytest.raises(checkpoint.CheckpointMismatch,
                       match=r"parameter group3/conv1/kernel with shape \[3, 3, 16, 16\] "
                             r"\(this config: \[3, 3, 16, 24\]\)"):
        train.train_and_evaluate(config, workdir)


def test_diverging_loss_stops_with_a_clear_error(tiny_folder, cache_dir, tmp_path):
    config = tiny_config(tiny_folder, cache_dir)
    config.optimizer.update(learning_rate=1e30, lr_multipliers="")
    with pytest.raises(divergence.TrainingDiverged, match="at step .*Last good checkpoint: none"):
        train.train_and_evaluate(config, str(tmp_path))
    assert not os.listdir(os.path.join(tmp_path, "checkpoints"))


def test_batch_not_divisible_by_devices(tiny_folder, cache_dir, tmp_path):
    config = tiny_config(tiny_folder, cache_dir, batch_size=12)
    with pytest.raises(ConfigError,
                       match=r"training.batch_size=12 does not divide across the 8 devices"):
        train.train_and_evaluate(config, str(tmp_path))


def test_durations_in_steps_or_epochs(tiny_folder, cache_dir):
    config = tiny_config(tiny_folder, cache_dir)
    assert Plan.from_config(config, 96).total_steps == 12
    config.training.num_steps = 7
    assert Plan.from_config(config, 96).total_steps == 7


def test_evaluate_cli_matches_the_run_and_reports_per_class(straight_run, tiny_folder, tmp_path):
    from conftest import CLASSES, write_image_folder

    from cv_jax.data.dataset import DataError
    from cv_jax.tools.evaluate import evaluate_run

    workdir, results = straight_run
    report = evaluate_run(workdir, str(tiny_folder), "test")
    assert report["accuracy"] == results["test_accuracy"]
    assert report["examples"] == 36 and report["checkpoint_step"] == 12
    assert sorted(report["per_class_accuracy"]) == sorted(CLASSES)
    per_class = [report["per_class_accuracy"][name] * 9 for name in CLASSES]
    assert sum(per_class) == pytest.approx(report["correct"])
    other = write_image_folder(tmp_path / "other", {"test": 2})
    (other / "test" / "cat").rename(other / "test" / "lion")
    with pytest.raises(DataError, match="trained on"):
        evaluate_run(workdir, str(other), "test")


def test_evaluate_cli_overrides_the_runs_tta(straight_run, tiny_folder, cache_dir):
    import dataclasses

    from cv_jax.tools.evaluate import evaluate_run

    workdir, _ = straight_run
    run = runs.load_run(workdir)
    assert run.config.eval.tta_flip and run.config.eval.tta_translate == 0
    test = load_split(str(tiny_folder), "test", cache_dir=cache_dir)
    settings = steps.EvalSettings.from_config(run.config)
    losses_seen = {evaluate_run(workdir, str(tiny_folder), "test")["loss"]}
    for flip, translate in ((False, 0), (False, 1), (True, 2)):
        report = evaluate_run(workdir, str(tiny_folder), "test", tta_flip=flip,
                              tta_translate=translate)
        losses_seen.add(report["loss"])
        tta = dataclasses.replace(settings, tta_flip=flip, tta_translate=translate)
        logits = steps.predict_logits(run.state, test.images, tta)
        assert report["correct"] == int(np.sum(np.argmax(logits, -1) == test.labels))
        assert report["loss"] == pytest.approx(float(losses.cross_entropy(
            logits, test.labels).mean()), rel=1e-5)
    assert len(losses_seen) == 4  # every TTA setting took effect


def test_dropout_model_without_batchnorm_is_the_same_on_1_and_8_devices(
        tiny_folder, cache_dir, tmp_path):
    """Dropout masks are keyed by step and do not depend on how the batch is sharded; the EMA
    weights are evaluated and checkpointed beside the raw ones."""
    results = {}
    for devices in (1, 8):
        config = tiny_config(tiny_folder, cache_dir, num_devices=devices, num_steps=3,
                             eval_every_epochs=10.0, ema_decay=0.5, best_by_ema=True)
        config.model = model_section(
            "convnet", layers="conv:8,pool:max:2,dropout:0.3,conv:8", fc="16", fc_dropout=0.5,
            batch_norm=False)
        config.optimizer.update(freeze="", lr_multipliers="")
        workdir = str(tmp_path / str(devices))
        results[devices] = train.train_and_evaluate(config, workdir)
        assert results[devices]["steps"] == 3
        state = runs.load_run(workdir).state
        assert not jax.tree.leaves(state.batch_stats)
        assert 0 <= results[devices]["test_ema_accuracy"] <= 1
        assert not np.allclose(state.ema["params"]["head"]["kernel"],
                               state.params["head"]["kernel"])
    assert_trees_equal(params_of(str(tmp_path / "1")), params_of(str(tmp_path / "8")),
                       rtol=2e-4, atol=2e-5)
    assert results[1]["test_correct"] == results[8]["test_correct"]
    assert results[1]["test_ema_correct"] == results[8]["test_ema_correct"]


def test_bfloat16_training_learns_and_keeps_float32_weights(tiny_folder, cache_dir, tmp_path):
    """The plain layers in bfloat16 (a convnet with BatchNorm, 5 epochs): the training loss
    stays finite and falls, the test accuracy is well above chance (0.25), and the weights,
    BatchNorm statistics and optimizer state stay float32 while the model computes in
    bfloat16."""
    config = convnet_config(tiny_folder, cache_dir, compute_dtype="bfloat16", num_steps=30,
                            log_every_steps=6, eval_every_epochs=5.0)
    config.model = model_section("convnet", layers="conv:8,pool:max:2", fc="",
                                 batch_norm=True)
    results = train.train_and_evaluate(config, str(tmp_path))
    records = [json.loads(line) for line in open(os.path.join(tmp_path, "metrics.jsonl"))]
    losses = [r["loss"] for r in records if r["split"] == "train"]
    assert len(losses) == 5 and all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses  # measured: 1.63 -> 0.80
    assert results["test_accuracy"] >= 0.6  # measured: 0.83
    run = runs.load_run(str(tmp_path))
    floats = [x for x in jax.tree.leaves((run.state.params, run.state.batch_stats,
                                          run.state.opt_state))
              if jax.numpy.issubdtype(x.dtype, jax.numpy.floating)]
    assert floats and {x.dtype for x in floats} == {np.dtype("float32")}
    images = np.random.default_rng(0).normal(size=(4, 16, 16, 3)).astype(np.float32)
    logits = np.asarray(run.state.apply_fn(
        {"params": run.state.params, "batch_stats": run.state.batch_stats}, images,
        train=False))
    np.testing.assert_array_equal(logits.astype(jax.numpy.bfloat16).astype(np.float32),
                                  logits)  # computed in bfloat16, returned as float32
