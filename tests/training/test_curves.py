"""Reading metrics.jsonl back and plotting curves; the data-order seed."""

import json

import jax
import numpy as np
import pytest
from conftest import load_config
from PIL import Image

from cv_jax.training import curves, setup


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))


def test_read_metrics_keeps_the_last_record_per_split_and_step(tmp_path):
    rows = [{"step": 1, "split": "train", "loss": 2.0}, {"step": 2, "split": "train", "loss": 1.5},
            {"step": 2, "split": "test", "accuracy": 0.3},
            # resumed from step 1: step 2 logged again
            {"step": 2, "split": "train", "loss": 1.4}, {"step": 3, "split": "train", "loss": 1.0}]
    write_lines(tmp_path / "metrics.jsonl", [json.dumps(r) for r in rows] + ['{"step": 4, "sp'])
    records = curves.read_metrics(str(tmp_path))
    assert [(r["split"], r["step"]) for r in records] == [
        ("train", 1), ("train", 2), ("test", 2), ("train", 3)]
    assert records[1]["loss"] == 1.4
    assert [r["step"] for r in curves.read_metrics(str(tmp_path), up_to_step=2)] == [1, 2, 2]
    steps, values = curves.series(records, "train", "loss")
    np.testing.assert_array_equal(steps, [1, 2, 3])
    np.testing.assert_array_equal(values, [2.0, 1.4, 1.0])


def test_read_metrics_names_a_corrupt_line(tmp_path):
    write_lines(tmp_path / "metrics.jsonl", ["{broken", json.dumps({"step": 1, "split": "x"})])
    with pytest.raises(ValueError, match=r"metrics.jsonl line 1 is not JSON"):
        curves.read_metrics(str(tmp_path))
    assert curves.read_metrics(str(tmp_path / "missing")) == []


def test_plot_curves_overlays_runs(tmp_path):
    runs = {name: [{"step": s, "split": "train", "epoch": s / 10, "loss": 1 / s + k,
                    "accuracy": 0.1 * s, "learning_rate": 0.1}
                   for s in range(1, 21)] + [{"step": 20, "split": "test", "accuracy": 0.5 + k}]
            for k, name in enumerate(["a", "b"])}
    path = curves.plot_curves(runs, str(tmp_path / "plots" / "curves.png"))
    width, height = Image.open(path).size
    assert (width, height) == (int(4.2 * 3 * 110), int(3.2 * 2 * 110))


def test_data_seed_fixes_the_example_order_independently_of_seed():
    config = load_config("smoke")
    keys = {}
    for seed, data_seed in [(0, -1), (1, -1), (1, 0), (5, 0)]:
        config.seed, config.data_seed = seed, data_seed
        keys[seed, data_seed] = np.asarray(jax.random.key_data(setup.shuffle_key(config)))
    np.testing.assert_array_equal(keys[0, -1], keys[1, 0])
    np.testing.assert_array_equal(keys[1, 0], keys[5, 0])
    assert not np.array_equal(keys[0, -1], keys[1, -1])
