"""Exact evaluation: every example of a dataset counted once (padded to whole batches on the
devices, the padding dropped), for the weights a run reports and its EMA weights."""

from __future__ import annotations

import logging
from typing import Any

import flax.linen as nn
import jax
import ml_collections as mlc
import numpy as np

from cv_jax.data import pipeline
from cv_jax.data.dataset import ArrayDataset
from cv_jax.optim import opt_state
from cv_jax.training import checkpoint, runs, sharding, steps
from cv_jax.training.datasets import Datasets
from cv_jax.training.divergence import check_finite
from cv_jax.training.metrics import MetricWriter, classification_metrics
from cv_jax.training.state import TrainState, ema_view

log = logging.getLogger("cv_jax")


class Evaluator:
    """Exact evaluation of a dataset: padded to whole batches on device, padding dropped. It
    applies ``model`` (a run's :func:`evaluation_model`) to the weights of the states it is
    given, or, without one, each state's own model (``state.apply_fn``)."""

    def __init__(self, dataset: ArrayDataset, batch_size: int, settings: steps.EvalSettings,
                 mesh: jax.sharding.Mesh, model: nn.Module | None = None):
        self.dataset = dataset
        images, labels = pipeline.pad_to_multiple(dataset, batch_size)
        self.num_batches = len(images) // batch_size
        repl = sharding.replicated(mesh)
        self.images, self.labels = jax.device_put((images, labels), repl)

        def run(state, images, labels, index):
            if model is not None:
                state = state.replace(apply_fn=model.apply)
            start = index * batch_size
            with jax.named_scope("eval"):  # its ops' names in a profiler trace
                batch = {"image": jax.lax.dynamic_slice_in_dim(images, start, batch_size),
                         "label": jax.lax.dynamic_slice_in_dim(labels, start, batch_size)}
                batch = jax.lax.with_sharding_constraint(batch, sharding.batch_split(mesh))
                return steps.eval_step(state, batch, settings)

        self.step = jax.jit(run, out_shardings=repl)

    def compile(self, state: TrainState) -> None:
        self.step = self.step.lower(state, self.images, self.labels, 0).compile()

    def predictions(self, state: TrainState) -> dict[str, np.ndarray]:
        """Per-example prediction and loss for every example, in dataset order."""
        outputs = [self.step(state, self.images, self.labels, i) for i in range(self.num_batches)]
        outputs = jax.device_get(outputs)
        n = len(self.dataset)
        return {k: np.concatenate([o[k] for o in outputs])[:n] for k in outputs[0]}

    def __call__(self, state: TrainState) -> dict[str, Any]:
        return summarize(self.predictions(state), self.dataset)


def make_evaluators(config: mlc.ConfigDict, data: Datasets,
                    mesh: jax.sharding.Mesh) -> dict[str, Evaluator]:
    """An Evaluator per evaluation split, with the config's eval settings and
    :func:`evaluation_model`, batched by ``eval.batch_size`` rounded up to a multiple of the
    devices."""
    devices = mesh.devices.size
    batch = -(-config.eval.batch_size // devices) * devices
    settings = steps.EvalSettings.from_config(config)
    model = evaluation_model(config, data.train)
    return {name: Evaluator(ds, batch, settings, mesh, model)
            for name, ds in data.eval_sets().items()}


def evaluation_model(config: mlc.ConfigDict, train: ArrayDataset) -> nn.Module:
    """The run's model as evaluation applies it: with plain layers (``runs.build_model``), so
    that it computes alike on every backend (the CPU kernels' convolution rounds differently
    from XLA's)."""
    return runs.build_model(config, len(train.class_names))


def summarize(outputs: dict[str, np.ndarray], dataset: ArrayDataset) -> dict[str, Any]:
    """Accuracy, balanced accuracy and mean loss of per-example eval outputs."""
    return classification_metrics(outputs["prediction"], outputs["loss"], dataset.labels,
                                  dataset.class_names)


def evaluate_weights(evaluators: dict[str, Evaluator], state: TrainState, step: int,
                     writer: MetricWriter | None, ckpt: checkpoint.Checkpoints) -> dict[str, Any]:
    """Evaluates the weights a run reports (schedule-free: the averaged ones) and, when the
    run keeps an EMA, the EMA weights too (as '<split>_ema_*')."""
    flat = evaluate_all(evaluators, opt_state.eval_state(state), step, writer, ckpt)
    if state.ema:
        flat |= evaluate_all(evaluators, ema_view(state), step, writer, ckpt, suffix="_ema")
    return flat


def evaluate_all(evaluators: dict[str, Evaluator], state: TrainState, step: int,
                 writer: MetricWriter | None, ckpt: checkpoint.Checkpoints,
                 suffix: str = "") -> dict[str, Any]:
    """Runs every evaluator; returns ``{'<split><suffix>_accuracy': ..., ...}`` (suffix '_ema'
    for the averaged weights) and logs them with ``writer`` unless it is None."""
    flat = {}
    for split, evaluator in evaluators.items():
        name = split + suffix
        metrics = evaluator(state)
        check_finite(metrics["loss"], f"the {name} loss", step, ckpt)
        if writer is not None:
            writer.write(step, name, metrics)
        flat |= {f"{name}_{k}": v for k, v in metrics.items()}
    log.info("step %d: %s", step, "  ".join(
        f"{k} {v:.4f}" for k, v in flat.items() if k.endswith(("accuracy", "loss"))))
    return flat
