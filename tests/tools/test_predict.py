"""cv_jax.load / LoadedModel and the predict CLI on a tiny trained run."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import CLASSES, REPO, tiny_config
from PIL import Image

import cv_jax
from cv_jax.config import model_section
from cv_jax.data.sources import load_split
from cv_jax.optim import opt_state
from cv_jax.tools import predict
from cv_jax.training import evaluation, runs, sharding, steps, train


@pytest.fixture(scope="module")
def workdir(tiny_folder, cache_dir, tmp_path_factory):
    """2 steps of the smoke recipe (flip TTA on, no EMA) with a one-conv BatchNorm net (quick
    to compile) on the tiny folder; one checkpoint."""
    path = str(tmp_path_factory.mktemp("predict_run"))
    config = tiny_config(tiny_folder, cache_dir, num_steps=2)
    config.model = model_section("convnet")
    config.model.update(layers="conv:8,pool:max:2", fc="")
    train.train_and_evaluate(config, path)
    return path


@pytest.fixture(scope="module")
def model(workdir):
    return cv_jax.load(workdir)


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory):
    """Images of odd sizes and modes: RGB PNG, RGB JPEG, grayscale PNG, and RGBA (the RGB
    PNG's pixels with an alpha channel)."""
    root = tmp_path_factory.mktemp("odd")
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (40, 9, 3), dtype=np.uint8)).save(root / "wide.jpg")
    Image.fromarray(rng.integers(0, 256, (9, 40), dtype=np.uint8)).save(root / "gray.png")
    alpha = rng.integers(0, 256, (17, 23, 1), dtype=np.uint8)
    Image.fromarray(np.concatenate([rgb, alpha], -1), "RGBA").save(root / "rgba.png")
    return [str(root / name) for name in ("rgb.png", "wide.jpg", "gray.png", "rgba.png")]


def test_loaded_model_describes_its_run(model, workdir):
    run = runs.load_run(workdir, "best")
    assert model.class_names == CLASSES
    assert model.image_shape == (16, 16, 3)
    assert model.step == run.step
    assert model.batch_size == 16  # the run's eval.batch_size, a multiple of the 8 devices
    jax.tree.map(np.testing.assert_array_equal, model.variables,
                 {"params": run.state.params, "batch_stats": run.state.batch_stats})


def test_predictions_equal_the_evaluator(model, workdir, tiny_folder):
    test = load_split(str(tiny_folder), "test")
    run = runs.load_run(workdir, "best")
    settings = steps.EvalSettings.from_config(run.config)
    evaluator = evaluation.Evaluator(test, 16, settings, sharding.make_mesh())
    expected = evaluator.predictions(opt_state.eval_state(run.state))["prediction"]
    probabilities = model.predict(test.images)
    assert probabilities.shape == (36, 4)
    np.testing.assert_array_equal(probabilities.argmax(-1), expected)
    np.testing.assert_array_equal(model.logits(test.images).argmax(-1), expected)
    # The test files, decoded by predict_files, give the same probabilities (dataset order is
    # class, then file name).
    files = [str(tiny_folder / "test" / c / f"{i:03d}.png") for c in CLASSES for i in range(9)]
    np.testing.assert_array_equal(model.predict_files(files), probabilities)


def test_odd_sizes_and_modes(model, odd_images):
    images = model.read_images(odd_images)
    assert images.shape == (4, 16, 16, 3) and images.dtype == np.uint8
    gray = images[2]
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 0] == gray[..., 2]).all()
    np.testing.assert_array_equal(images[3], images[0])  # alpha dropped, as the loader does
    probabilities = model.predict_files(odd_images)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(model.predict(images.astype(np.float32)), probabilities)
    for row, top in zip(probabilities, model.top_k(probabilities, 3), strict=True):
        assert len(top) == 3
        assert [p for _, p in top] == sorted(row, reverse=True)[:3]
        assert [row[CLASSES.index(c)] for c, _ in top] == [p for _, p in top]
    assert [sorted(c for c, _ in top) for top in model.top_k(probabilities, 10)] == \
        [sorted(CLASSES)] * 4


def test_bad_inputs_are_refused(model):
    with pytest.raises(ValueError, match=r"shape \(2, 8, 8, 3\).*\(N, 16, 16, 3\)"):
        model.predict(np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="top_k=0"):
        model.top_k(np.ones((1, 4)) / 4, 0)
    assert model.predict(np.zeros((0, 16, 16, 3), np.uint8)).shape == (0, 4)


def test_ema_weights_need_an_ema(workdir):
    with pytest.raises(ValueError, match=f"{workdir} kept no moving average.*ema_decay=0"):
        cv_jax.load(workdir, weights="ema")


def test_ema_weights_replace_the_raw_ones(workdir):
    run = runs.load_run(workdir)
    run.config.training.ema_decay = 0.5
    ema = jax.tree.map(lambda x: x + 1, {"params": run.state.params,
                                         "batch_stats": run.state.batch_stats})
    run = dataclasses.replace(run, state=run.state.replace(ema=ema))
    view = run.eval_state("ema")
    jax.tree.map(np.testing.assert_array_equal,
                 {"params": view.params, "batch_stats": view.batch_stats}, ema)
    with pytest.raises(ValueError, match="weights='average': use 'raw' or 'ema'"):
        run.eval_state("average")


def test_missing_run_or_checkpoint_is_named(workdir, tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=f"{missing} is not a cv_jax run directory"):
        cv_jax.load(missing)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(os.path.join(workdir, "config.json"), unfinished)
    with pytest.raises(FileNotFoundError, match=f"run in {unfinished} has not saved one yet"):
        cv_jax.load(str(unfinished))
    with pytest.raises(ValueError, match="checkpoint 'newest'.*'latest', 'best'"):
        cv_jax.load(workdir, checkpoint="newest")


def test_folders_expand_to_their_sorted_image_files(tmp_path):
    for rel in ("b/z.png", "b/a.jpg", "a.PNG", ".hidden.png", "notes.txt", "c/.cache/x.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    (tmp_path / "empty").mkdir()
    paths = [str(tmp_path), str(tmp_path / "b/z.png"), str(tmp_path / "empty"), "nowhere.png"]
    files, errors = predict.expand(paths)
    assert files == [str(tmp_path / rel) for rel in ("a.PNG", "b/a.jpg", "b/z.png", "b/z.png")]
    assert errors == [f"{tmp_path / 'empty'} holds no image files", "nowhere.png does not exist"]


def test_cli_predicts_files_and_folders_and_names_bad_files(model, workdir, odd_images,
                                                            tmp_path):
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(odd_images[0], folder / "sub" / "b.png")
    shutil.copy(odd_images[1], folder / "a.jpg")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    files = [str(folder / "a.jpg"), str(folder / "sub" / "b.png"), odd_images[2]]
    expected, errors = predict.predict_paths(model, files, 2)  # compiled here, cached for the CLI
    assert not errors
    cache = {"JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
             "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
             "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}
    done = subprocess.run(
        [sys.executable, "-m", "cv_jax.tools.predict", f"--workdir={workdir}", "--top-k=2",
         "--json",
         str(folder), str(bad), odd_images[2]],
        cwd=REPO, env=os.environ | cache, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert f"error: cannot decode {bad} as an image" in done.stderr
    printed = json.loads(done.stdout)
    assert [r["file"] for r in printed] == files
    assert printed == expected
    assert all(len(r["top_k"]) == 2 for r in printed)
    lines = predict.format_text(expected[:1]).splitlines()
    top = expected[0]["top_k"]
    assert lines == [files[0]] + [f"  {t['probability']:.4f}  {t['class']}" for t in top]


def test_a_run_saved_before_a_config_key_existed_reads_its_default(tmp_path):
    import json

    from cv_jax.training import runs

    (tmp_path / "config.json").write_text(json.dumps(
        {"seed": 3, "model": {"name": "resnet20", "depth_only_here": 20},
         "training": {"batch_size": 7}}))
    config = runs.read_config(str(tmp_path))
    assert config.seed == 3 and config.training.batch_size == 7
    assert config.model.depth_only_here == 20 and config.model.name == "resnet20"
    assert config.transfer.mode == "finetune" and config.training.ema_decay == 0.0
