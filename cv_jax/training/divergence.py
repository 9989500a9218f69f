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


def train_summary(history: list[dict], state: TrainState | None, step: int,
                  config: mlc.ConfigDict, ckpt: checkpoint.Checkpoints) -> dict[str, float]:
    """The mean of the per-step training metrics in ``history`` (the steps up to ``step``)
    over the steps that were applied; with ``training.nonfinite='skip'`` also the run's
    ``skipped_steps`` so far. The skip counters are the last step's (``steps.train_step``
    reports them), or else those in ``state``, the state after ``step`` (None: none).

    Raises TrainingDiverged at the first applied step whose loss or gradient norm is not
    finite, or once ``training.max_consecutive_skips`` steps in a row were skipped.
    """
    fetched = [dict(m) for m in jax.device_get(history)]
    guards = [{k: m.pop(k) for k in SKIP_METRICS if k in m} for m in fetched]
    skipped = [bool(g.get("skipped", False)) for g in guards]
    first = step - len(fetched) + 1
    for offset, (metrics, skip) in enumerate(zip(fetched, skipped, strict=True)):
        if not skip:
            check_finite(float(metrics["loss"]), "the training loss", first + offset, ckpt)
            check_finite(float(metrics["grad_norm"]), "the gradient norm (grad_norm)",
                         first + offset, ckpt)
    summary = mean_metrics([m for m, skip in zip(fetched, skipped, strict=True) if not skip]
                           or fetched)  # all skipped: their own non-finite values
    counters = guards[-1] if "skipped_steps" in guards[-1] else state_counters(state)
    if counters:
        summary["skipped_steps"] = int(counters["skipped_steps"])
        in_a_row, limit = int(counters["skipped_in_a_row"]), config.training.max_consecutive_skips
        if in_a_row >= limit:
            raise diverged(f"the last {in_a_row} steps up to step {step} had non-finite "
                           f"gradients and were skipped (config.training.max_consecutive_skips="
                           f"{limit})", ckpt)
    return summary


# A step's metrics with training.nonfinite='skip' (steps.train_step): whether it was skipped,
# and the skip counters after it.
SKIP_METRICS = ("skipped", "skipped_in_a_row", "skipped_steps")


def state_counters(state: TrainState | None) -> dict:
    """The skip counters in ``state``'s optimizer state (empty: it does not skip)."""
    guard = None if state is None else opt_state.nonfinite_guard(state.opt_state)
    if guard is None:
        return {}
    return {"skipped_in_a_row": guard.notfinite_count, "skipped_steps": guard.total_notfinite}
