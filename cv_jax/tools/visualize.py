"""Visualise a trained run:

    python -m cv_jax.tools.visualize --workdir=runs/c10 [--checkpoint=latest|best]
        [--data=PATH --split=test] [--layers=group1/conv1,group2/conv2] [--image_index=0]
        [--num_images=36] [--channels=16] [--num_mistakes=16]

Writes into ``workdir/plots/`` and, as images under ``visualize/``, into ``workdir/tensorboard``:

* ``kernels.png``: the first conv layer's filters, one min-max scaled tile each;
* ``feature_maps_<layer>.png``: up to ``--channels`` channels of each chosen layer's output for
  image ``--image_index`` (default layers: four conv layers spread over the depth);
* ``predictions.png``: ``--num_images`` images spread over the split, titled ``GT: x / PR: y``,
  mistakes in red;
* ``confusion_matrix.png``: counts and row-normalised;
* ``mistakes.png``: the misclassified images with the highest predicted probability;
* ``curves.png``: training curves from ``metrics.jsonl``;
* ``visualize.json``: the numbers behind the figures (confusion matrix, the images shown).

Images come from the run's own test split (as evaluated during training) unless ``--data`` is
given; they are resized to the run's image size and normalised as in training.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import app, flags, logging
from PIL import Image

from cv_jax import inference
from cv_jax.analysis import figures
from cv_jax.data import pipeline
from cv_jax.data.dataset import ArrayDataset
from cv_jax.data.locate import find_dataset
from cv_jax.data.sources import check_same_classes, load_split
from cv_jax.runtime import cpu_defaults
from cv_jax.training import curves, metrics, steps
from cv_jax.training.state import TrainState

DEFAULT_LAYER_COUNT = 4  # conv layers shown when --layers is not given
KERNEL_TILE_PIXELS = 32  # kernels and feature maps are upscaled to about this many pixels
FEATURE_TILE_PIXELS = 64
TENSORBOARD_PREFIX = "visualize/"


# --------------------------------------------------------------------------- data and model


def load_images(run: inference.LoadedModel, data: str | None = None,
                split: str | None = None) -> tuple[ArrayDataset, str, str]:
    """``(dataset, source, split)`` to visualise, at the run's image size.

    Without ``data``: the run's own dataset and ``split`` (default its test split, limited to
    ``dataset.max_eval_examples`` as in training). With ``data``: ``split`` (default 'test') of
    it, which must have the run's classes.
    """
    cfg = run.config.dataset
    size = tuple(run.image_shape[:2])
    if data is None:
        source, split = find_dataset(cfg.name, cfg.data_dir or None), split or cfg.test_split
        dataset = load_split(source, split, image_size=size, cache_dir=cfg.cache_dir or None)
        if split == cfg.test_split:
            dataset = pipeline.limit(dataset, cfg.max_eval_examples)
        return dataset, source, split
    split = split or "test"
    dataset = load_split(data, split, image_size=size)
    trained = ArrayDataset(np.zeros((0, *size, 3), np.uint8), np.zeros(0, np.int32),
                           run.class_names)
    check_same_classes(trained, dataset, f"{data} (split {split!r})")
    return dataset, data, split


def _in_call_order(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()
                   ) -> Iterator[tuple[str, jax.Array]]:
    """``(module path, output)`` of a flax ``intermediates`` collection, in insertion order.

    A module whose ``__call__`` ran more than once (the shared Conv wraps ``nn.Conv.__call__``)
    sowed a tuple of outputs; the last one is the module's own output.
    """
    for key, value in tree.items():
        if key == "__call__":
            yield "/".join(prefix), value[-1]
        else:
            yield from _in_call_order(value, (*prefix, key))


def capture_layers(state: TrainState, image: np.ndarray,
                   settings: steps.EvalSettings) -> dict[str, np.ndarray]:
    """Every layer's eval-mode output ``[H, W, C]`` for one uint8 image, by module path, in the
    order the forward pass computes them (layers with other than NHWC outputs are left out).

    Flax's ``capture_intermediates`` stores outputs in nested dicts in the order the calls
    finish, which for nested modules is the forward order; jit returns dicts with sorted keys,
    so that order is read while the function is traced.
    """
    order: list[str] = []

    def forward(variables, images):
        x = steps.normalize(images, settings.normalization)
        _, captured = state.apply_fn(variables, x, train=False, capture_intermediates=True,
                                     mutable=["intermediates"])
        layers = list(_in_call_order(captured["intermediates"]))
        order[:] = [name for name, _ in layers]  # filled during tracing: names are static
        return [output for _, output in layers]

    variables = {"params": state.params, "batch_stats": state.batch_stats}
    outputs = jax.device_get(jax.jit(forward)(variables, image[None]))
    return {name: np.asarray(out[0], np.float32)
            for name, out in zip(order, outputs, strict=True) if name and out.ndim == 4}


def conv_kernel(params: Mapping[str, Any], layer: str) -> np.ndarray | None:
    """The 4-D ``kernel`` parameter of the module at path ``layer``, else None."""
    node: Any = params
    for key in layer.split("/"):
        if not hasattr(node, "get") or key not in node:
            return None
        node = node[key]
    kernel = node.get("kernel") if hasattr(node, "get") else None
    return None if kernel is None or np.ndim(kernel) != 4 else np.asarray(kernel, np.float32)


def conv_layers(params: Mapping[str, Any], layers: Sequence[str]) -> list[str]:
    """The ``layers`` (in their order) that own a 4-D (conv) kernel."""
    return [name for name in layers if conv_kernel(params, name) is not None]


def choose_layers(requested: Sequence[str] | None, layers: Sequence[str],
                  convs: Sequence[str], count: int = DEFAULT_LAYER_COUNT) -> list[str]:
    """The ``requested`` layers (each must be one of ``layers``), else ``count`` conv layers
    spread evenly over the depth, first and last included."""
    if requested:
        unknown = [name for name in requested if name not in layers]
        if unknown:
            raise ValueError(
                f"unknown layer(s) {unknown} in --layers; this model's layers with image-shaped "
                f"outputs, in forward order: {', '.join(layers)}")
        return list(requested)
    picks = np.linspace(0, len(convs) - 1, min(count, len(convs))).round().astype(int)
    return [convs[i] for i in np.unique(picks)]


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray,
                     num_classes: int) -> np.ndarray:
    """Counts ``[true, predicted]`` (int64)."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def confident_mistakes(labels: np.ndarray, probabilities: np.ndarray, count: int) -> np.ndarray:
    """Indices of up to ``count`` misclassified examples, highest predicted probability first
    (ties by index)."""
    predictions = probabilities.argmax(-1)
    wrong = np.flatnonzero(predictions != labels)
    confidence = probabilities[wrong, predictions[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")[:count]]


def spread_indices(total: int, count: int) -> np.ndarray:
    """``min(count, total)`` distinct indices spread evenly over ``range(total)`` (ImageFolder
    splits are sorted by class, so this shows every class)."""
    return np.unique(np.linspace(0, total - 1, min(count, total)).round().astype(int))


def check_image_index(index: int, dataset: ArrayDataset, split: str) -> None:
    if not 0 <= index < len(dataset):
        raise ValueError(f"--image_index={index} is out of range: split {split!r} has "
                         f"{len(dataset)} images (0..{len(dataset) - 1})")


# --------------------------------------------------------------------------- figures


def plot_kernels(params: Mapping[str, Any], layer: str, out: str) -> str:
    """``out/kernels.png``: the filters of conv ``layer`` on a grid, one tile per filter."""
    kernel = conv_kernel(params, layer)
    scale = max(1, KERNEL_TILE_PIXELS // max(kernel.shape[:2]))
    grid = figures.tile_grid(figures.kernel_tiles(kernel), scale)
    return figures.save_png(grid, os.path.join(out, "kernels.png"))


def feature_map_file(layer: str) -> str:
    """File name of a layer's feature-map grid (module path with '/' as '_')."""
    return f"feature_maps_{layer.replace('/', '_')}.png"


def plot_feature_maps(captured: Mapping[str, np.ndarray], layers: Sequence[str],
                      channels: int, out: str) -> dict[str, str]:
    """``{'feature_maps/<layer>': path}``: up to ``channels`` channels of each layer's output."""
    paths = {}
    for layer in layers:
        maps = captured[layer]
        scale = max(1, FEATURE_TILE_PIXELS // max(maps.shape[:2]))
        grid = figures.tile_grid(figures.feature_tiles(maps, channels), scale)
        paths[f"feature_maps/{layer}"] = figures.save_png(
            grid, os.path.join(out, feature_map_file(layer)))
    return paths


def describe(indices: np.ndarray, labels: np.ndarray, probabilities: np.ndarray,
             class_names: Sequence[str]) -> list[dict[str, Any]]:
    """One record per shown example: index, true and predicted class, predicted probability."""
    predictions = probabilities.argmax(-1)
    return [{"index": int(i), "label": class_names[labels[i]],
             "prediction": class_names[predictions[i]],
             "probability": float(probabilities[i, predictions[i]])} for i in indices]


def plot_examples(dataset: ArrayDataset, shown: Sequence[dict[str, Any]], path: str,
                  with_probability: bool = False) -> str:
    """Raw images of ``shown`` records titled ``GT: x / PR: y`` (and p), mistakes in red."""
    titles = [f"GT: {r['label']} / PR: {r['prediction']}"
              + (f"\np = {r['probability']:.2f}" if with_probability else "") for r in shown]
    wrong = [r["label"] != r["prediction"] for r in shown]
    images = dataset.images[[r["index"] for r in shown]]
    return figures.image_grid(images, titles, wrong, path)


def plot_training_curves(workdir: str, out: str) -> dict[str, str]:
    """``{'curves': path}`` from ``workdir/metrics.jsonl``; empty when nothing was logged."""
    records = curves.read_metrics(workdir)
    if not records:
        logging.warning("%s has no metrics.jsonl records; no training curves drawn", workdir)
        return {}
    name = os.path.basename(os.path.normpath(workdir))
    return {"curves": curves.plot_curves({name: records}, os.path.join(out, "curves.png"))}


def write_tensorboard(workdir: str, paths: Mapping[str, str], step: int) -> None:
    """Adds each PNG as an image ``visualize/<name>`` at ``step`` to ``workdir/tensorboard``."""
    writer = metrics.summary_writer(os.path.join(workdir, "tensorboard"))
    try:
        for name, path in paths.items():
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            writer.add_image(TENSORBOARD_PREFIX + name, pixels, step, dataformats="HWC")
    finally:
        writer.close()


# --------------------------------------------------------------------------- the whole run


def model_figures(state: TrainState, image: np.ndarray, settings: steps.EvalSettings,
                  layers: Sequence[str] | None, channels: int,
                  out: str) -> tuple[dict[str, str], dict[str, Any]]:
    """First-layer kernels and feature maps of one image; ``(paths, record)``."""
    captured = capture_layers(state, image, settings)
    convs = conv_layers(state.params, list(captured))
    if not convs:
        raise ValueError("the model has no conv layer (no module with a 4-D kernel parameter "
                         f"among {', '.join(captured)}); nothing to show as kernels")
    chosen = choose_layers(layers, list(captured), convs)
    paths = {"kernels": plot_kernels(state.params, convs[0], out)}
    paths |= plot_feature_maps(captured, chosen, channels, out)
    record = {"first_conv": {"layer": convs[0],
                             "kernel_shape": list(conv_kernel(state.params, convs[0]).shape)},
              "feature_maps": {layer: list(captured[layer].shape) for layer in chosen}}
    return paths, record


def prediction_figures(dataset: ArrayDataset, probabilities: np.ndarray, num_images: int,
                       num_mistakes: int, out: str) -> tuple[dict[str, str], dict[str, Any]]:
    """Prediction grid, confusion matrix and most confident mistakes; ``(paths, record)``."""
    names, labels = dataset.class_names, dataset.labels
    matrix = confusion_matrix(labels, probabilities.argmax(-1), len(names))
    shown = describe(spread_indices(len(dataset), num_images), labels, probabilities, names)
    mistakes = describe(confident_mistakes(labels, probabilities, num_mistakes), labels,
                        probabilities, names)
    paths = {"predictions": plot_examples(dataset, shown, os.path.join(out, "predictions.png")),
             "confusion_matrix": figures.plot_confusion(
                 matrix, names, os.path.join(out, "confusion_matrix.png"))}
    if mistakes:
        paths["mistakes"] = plot_examples(dataset, mistakes, os.path.join(out, "mistakes.png"),
                                          with_probability=True)
    record = {"examples": len(dataset), "accuracy": float(np.trace(matrix) / len(dataset)),
              "confusion_matrix": matrix.tolist(), "predictions": shown, "mistakes": mistakes}
    return paths, record


def visualize_run(workdir: str, which: str = "latest", data: str | None = None,
                  split: str | None = None, layers: Sequence[str] | None = None,
                  image_index: int = 0, num_images: int = 36, channels: int = 16,
                  num_mistakes: int = 16) -> dict[str, str]:
    """Writes every figure of a run (see the module docstring) to ``workdir/plots`` and
    TensorBoard; returns ``{name: png path}`` (no ``'mistakes'`` when nothing is wrong)."""
    run = inference.load(workdir, which)  # schedule-free / SAM: the evaluation weights
    state, settings = run.state, run.settings
    dataset, source, split = load_images(run, data, split)
    check_image_index(image_index, dataset, split)
    out = os.path.join(workdir, "plots")
    paths, model_record = model_figures(state, dataset.images[image_index], settings, layers,
                                        channels, out)
    probabilities = run.predict(dataset.images)
    more, prediction_record = prediction_figures(dataset, probabilities, num_images,
                                                 num_mistakes, out)
    paths |= more | plot_training_curves(workdir, out)
    record = {"checkpoint": which, "checkpoint_step": run.step, "data": source, "split": split,
              "class_names": list(dataset.class_names), "image_index": image_index,
              **model_record, **prediction_record, "figures": paths}
    with open(os.path.join(out, "visualize.json"), "w") as f:
        json.dump(record, f, indent=2)
    write_tensorboard(workdir, paths, run.step)
    return paths


# --------------------------------------------------------------------------- command line

def define_flags(values: flags.FlagValues = flags.FLAGS) -> None:
    """The command-line flags, defined on demand (other modules define ``workdir`` too)."""
    into = {"flag_values": values}
    flags.DEFINE_string("workdir", None, "A run directory written by cv_jax.main.", **into)
    flags.DEFINE_enum("checkpoint", "latest", ["latest", "best"], "Which checkpoint to show.",
                      **into)
    flags.DEFINE_string("data", None, "Dataset to show (default: the run's own dataset).",
                        **into)
    flags.DEFINE_string("split", None, "Split to show (default: the run's test split; 'test' "
                        "with --data).", **into)
    flags.DEFINE_list("layers", None, "Layers (module paths) whose feature maps to show "
                      "(default: four conv layers spread over the depth).", **into)
    flags.DEFINE_integer("image_index", 0, "Index in the split of the feature-map image.",
                         lower_bound=0, **into)
    flags.DEFINE_integer("num_images", 36, "Images in the prediction grid.", lower_bound=1,
                         **into)
    flags.DEFINE_integer("channels", 16, "Channels shown per feature-map layer.", lower_bound=1,
                         **into)
    flags.DEFINE_integer("num_mistakes", 16, "Most confident mistakes shown.", lower_bound=1,
                         **into)
    flags.mark_flags_as_required(["workdir"], flag_values=values)


def run_flags(values: flags.FlagValues = flags.FLAGS) -> dict[str, str]:
    """:func:`visualize_run` with the parsed flags of :func:`define_flags`."""
    return visualize_run(values.workdir, values.checkpoint, values.data, values.split,
                         values.layers, values.image_index, values.num_images, values.channels,
                         values.num_mistakes)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    for name, path in run_flags().items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    cpu_defaults.apply()  # before JAX starts its backend
    define_flags()
    app.run(main)
