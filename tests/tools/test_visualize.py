"""Figures of a trained run: kernels, feature maps, predictions, confusion matrix, mistakes,
curves, and the same images in TensorBoard."""

import glob
import io
import json
import math
import os
import shutil
import struct

import jax
import matplotlib
import numpy as np
import pytest
from absl import flags
from PIL import Image
from tensorboardX.proto import event_pb2

from cv_jax.analysis import figures
from cv_jax.data.dataset import DataError
from cv_jax.data.sources import load_split
from cv_jax.tools import visualize
from cv_jax.training import evaluation, runs, sharding, steps

IMAGE_INDEX = 5
DEFAULT_LAYERS = ["whiten", "group1/conv2", "group2/conv2", "group3/conv2"]


@pytest.fixture(scope="module")
def visualized(trained_run, tmp_path_factory):
    """A copy of the shared tiny airbench run and its figures with defaults."""
    workdir = str(tmp_path_factory.mktemp("visualized") / "run")
    shutil.copytree(trained_run[0], workdir)
    results = trained_run[1]
    paths = visualize.visualize_run(workdir, image_index=IMAGE_INDEX)
    with open(os.path.join(workdir, "plots", "visualize.json")) as f:
        record = json.load(f)
    return workdir, results, paths, record


@pytest.fixture(scope="module")
def independent(visualized, tiny_folder, cache_dir):
    """The restored run, its test set and the training loop's own eval-step predictions."""
    workdir = visualized[0]
    run = runs.load_run(workdir)
    test = load_split(str(tiny_folder), "test", cache_dir=cache_dir)
    settings = steps.EvalSettings.from_config(run.config)
    evaluator = evaluation.Evaluator(test, 16, settings, sharding.make_mesh())
    return run, test, evaluator.predictions(run.state)["prediction"]


def size_of(path):
    with Image.open(path) as image:
        return image.size


def pixels(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def tiled_size(tiles, tile_pixels, gap=2):
    """(width, height) of a near-square grid of square tiles: ceil(sqrt(n)) columns."""
    columns = math.ceil(math.sqrt(tiles))
    rows = math.ceil(tiles / columns)
    return columns * (tile_pixels + gap) + gap, rows * (tile_pixels + gap) + gap


def panels_size(count):
    """(width, height) of a grid figure of 1.5 x 1.75 inch panels at 100 dpi."""
    columns = math.ceil(math.sqrt(count))
    return columns * 150, math.ceil(count / columns) * 175


def test_every_figure_is_written_at_its_pixel_size(visualized):
    workdir, results, paths, _ = visualized
    wrong = 36 - results["test_correct"]
    assert wrong > 0  # the tiny run mistakes ships for cats
    expected = {
        "kernels": tiled_size(24, 2 * 16),  # 24 whitening filters of 2x2, 16x upscaled
        # 16 of 24 channels of 15x15 (x4); 8 channels of 7x7 (x9); 16 of 3x3 (x21); 16 of 1x1 (x64)
        "feature_maps/whiten": tiled_size(16, 60),
        "feature_maps/group1/conv2": tiled_size(8, 63),
        "feature_maps/group2/conv2": tiled_size(16, 63),
        "feature_maps/group3/conv2": tiled_size(16, 64),
        "predictions": panels_size(36),
        "confusion_matrix": (900, 450),  # two 4.5 inch panels for 4 classes
        "mistakes": panels_size(min(16, wrong)),
        "curves": (int(4.2 * 3 * 110), int(3.2 * 2 * 110)),
    }
    assert {name: size_of(path) for name, path in paths.items()} == expected
    assert sorted(os.listdir(os.path.join(workdir, "plots"))) == sorted(
        ["kernels.png", "feature_maps_whiten.png", "feature_maps_group1_conv2.png",
         "feature_maps_group2_conv2.png", "feature_maps_group3_conv2.png", "predictions.png",
         "confusion_matrix.png", "mistakes.png", "curves.png", "visualize.json"])


def test_kernel_grid_has_one_tile_per_filter_of_the_first_conv(visualized, independent):
    _, _, paths, record = visualized
    kernel = np.asarray(independent[0].state.params["whiten"]["kernel"])  # airbench's stem
    assert record["first_conv"] == {"layer": "whiten", "kernel_shape": [2, 2, 3, 24]}
    grid = pixels(paths["kernels"])
    cell = 2 * 16 + 2
    for i in range(25):  # a 5x5 grid for 24 filters
        top, left = 2 + (i // 5) * cell, 2 + (i % 5) * cell
        tile = grid[top:top + 32, left:left + 32]
        if i == 24:
            assert (tile == 255).all(), "the cell after the last filter is background"
            continue
        w = kernel[..., i]
        expected = np.round((w - w.min()) / (w.max() - w.min()) * 255)
        np.testing.assert_allclose(tile, expected.repeat(16, 0).repeat(16, 1), atol=1)


def test_feature_maps_are_the_chosen_layers_on_the_chosen_image(visualized, independent):
    _, _, paths, record = visualized
    run, test, _ = independent
    assert list(record["feature_maps"]) == DEFAULT_LAYERS
    assert record["feature_maps"]["whiten"] == [15, 15, 24]
    # The stem conv's output, channel 0, recomputed from the raw image and the saved weights.
    image = test.images[IMAGE_INDEX].astype(np.float32) / 255
    x = (image - np.asarray(run.config.dataset.mean)) / np.asarray(run.config.dataset.std)
    params = run.state.params["whiten"]
    out = jax.lax.conv_general_dilated(x[None], params["kernel"], (1, 1), "VALID",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    channel = np.asarray(out[0, ..., 0] + params["bias"][0], np.float64)
    unit = (channel - channel.min()) / (channel.max() - channel.min())
    expected = np.round(matplotlib.colormaps["viridis"](unit)[..., :3] * 255)
    tile = pixels(paths["feature_maps/whiten"])[2:62, 2:62]
    np.testing.assert_allclose(tile, expected.repeat(4, 0).repeat(4, 1), atol=4)


def test_confusion_matrix_counts_the_eval_step_predictions(visualized, independent):
    _, results, _, record = visualized
    _, test, predictions = independent
    expected = np.zeros((4, 4), int)
    np.add.at(expected, (test.labels, predictions), 1)
    assert record["confusion_matrix"] == expected.tolist()
    assert np.sum(record["confusion_matrix"]) == record["examples"] == 36
    assert np.trace(record["confusion_matrix"]) == results["test_correct"]
    assert record["class_names"] == ["cat", "dog", "frog", "ship"]


def test_prediction_grid_titles_are_true_and_predicted_classes(visualized, independent):
    _, _, paths, record = visualized
    _, test, predictions = independent
    names = record["class_names"]
    shown = record["predictions"]
    assert [r["index"] for r in shown] == list(range(36))  # 36 of 36: every image
    assert [r["label"] for r in shown] == [names[i] for i in test.labels]
    assert [r["prediction"] for r in shown] == [names[i] for i in predictions]
    red = (pixels(paths["predictions"]) == (255, 0, 0)).all(-1).sum()
    assert red > 0 and any(r["label"] != r["prediction"] for r in shown)


def test_mistakes_are_every_misclassified_image_most_confident_first(visualized, independent):
    _, _, _, record = visualized
    _, test, predictions = independent
    names = record["class_names"]
    mistakes = record["mistakes"]
    wrong = np.flatnonzero(predictions != test.labels)
    assert len(mistakes) == min(16, len(wrong))  # all of them: the tiny run makes fewer
    assert {r["index"] for r in mistakes} <= set(wrong.tolist())
    for r in mistakes:
        assert r["label"] == names[test.labels[r["index"]]] != r["prediction"]
        assert r["prediction"] == names[predictions[r["index"]]]
        assert 1 / 4 <= r["probability"] <= 1  # the largest of 4 class probabilities
    confidence = [r["probability"] for r in mistakes]
    assert confidence == sorted(confidence, reverse=True)


def test_confident_mistakes_picks_the_top_misclassified():
    labels = np.array([0, 1, 2, 0, 1])
    probabilities = np.array([[0.9, 0.1, 0.0],    # right
                              [0.6, 0.4, 0.0],    # wrong, 0.6
                              [0.1, 0.8, 0.1],    # wrong, 0.8
                              [0.3, 0.7, 0.0],    # wrong, 0.7
                              [0.0, 1.0, 0.0]])   # right
    assert visualize.confident_mistakes(labels, probabilities, 2).tolist() == [2, 3]
    assert visualize.confident_mistakes(labels, probabilities, 9).tolist() == [2, 3, 1]
    assert visualize.confident_mistakes(labels[:1], probabilities[:1], 3).tolist() == []


def test_kernels_of_other_than_three_channels_are_gray():
    kernel = np.zeros((1, 2, 2, 2))  # [kh, kw, C=2, O=2]
    kernel[0, 0, :, 0], kernel[0, 1, :, 0] = (1.0, 3.0), (5.0, 7.0)  # means 2 and 6
    kernel[..., 1] = 4.0  # a constant filter
    tiles = figures.kernel_tiles(kernel)
    assert tiles.shape == (2, 1, 2, 3)
    np.testing.assert_array_equal(tiles[0], [[[0, 0, 0], [255, 255, 255]]])
    np.testing.assert_array_equal(tiles[1], 0)


def test_one_pixel_feature_maps_are_scaled_across_channels():
    viridis = np.round(matplotlib.colormaps["viridis"]([0.0, 0.5, 1.0])[:, :3] * 255)
    tiles = figures.feature_tiles(np.array([[[1.0, 2.0, 3.0, 9.0]]]), count=3)
    np.testing.assert_array_equal(tiles[:, 0, 0], viridis)
    two_by_one = np.array([[[0.0, 5.0]], [[1.0, 1.0]]])  # [H=2, W=1, C=2]: each channel alone
    np.testing.assert_array_equal(figures.feature_tiles(two_by_one, 2)[:, :, 0],
                                  [viridis[[0, 2]], viridis[[2, 0]]])


def read_events(folder):
    """Every Event in the TensorBoard files of ``folder`` (TFRecord framing, CRCs skipped)."""
    events = []
    for path in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
        with open(path, "rb") as f:
            data = f.read()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            events.append(event_pb2.Event.FromString(data[offset + 12:offset + 12 + length]))
            offset += 12 + length + 4
    return events


def test_tensorboard_holds_the_same_images(visualized):
    workdir, results, paths, _ = visualized
    images = {value.tag: (event.step, value.image)
              for event in read_events(os.path.join(workdir, "tensorboard"))
              for value in event.summary.value if value.HasField("image")}
    assert set(images) == {f"visualize/{name}" for name in paths}
    for name, path in paths.items():
        step, image = images[f"visualize/{name}"]
        assert step == results["steps"]
        assert (image.width, image.height) == size_of(path)
        decoded = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB"))
        np.testing.assert_array_equal(decoded, pixels(path))


def test_unknown_layer_lists_the_valid_names(visualized):
    with pytest.raises(ValueError, match=r"unknown layer\(s\) \['group1/conv9'\]") as error:
        visualize.visualize_run(visualized[0], layers=["group1/conv9"])
    for name in ("whiten", "group1/conv1", "group1/norm1", "group2", "group3/conv2"):
        assert name in str(error.value)


def test_image_index_out_of_range_is_refused(visualized):
    with pytest.raises(ValueError, match=r"--image_index=36 .* 36 images \(0\.\.35\)"):
        visualize.visualize_run(visualized[0], image_index=36)


def test_data_with_other_classes_is_refused(visualized, tiny_folder, tmp_path):
    shutil.copytree(tiny_folder / "test", tmp_path / "test")
    os.rename(tmp_path / "test" / "ship", tmp_path / "test" / "truck")
    with pytest.raises(DataError, match=r"missing from .*\['ship'\].*not in train: \['truck'\]"):
        visualize.visualize_run(visualized[0], data=str(tmp_path))


def test_workdir_without_checkpoint_is_refused(visualized, tmp_path):
    shutil.copy(os.path.join(visualized[0], "config.json"), tmp_path)
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        visualize.visualize_run(str(tmp_path))


def test_command_line_flags(visualized, tiny_folder, tmp_path):
    """--checkpoint, --data, --layers, --image_index and --num_images reach the figures."""
    workdir = str(tmp_path / "run")
    shutil.copytree(visualized[0], workdir)
    shutil.rmtree(os.path.join(workdir, "plots"))
    values = flags.FlagValues()
    visualize.define_flags(values)
    values(["visualize", f"--workdir={workdir}", "--checkpoint=best", "--num_images=5",
            f"--data={tiny_folder}", "--split=test",
            "--layers=group1/conv1,whiten", "--image_index=3", "--channels=4"])
    paths = visualize.run_flags(values)
    record = json.load(open(os.path.join(workdir, "plots", "visualize.json")))
    assert record["checkpoint"] == "best" and record["data"] == str(tiny_folder)
    assert record["checkpoint_step"] == visualized[1]["best_step"]
    assert record["image_index"] == 3
    assert list(record["feature_maps"]) == ["group1/conv1", "whiten"]
    assert [r["index"] for r in record["predictions"]] == [0, 9, 18, 26, 35]
    assert size_of(paths["predictions"]) == panels_size(5)
    assert size_of(paths["feature_maps/group1/conv1"]) == tiled_size(4, 60)  # 4 of 8, 15x15


def test_example_grids_show_grey_images(tmp_path):
    images = np.stack([np.full((28, 28, 1), v, np.uint8) for v in (0, 255)])
    path = figures.image_grid(images, ["a", "b"], [False, True], str(tmp_path / "grid.png"))
    with Image.open(path) as grid:
        assert grid.size[0] > 28 and grid.size[1] > 28
