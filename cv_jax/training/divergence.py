"""A diverging run: the error that stops it (naming the step, the metric and the last good
checkpoint), and the summary of its training steps that checks for it (with
``training.nonfinite='skip'``, the steps skipped so far)."""

from __future__ import annotations

import math

import jax
import ml_collections as mlc

from cv_jax.optim import opt_state
from cv_jax.training import checkpoint
from cv_jax.training.metrics import mean_metrics
from cv_jax.training.state import TrainState


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite."""


def diverged(problem: str, ckpt: checkpoint.Checkpoints) -> TrainingDiverged:
    """The error that stops a run: ``problem``, the last good checkpoint, and what to change."""
    last = ckpt.latest_step()
    where = f"step {last} in {ckpt.directory}" if last is not None else "none yet"
    return TrainingDiverged(
        f"{problem}; training stopped. Last good checkpoint: {where}. "
        "Lower config.optimizer.learning_rate, add warmup (config.schedule.warmup_epochs) "
        "or clipping (config.optimizer.grad_clip_norm)."
    )


def check_finite(value: float, what: str, step: int, ckpt: checkpoint.Checkpoints) -> None:
    if not math.isfinite(value):
        raise diverged(f"{what} is {value} at step {step}", ckpt)


def train_summary(history: list[dict], state: TrainState, step: int, config: mlc.ConfigDict,
                  ckpt: checkpoint.Checkpoints) -> dict[str, float]:
    """The mean of the per-step training metrics in ``history`` (the steps up to ``step``)
    over the steps that were applied; with ``training.nonfinite='skip'`` also the run's
    ``skipped_steps`` so far.

    Raises TrainingDiverged at the first applied step whose loss or gradient norm is not
    finite, or once ``training.max_consecutive_skips`` steps in a row were skipped.
    """
    fetched = jax.device_get(history)
    skipped = [bool(m.pop("skipped", False)) for m in fetched]
    first = step - len(fetched) + 1
    for offset, (metrics, skip) in enumerate(zip(fetched, skipped, strict=True)):
        if not skip:
            check_finite(float(metrics["loss"]), "the training loss", first + offset, ckpt)
            check_finite(float(metrics["grad_norm"]), "the gradient norm (grad_norm)",
                         first + offset, ckpt)
    summary = mean_metrics([m for m, skip in zip(fetched, skipped, strict=True) if not skip]
                           or fetched)  # all skipped: their own non-finite values
    guard = opt_state.nonfinite_guard(state.opt_state)
    if guard is not None:
        summary["skipped_steps"] = opt_state.skipped_steps(state.opt_state)
        in_a_row, limit = int(guard.notfinite_count), config.training.max_consecutive_skips
        if in_a_row >= limit:
            raise diverged(f"the last {in_a_row} steps up to step {step} had non-finite "
                           f"gradients and were skipped (config.training.max_consecutive_skips="
                           f"{limit})", ckpt)
    return summary
