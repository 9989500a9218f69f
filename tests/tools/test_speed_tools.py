"""The benchmark and speed-run tools: what they compute, not how fast anything is."""

import importlib.util
import os

import jax
import numpy as np
import pytest
from conftest import convnet_config, load_config

from cv_jax import models
from cv_jax.config import validate
from cv_jax.tools import bench, speedrun
from cv_jax.training import checkpoint, clock, evaluation
from cv_jax.workflows import multirun


def flax_parameter_count(name: str) -> int:
    model = models.create_model(name, num_classes=10)
    shape = (1, *models.default_input_shape(name))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros(shape, np.float32),
                                                  train=False))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("name", ["resnet20", "resnet56", "resnet18_cifar", "resnet50", "lenet5"])
def test_torch_reference_has_the_same_parameter_count(name):
    torch_reference = pytest.importorskip("cv_jax.tools.torch_reference")
    assert torch_reference.parameter_count(
        torch_reference.create_model(name, 10)) == flax_parameter_count(name)


def test_torch_reference_rejects_models_it_lacks():
    torch_reference = pytest.importorskip("cv_jax.tools.torch_reference")
    with pytest.raises(ValueError, match="no PyTorch reference for model 'vgg11'"):
        torch_reference.create_model("vgg11", 10)


def test_benchmark_recipe_is_a_valid_config_without_augmentation():
    config = bench.sgd_config("resnet20", 64, "bfloat16")
    validate(config)
    assert (config.augment.crop_padding, config.augment.flip) == (0, False)
    assert config.optimizer.nesterov and config.training.compute_dtype == "bfloat16"


def test_jax_step_timing_reports_flops_and_parameters():
    result = bench.time_jax_step("lenet5", batch_size=8, dtype="float32", steps=1, warmup=1)
    assert result["parameters"] == flax_parameter_count("lenet5")
    assert result["seconds"] > 0 and result["flops"] > 0
    # the two convolutions alone, forward only, for 8 images (the step runs on 8 devices)
    assert result["flops"] > 8 * 2 * (28 * 28 * 25 * 3 * 6 + 10 * 10 * 150 * 16)


def test_rows_compute_rates_mfu_and_ratio_text():
    result = {"seconds": 0.5, "flops": 2e12, "peak_bytes": 3 * 2**20, "parameters": 7,
              "device": "1 x H100", "version": "0"}
    row = bench.row("cv_jax", "m", 256, (32, 32, 3), "bfloat16", result, peak=8e12)
    assert row["images_per_sec"] == 512 and row["step_ms"] == 500
    assert row["mfu"] == pytest.approx(0.5) and row["peak_mib"] == 3
    row["ratio"] = 1.25
    table = bench.format_table([row])
    assert "| 512 | 500.0 | 2000.0 | 50.0% | 3 | 1.25 |" in table


def test_bench_times_each_side_in_a_process_of_its_own():
    has_torch = importlib.util.find_spec("torch") is not None
    rows = bench.compare(["lenet5"], batch_size=8, dtype="float32", steps=2, warmup=1,
                         torch=has_torch)
    assert [r["framework"] for r in rows] == ["cv_jax"] + ["pytorch"] * has_torch
    assert all(r["images_per_sec"] > 0 and r["parameters"] == 62006 for r in rows)
    if has_torch:
        assert rows[0]["ratio"] == pytest.approx(
            rows[0]["images_per_sec"] / rows[1]["images_per_sec"])
    assert bench.worker_env("jax")["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert (bench.worker_env("torch").get("XLA_PYTHON_CLIENT_PREALLOCATE")
            == os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"))


def test_peak_flops_known_gpus_and_override():
    assert bench.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16", 0) == 989e12
    assert bench.peak_flops("cpu", "float32", 0) is None
    assert bench.peak_flops("cpu", "float32", 1.5) == 1.5e12


def test_speedrun_evaluates_once_and_summarizes():
    config = load_config("smoke")
    seeded = speedrun.seed_config(config, 7)
    assert (seeded.seed, seeded.data_seed) == (7, -1)
    assert seeded.training.eval_every_epochs == config.training.num_epochs
    results = [{"test_accuracy": a, "timed_s": t}
               for a, t in [(0.95, 3.0), (0.93, 4.0), (0.94, 5.0)]]
    stats = speedrun.summary(results, target=0.94)
    assert stats["accuracy"]["mean"] == pytest.approx(0.94)
    assert stats["accuracy"]["std"] == pytest.approx(0.01)
    assert stats["accuracy"]["min"] == 0.93
    assert stats["reached_target"] == 2
    assert stats["timed_s"]["mean"] == pytest.approx(4.0)
    resumed = {"test_accuracy": 0.9, "timed_s": 1.0, "timed_from_step": 5}
    with pytest.raises(ValueError, match="resumed at step 5, so its timed_s covers only"):
        speedrun.summary([*results, resumed], target=0.94)


def test_speedrun_clock_and_warmup(tiny_folder, cache_dir, tmp_path, monkeypatch):
    """On a fake clock that only the patched calls advance, a seed's timed seconds are its
    data-dependent init (10 s) and final evaluation (1000 s), not its checkpoint save (100 s);
    an untimed warm-up run trains first and is not reported; max_seconds stops after a seed."""
    now = [0.0]
    monkeypatch.setattr(clock, "now", lambda: now[0])
    calls = []

    def advancing(name, seconds, original):
        def call(*args, **kwargs):
            calls.append(name)
            now[0] += seconds
            return original(*args, **kwargs)
        return call

    monkeypatch.setattr(models, "data_dependent_init",
                        advancing("init", 10, models.data_dependent_init))
    monkeypatch.setattr(evaluation, "evaluate_weights",
                        advancing("evaluate", 1000, evaluation.evaluate_weights))
    monkeypatch.setattr(checkpoint.Checkpoints, "save",
                        advancing("save", 100, checkpoint.Checkpoints.save))
    workdirs = []
    run = multirun.run
    monkeypatch.setattr(multirun, "run", lambda c, w: workdirs.append(w) or run(c, w))

    report = speedrun.speedrun(convnet_config(tiny_folder, cache_dir), str(tmp_path), seeds=2,
                               max_seconds=1e-6)
    assert [os.path.basename(w) for w in workdirs] == ["warmup", "seed_0"]
    assert calls == ["init", "evaluate", "save"] * 2
    assert not (tmp_path / "warmup").exists()
    assert report["seeds"] == [0] and len(report["runs"]) == 1 and report["warmup"]
    assert report["runs"][0]["timed_s"] == 1010 and report["timed_s"]["mean"] == 1010
    assert "| 0 |" in (tmp_path / "speedrun.md").read_text()
