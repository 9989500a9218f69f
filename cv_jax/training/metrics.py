"""Metric writers (JSONL + TensorBoard) and a progress display for the training loop."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from cv_jax.training import curves

log = logging.getLogger("cv_jax")


def _plain(value: Any) -> Any:
    """numpy/jax scalars -> Python numbers for JSON."""
    return value.item() if hasattr(value, "item") else value


def summary_writer(logdir: str, filename_suffix: str = ""):
    """A tensorboardX ``SummaryWriter`` for ``logdir`` (its event file's name ends in
    ``filename_suffix``: two writers opened in the same second need different ones, the second
    file replacing the first otherwise). tensorboardX imports PyTorch, when it is installed,
    only to accept torch tensors, which cv_jax never passes; that import costs seconds per
    process, so it is blocked while tensorboardX loads (unless torch is loaded)."""
    if "tensorboardX" not in sys.modules and "torch" not in sys.modules:
        sys.modules["torch"] = None  # `import torch` raises ImportError meanwhile
        try:
            import tensorboardX  # noqa: F401
        finally:
            del sys.modules["torch"]
    from tensorboardX import SummaryWriter

    return SummaryWriter(logdir, filename_suffix=filename_suffix)


class MetricWriter:
    """Appends ``{"step": s, "split": ..., **metrics}`` lines to workdir/metrics.jsonl and writes
    the same scalars to TensorBoard (workdir/tensorboard), and passes each record to the
    ``sinks`` (``sink(step, split, metrics)``: e.g. a W&B run's ``write``). Only process 0
    writes."""

    def __init__(self, workdir: str,
                 sinks: Sequence[Callable[[int, str, dict[str, Any]], None]] = ()):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        self.sinks = tuple(sinks)
        self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115
        self.tensorboard = summary_writer(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        values = {k: _plain(v) for k, v in metrics.items()}
        self.jsonl.write(json.dumps({"step": step, "split": split, **values}) + "\n")
        self.jsonl.flush()
        for name, value in values.items():
            if isinstance(value, (int, float)):
                self.tensorboard.add_scalar(f"{split}/{name}", value, step)
        for sink in self.sinks:
            sink(step, split, values)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tensorboard.close()


def drop_records_after(workdir: str, step: int) -> int:
    """Rewrites workdir/metrics.jsonl without the records of steps after ``step`` (a run that
    resumes from the checkpoint of ``step`` logs them again) and without a last line cut short
    by a crash; returns how many lines it dropped. Only process 0 rewrites."""
    path = os.path.join(workdir, "metrics.jsonl")
    if jax.process_index() != 0 or not os.path.exists(path):
        return 0
    with open(path) as f:
        lines = f.readlines()
    kept = [line for line, record in curves.jsonl_records(path)
            if record["step"] <= step and line.endswith("\n")]
    if len(kept) < len(lines):
        with open(path + ".tmp", "w") as f:
            f.writelines(kept)
        os.replace(path + ".tmp", path)
    return len(lines) - len(kept)


def per_class_accuracy(predictions: np.ndarray, labels: np.ndarray,
                       class_names: Sequence[str]) -> dict[str, float]:
    """Accuracy within each true class (recall); classes without examples are left out."""
    result = {}
    for index, name in enumerate(class_names):
        mask = labels == index
        if mask.any():
            result[name] = float(np.mean(predictions[mask] == index))
    return result


def classification_metrics(predictions: np.ndarray, losses: np.ndarray, labels: np.ndarray,
                           class_names: Sequence[str]) -> dict[str, float]:
    """Accuracy = correct / N over every example, balanced accuracy (the mean of the per-class
    accuracies, which an imbalanced test set cannot inflate), and the mean loss."""
    correct = int(np.sum(predictions == labels))
    per_class = per_class_accuracy(predictions, labels, class_names)
    return {
        "accuracy": correct / len(labels),
        "balanced_accuracy": float(np.mean(list(per_class.values()))),
        "loss": float(np.mean(losses)),
        "correct": correct,
        "examples": len(labels),
    }


def mean_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
    """Averages a list of per-step metric dicts fetched from device."""
    fetched = jax.device_get(history)
    return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}


class Progress:
    """A tqdm bar with images/s and ETA on a terminal; a periodic plain log line otherwise."""

    def __init__(self, total_steps: int, start_step: int, batch_size: int):
        self.total, self.batch_size = total_steps, batch_size
        self.bar = None
        if sys.stdout.isatty() and jax.process_index() == 0:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)
        self.last_step, self.last_time = start_step, time.perf_counter()

    def update(self, step: int, metrics: dict[str, float]) -> float:
        """Reports progress at ``step`` (after syncing); returns images/s since the last call."""
        now = time.perf_counter()
        rate = (step - self.last_step) * self.batch_size / max(now - self.last_time, 1e-9)
        eta = (self.total - step) * self.batch_size / max(rate, 1e-9)
        if self.bar is not None:
            self.bar.update(step - self.last_step)
            self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", img_s=f"{rate:,.0f}")
        else:
            log.info("step %d/%d  loss %.4f  acc %.4f  lr %.4g  %.0f img/s  ETA %s", step,
                     self.total, metrics["loss"], metrics["accuracy"], metrics["learning_rate"],
                     rate, _duration(eta))
        self.last_step, self.last_time = step, now
        return rate

    def pause(self) -> None:
        """Stop counting time (e.g. during evaluation)."""
        self.paused_at = time.perf_counter()

    def resume(self) -> None:
        self.last_time += time.perf_counter() - self.paused_at

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}"
