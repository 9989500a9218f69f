"""A finished run's HParams session in its TensorBoard events: the flattened config and the final
metrics, read back from the event files."""

import glob
import os
import struct

import jax
import pytest
from conftest import convnet_config
from tensorboardX.proto import api_pb2, event_pb2, plugin_hparams_pb2

from cv_jax.training import hparams, train


def events(logdir):
    """Every Event of the TensorBoard event files in ``logdir`` (TFRecord framing: length,
    its CRC, the record, its CRC)."""
    out = []
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        with open(path, "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[pos + 12:pos + 12 + length])
            out.append(event)
            pos += 12 + length + 4
    return out


def hparams_data(logdir):
    """The HParams plugin's summaries in ``logdir``: tag -> HParamsPluginData."""
    found = {}
    for event in events(logdir):
        for value in event.summary.value:
            if value.metadata.plugin_data.plugin_name == "hparams":
                data = plugin_hparams_pb2.HParamsPluginData()
                data.ParseFromString(value.metadata.plugin_data.content)
                found[value.tag] = data
    return found


def scalars(logdir):
    """tag -> [(step, value)] of the scalar summaries in ``logdir``."""
    found = {}
    for event in events(logdir):
        for value in event.summary.value:
            if value.HasField("simple_value"):
                found.setdefault(value.tag, []).append((event.step, value.simple_value))
    return found


@pytest.fixture(scope="module")
def finished(tiny_folder, cache_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("hparams_run"))
    config = convnet_config(tiny_folder, cache_dir)
    config.optimizer.learning_rate = 0.04
    config.schedule.boundaries = (1.0, 1.5)  # unused by its linear schedule
    return workdir, config, train.train_and_evaluate(config, workdir)


def test_a_finished_run_writes_its_config_and_final_metrics_to_the_hparams_plugin(finished):
    workdir, config, results = finished
    logdir = os.path.join(workdir, "tensorboard")
    data = hparams_data(logdir)
    # No experiment summary: TensorBoard builds the experiment from every run's session.
    assert sorted(data) == ["_hparams_/session_end_info", "_hparams_/session_start_info"]
    session = data["_hparams_/session_start_info"].session_start_info.hparams
    assert session["optimizer.learning_rate"].number_value == 0.04
    assert session["training.batch_size"].number_value == 16
    assert session["model.name"].string_value == "convnet"
    assert session["model.layers"].string_value == "conv:8,pool:max:2"
    assert session["augment.flip"].bool_value is False
    assert session["dataset.mean"].string_value == "(0.4914, 0.4822, 0.4465)"
    assert session["schedule.boundaries"].string_value == "(1.0, 1.5)"
    assert session["training.profile_steps"].string_value == "()"
    assert sorted(session) == sorted(hparams.flat_config(config))
    assert (data["_hparams_/session_end_info"].session_end_info.status
            == api_pb2.Status.Value("STATUS_SUCCESS"))
    values = scalars(logdir)
    metric_tags = sorted(tag for tag in values if tag.startswith("hparams/"))
    assert metric_tags == sorted(f"hparams/{k}" for k in (
        "test_accuracy", "test_balanced_accuracy", "test_loss", "train_time_s",
        "compile_time_s", "images_per_sec", "epochs", "steps", "parameters"))
    for tag in metric_tags:
        [(step, value)] = values[tag]
        assert step == 12
        assert value == pytest.approx(results[tag.removeprefix("hparams/")], rel=1e-6), tag
    assert values["hparams/test_accuracy"] == [(12, pytest.approx(27 / 36))]
    assert values["test/accuracy"][-1] == (12, pytest.approx(27 / 36))  # beside the curves


def test_an_unfinished_run_writes_no_hparams_until_it_finishes(tiny_folder, cache_dir, tmp_path):
    config = convnet_config(tiny_folder, cache_dir)
    logdir = str(tmp_path / "tensorboard")
    assert not train.train_and_evaluate(config, str(tmp_path), max_steps_this_run=5)["finished"]
    assert hparams_data(logdir) == {} and scalars(logdir)["train/loss"]
    results = train.train_and_evaluate(config, str(tmp_path))
    assert results["finished"]
    session = hparams_data(logdir)["_hparams_/session_start_info"].session_start_info
    assert session.hparams["training.num_epochs"].number_value == 2.0
    assert scalars(logdir)["hparams/steps"] == [(12, 12.0)]


def test_flat_config_keeps_scalars_writes_tuples_as_strings_and_cuts_long_strings():
    config = {"seed": 3, "a": {"b": True, "c": 0.5, "d": (1, 2), "e": [], "f": None,
                               "g": {"h": "x" * 200, "i": "short"}}}
    assert hparams.flat_config(config) == {
        "seed": 3, "a.b": True, "a.c": 0.5, "a.d": "(1, 2)", "a.e": "()",
        "a.g.h": "x" * 117 + "...", "a.g.i": "short"}


def test_final_metrics_are_the_evaluations_and_the_run_numbers_of_the_results():
    results = {"test_accuracy": 0.75, "test_ema_loss": 0.5, "validation_balanced_accuracy": 1,
               "test_correct": 27, "steps": 12, "images_per_sec": None, "finished": True,
               "device": "cpu", "stopped_early": False, "parameters": 100}
    assert hparams.final_metrics(results) == {
        "test_accuracy": 0.75, "test_ema_loss": 0.5, "validation_balanced_accuracy": 1.0,
        "steps": 12.0, "parameters": 100.0}


def test_only_process_0_writes_hparams(finished, monkeypatch, tmp_path):
    _, config, results = finished
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    hparams.write_hparams(str(tmp_path), config, results, 12)
    assert os.listdir(tmp_path) == []
