"""Training with dataset.pipeline='streaming': the run of the resident pipeline bit for bit (on
8 devices, each batch built from process-local data; from a folder and from a tar's members),
resumed exactly after SIGKILL from the Grain state in its checkpoints, 'auto', and what the
pipeline refuses."""

import json
import logging
import random
import re
import shutil
import sys

import jax
import numpy as np
import pytest
from conftest import convnet_config, tiny_config
from test_resume import (
    assert_same_run,
    kill_at_random_steps,
    params_of,
    run_config,
)

from cv_jax.config import ConfigError, validate
from cv_jax.data.sources import list_split
from cv_jax.training import train
from cv_jax.training.datasets import load_datasets
from cv_jax.training.streamed import make_stream

STREAMING = {"dataset.pipeline": "streaming"}


def streaming_config(tiny_folder, cache_dir, **training):
    config = tiny_config(tiny_folder, cache_dir, **training)
    config.dataset.pipeline = "streaming"
    return config


def test_a_streamed_run_is_the_resident_run_bit_for_bit(trained_run, tiny_folder, cache_dir,
                                                        tmp_path, caplog):
    reference, reference_results = trained_run
    with caplog.at_level("INFO", logger="cv_jax"):
        results = train.train_and_evaluate(streaming_config(tiny_folder, cache_dir),
                                           str(tmp_path))
    assert "Pipeline 'streaming' (dataset.pipeline): the decoded training split is" \
        in caplog.text
    assert "Listed 96 images of split 'train'" in caplog.text
    assert results["test_correct"] == reference_results["test_correct"]
    same = jax.tree.map(np.array_equal, params_of(tmp_path), params_of(reference))
    assert all(jax.tree.leaves(same))
    with open(tmp_path / "checkpoints" / "12" / "data" / "process_0-of-1.json") as f:
        assert json.load(f) == {"step": 12, "epoch": 1, "first_batch": 0,
                                "grain": {"next_index": 6}}


def test_a_run_streamed_from_a_tar_is_the_resident_run_from_it_bit_for_bit(
        tiny_folder, cache_dir, tmp_path, caplog):
    archive = shutil.make_archive(str(tmp_path / "tiny"), "tar", tiny_folder)
    runs = {}
    for pipeline in ("resident", "streaming"):
        config = convnet_config(archive, cache_dir)
        config.dataset.pipeline = pipeline
        with caplog.at_level(logging.INFO, logger="cv_jax"):
            results = train.train_and_evaluate(config, str(tmp_path / pipeline))
        runs[pipeline] = results, params_of(tmp_path / pipeline)
    assert f"Listed 96 images of split 'train' in {archive}" in caplog.text
    (resident, resident_params), (streamed, streamed_params) = runs.values()
    assert streamed["test_correct"] == resident["test_correct"]
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, streamed_params, resident_params)))


@pytest.mark.reliability
def test_sigkill_then_resuming_a_streamed_run_equals_the_uninterrupted_run(
        trained_run, tiny_folder, cache_dir, tmp_path):
    workdir = tmp_path / "run"
    kill_at_random_steps(workdir, tiny_folder, cache_dir, tmp_path, random.Random(2), 2,
                         **STREAMING)
    config = run_config(tiny_folder, cache_dir)
    config.dataset.pipeline = "streaming"
    results = train.train_and_evaluate(config, str(workdir))
    reference, reference_results = trained_run
    # The reference's config.json and metrics say 'resident'; everything else is the same.
    with open(workdir / "config.json") as f:
        assert json.load(f)["dataset"]["pipeline"] == "streaming"
    assert_same_run(workdir, reference, results, reference_results)


def test_a_resumed_stream_continues_from_its_saved_grain_state(tiny_folder, cache_dir, tmp_path,
                                                              caplog):
    config = streaming_config(tiny_folder, cache_dir)
    train.train_and_evaluate(config, str(tmp_path), max_steps_this_run=6)
    with caplog.at_level("INFO", logger="cv_jax"):
        train.train_and_evaluate(config, str(tmp_path))
    assert "Streaming resumes at step 6 from the saved Grain state." in caplog.text


def test_auto_keeps_a_small_split_resident_and_says_why(tiny_folder, cache_dir, caplog):
    config = tiny_config(tiny_folder, cache_dir)
    config.dataset.pipeline = "auto"
    with caplog.at_level(logging.INFO, logger="cv_jax"):
        data = load_datasets(config)
    assert config.dataset.pipeline == "resident"
    assert data.train.images.shape == (96, 16, 16, 3)
    assert ("Pipeline 'resident' (dataset.pipeline='auto'): the decoded training split is "
            "0.00 GB, under the resident budget of 4.3 GB (cpu reports no memory size).") \
        in caplog.text


@pytest.mark.parametrize("key, value", [("training.steps_per_call", 2),
                                        ("dataset.normalization", "featurewise"),
                                        ("dataset.pseudo_labels", "labels.npz")])
def test_what_streaming_cannot_do_is_refused_naming_the_key(key, value, tiny_folder,
                                                            cache_dir):
    config = streaming_config(tiny_folder, cache_dir)
    section, name = key.split(".")
    config[section][name] = value
    if name == "pseudo_labels":
        config.dataset.num_labelled = 8
    with pytest.raises(ConfigError, match=f"config.{key}={value!r} does not work with "
                                          "config.dataset.pipeline='streaming'"):
        validate(config)


def test_an_unknown_pipeline_is_refused(tiny_folder, cache_dir):
    config = tiny_config(tiny_folder, cache_dir)
    config.dataset.pipeline = "stream"
    with pytest.raises(ConfigError, match="config.dataset.pipeline='stream' is invalid: use "
                                          "'resident', 'streaming' or 'auto'"):
        validate(config)


def test_a_host_crop_of_an_archive_is_refused_naming_the_key(tiny_folder, cache_dir, tmp_path):
    archive = shutil.make_archive(str(tmp_path / "tiny"), "gztar", tiny_folder)
    config = streaming_config(archive, cache_dir)
    config.dataset.stream_crop = 12
    with pytest.raises(ConfigError, match=re.escape(
            f"config.dataset.stream_crop=12 crops training images as their files are read, but "
            f"{archive} is not an ImageFolder directory")):
        load_datasets(config)


def test_a_bilinear_crop_without_opencv_is_refused_naming_the_extra(tiny_folder, cache_dir,
                                                                     monkeypatch):
    config = streaming_config(tiny_folder, cache_dir)
    config.dataset.stream_crop, config.dataset.stream_resize = 12, "bilinear"
    validate(config)
    monkeypatch.setitem(sys.modules, "cv2", None)
    files = list_split(tiny_folder, "train", crop=12)
    with pytest.raises(ConfigError, match=re.escape(
            "config.dataset.stream_resize='bilinear' needs OpenCV, which is not installed: "
            "pip install 'cv_jax[opencv]' (or set stream_resize='antialias')")):
        make_stream(config, files, 6, lambda epoch: np.arange(96))
    config.dataset.stream_resize = "antialias"
    assert make_stream(config, files, 6, lambda epoch: np.arange(96)).augment.resize == \
        "antialias"
