"""logging.wandb: an offline W&B run gets the metrics, config and results, a resumed run resumes
its W&B run id, and asking for W&B without the package names the extra to install."""

import glob
import json
import os
import struct
import sys
import time

import pytest
from conftest import convnet_config

from cv_jax.config import ConfigError, validate
from cv_jax.training import train, wandb_logging

LEVELDB_BLOCK = 32768  # W&B's transaction log (run-<id>.wandb): LevelDB's log format


def wandb_records(path):
    """The records of a W&B transaction log: a 7-byte file header, then in blocks of 32 KiB
    chunks of (CRC, length, type: 1 full, 2 first, 3 middle, 4 last) and their bytes."""
    from wandb.proto import wandb_internal_pb2

    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B"
    pos, parts = 7, b""
    while pos + 7 <= len(data):
        if LEVELDB_BLOCK - pos % LEVELDB_BLOCK < 7:  # padding at a block's end
            pos += LEVELDB_BLOCK - pos % LEVELDB_BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if pos + 7 + length > len(data):  # still being written
            return
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts + chunk)
            parts = b""
            yield record
        elif kind in (2, 3):
            parts += chunk


def items(update):
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json)
            for item in update}


def finished_records(path, timeout_s=30.0):
    """The records of a finished W&B run's transaction log. W&B's service process may still
    be writing it when ``run.finish()`` returns: wait for its closing 'exit' record."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = list(wandb_records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, f"{path} has no exit record"
        time.sleep(0.1)


def local_run(wandb_dir, run_id):
    """What an offline W&B run's local directories hold: its run records, its history rows
    (by step) and its summary, in the order they were written."""
    runs, history, summary = [], {}, {}
    for directory in sorted(glob.glob(os.path.join(wandb_dir, "wandb", f"offline-run-*-{run_id}"))):
        for record in finished_records(os.path.join(directory, f"run-{run_id}.wandb")):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                runs.append(record.run)
            elif kind == "history":
                row = items(record.history.item)
                history.setdefault(row["_step"], {}).update(row)
            elif kind == "summary":
                summary.update(items(record.summary.update))
    return runs, history, summary


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """W&B offline, its files under tmp_path/wandb_files: nothing leaves the machine."""
    directory = tmp_path / "wandb_files"
    directory.mkdir()
    for name, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(directory),
                        "WANDB_CONFIG_DIR": str(directory), "WANDB_CACHE_DIR": str(directory),
                        "WANDB_DATA_DIR": str(directory), "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(name, value)
    return str(directory)


def wandb_config(tiny_folder, cache_dir):
    config = convnet_config(tiny_folder, cache_dir)
    config.logging.update(wandb=True, project="cv_jax_tests", name="tiny", tags=("a", "b"),
                          mode="offline")
    return config


def test_an_offline_run_logs_metrics_config_and_results_and_a_resumed_run_keeps_its_id(
        tiny_folder, cache_dir, tmp_path, offline, caplog):
    pytest.importorskip("wandb")
    workdir = str(tmp_path / "run")
    config = wandb_config(tiny_folder, cache_dir)
    with caplog.at_level("INFO", logger="cv_jax"):
        first = train.train_and_evaluate(config, workdir, max_steps_this_run=5)
    assert not first["finished"]
    with open(os.path.join(workdir, wandb_logging.ID_FILE)) as f:
        run_id = f.read().strip()
    assert len(run_id) == 8 and run_id.isalnum()
    assert (f"Weights & Biases run {run_id} (offline): "
            f"{os.path.join(offline, 'wandb', 'offline-run-')}") in caplog.text
    runs, history, summary = local_run(offline, run_id)
    assert [r.run_id for r in runs] == [run_id]
    assert sorted(history) == [1, 2, 3, 4, 5] and "test_accuracy" not in summary

    results = train.train_and_evaluate(config, workdir)  # resumes from step 5
    assert results["finished"]
    runs, history, summary = local_run(offline, run_id)
    assert len(glob.glob(os.path.join(offline, "wandb", "offline-run-*"))) == 2
    assert [r.run_id for r in runs] == [run_id, run_id]  # the same W&B run, resumed
    run = runs[0]
    assert (run.project, run.display_name, list(run.tags)) == ("cv_jax_tests", "tiny", ["a", "b"])
    config_items = items(run.config.update)
    assert config_items["optimizer"]["learning_rate"] == 0.05
    assert config_items["logging"]["wandb"] is True
    # Every record of metrics.jsonl, at its step.
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert sorted(history) == list(range(1, 13))
    for record in records:
        row = history[record["step"]]
        for key, value in record.items():
            if key not in ("step", "split"):
                assert row[f"{record['split']}/{key}"] == pytest.approx(value), (record, key)
    assert history[12]["test/accuracy"] == results["test_accuracy"]
    assert history[6]["test/loss"] == pytest.approx(
        next(r["loss"] for r in records if r["split"] == "test" and r["step"] == 6))
    # The results, as the W&B run's summary.
    for key in ("test_accuracy", "test_loss", "test_correct", "steps", "parameters"):
        assert summary[key] == results[key], key
    assert summary["finished"] is True


def test_a_finished_run_rerun_starts_no_wandb_run(tiny_folder, cache_dir, tmp_path, offline):
    pytest.importorskip("wandb")
    workdir = str(tmp_path / "run")
    config = wandb_config(tiny_folder, cache_dir)
    train.train_and_evaluate(config, workdir)
    assert len(glob.glob(os.path.join(offline, "wandb", "offline-run-*"))) == 1
    train.train_and_evaluate(config, workdir)
    assert len(glob.glob(os.path.join(offline, "wandb", "offline-run-*"))) == 1


def test_wandb_without_the_package_is_a_config_error_naming_the_extra(
        tiny_folder, cache_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    config = wandb_config(tiny_folder, cache_dir)
    with pytest.raises(ConfigError) as e:
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert str(e.value) == ("config.logging.wandb=True needs the wandb package, which is not "
                            "installed: pip install 'cv_jax[wandb]'")
    assert not os.path.exists(tmp_path / "run")  # before anything is written
    config.logging.wandb = False
    assert wandb_logging.require(config) is None  # off: never imported


@pytest.mark.parametrize("key, value, message", [
    ("mode", "online2", "config.logging.mode='online2' is invalid: use '', 'online', 'offline' "
                        "or 'disabled'"),
    ("tags", ("a", 3), "config.logging.tags=('a', 3) is invalid: use a tuple of strings"),
    ("tags", ("a", ""), "config.logging.tags=('a', '') is invalid: use a tuple of strings"),
])
def test_bad_logging_values_are_config_errors(key, value, message, tiny_folder, cache_dir):
    config = convnet_config(tiny_folder, cache_dir)
    config.logging[key] = value
    with pytest.raises(ConfigError) as e:
        validate(config)
    assert str(e.value) == message


class FakeRun:
    """A W&B run that records what it is sent; ``starting_step`` as a resumed online run's."""

    def __init__(self, starting_step=0):
        self.starting_step, self.logged = starting_step, []

    def log(self, data, step):
        self.logged.append((step, data))


def test_records_a_resumed_wandb_run_holds_already_are_not_sent_again():
    run = wandb_logging.WandbRun(FakeRun(starting_step=7))
    for step in (5, 6, 7, 8):
        run.write(step, "train", {"loss": float(step)})
    run.write(8, "test", {"accuracy": 0.5})
    assert run.run.logged == [(7, {"train/loss": 7.0}), (8, {"train/loss": 8.0}),
                              (8, {"test/accuracy": 0.5})]


def test_the_run_id_is_made_once_and_kept_in_the_workdir(tmp_path):
    first = wandb_logging.run_id(str(tmp_path))
    assert wandb_logging.run_id(str(tmp_path)) == first
    assert (tmp_path / "wandb_id.txt").read_text() == first + "\n"
    other = tmp_path / "other"
    other.mkdir()
    assert wandb_logging.run_id(str(other)) != first
