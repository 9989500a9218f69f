"""Orbax checkpoints of a run: keep the latest K and the best by an eval metric.

Each checkpoint holds the TrainState and a small JSON signature of the model (name,
classes, every parameter's shape), so a workdir is never restored into a different model;
with the streaming pipeline, also each process's Grain iterator state (``data``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from cv_jax.optim.chain import param_path
from cv_jax.training import checkpoint_integrity


class _NoMetricsNotice(logging.Filter):
    """Drops Orbax's warning at each save without eval metrics: periodic and preemption
    checkpoints have none on purpose (they never count as the best)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "did not provide metrics" not in record.getMessage()


logging.getLogger("absl").addFilter(_NoMetricsNotice())


def save_from_one_replica() -> None:
    """Has Orbax save a replicated jax.Array from one replica, as it does by default where
    $JAX_PLATFORMS names a GPU. Elsewhere it splits the array over its replicas
    ('replica-parallel'), slicing each replica's copy with a JAX op: a compilation per array
    shape and replica at a run's first save, in the middle of training on several devices.
    Orbax has no public switch for it, so its registered handler is copied with the switch off
    (if the private attribute is renamed, nothing changes and tests/training/test_compiles.py
    fails)."""
    handler = ocp.type_handlers.get_type_handler(jax.Array)
    if getattr(handler, "_use_replica_parallel", False):
        single = copy.copy(handler)
        single._use_replica_parallel = False
        ocp.type_handlers.register_type_handler(jax.Array, single, override=True)


def selection(config) -> tuple[str, str]:
    """``(metric, mode)`` that picks the best checkpoint (and that early stopping watches).

    ``early_stopping.monitor`` when set (mode 'auto': 'min' for a loss, else 'max'); otherwise
    validation accuracy when a validation split is carved from train, else test accuracy,
    of the EMA weights with ``training.best_by_ema``, in ``training.best_mode``.
    """
    monitor, mode = config.early_stopping.monitor, config.early_stopping.mode
    if monitor:
        return monitor, mode if mode != "auto" else ("min" if monitor.endswith("loss") else "max")
    held_out = config.dataset.validation_size or config.dataset.num_folds
    split = "validation" if held_out else "test"
    ema = "_ema" if config.training.best_by_ema else ""
    return f"{split}{ema}_accuracy", config.training.best_mode


class CheckpointMismatch(ValueError):
    """The workdir holds a checkpoint of another model or shape."""


class CheckpointWriteError(OSError):
    """The workdir or its checkpoints cannot be written (permissions, a full disk)."""


def prepare_workdir(workdir: str) -> None:
    """Creates ``workdir`` and checks that a file can be written in it."""
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.TemporaryFile(dir=workdir):
            pass
    except OSError as e:
        raise CheckpointWriteError(
            f"Cannot write to the workdir {os.path.abspath(workdir)}: {e.strerror or e}. Pass a "
            "--workdir that can be created and written (check its permissions and free space)."
        ) from e


def signature(model_config: dict, params: Any, class_names: tuple[str, ...],
              image_shape: tuple[int, ...]) -> dict:
    """JSON description of what a checkpoint holds and can be restored into."""
    shapes = jax.tree_util.tree_map_with_path(lambda p, x: (param_path(p), list(x.shape)), params)
    return {
        "model": model_config,
        "class_names": list(class_names),
        "image_shape": list(image_shape),
        "param_shapes": dict(jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple))),
    }


def first_mismatch(saved: dict, current: dict) -> str | None:
    """A sentence naming the first difference between two signatures, or None."""
    old_name, new_name = saved["model"].get("name"), current["model"].get("name")
    if old_name != new_name:
        return f"model {old_name!r} (this config: {new_name!r})"
    if saved.get("class_names") != current.get("class_names"):
        return f"classes {saved.get('class_names')} (this config: {current.get('class_names')})"
    old, new = saved["param_shapes"], current["param_shapes"]
    for path in sorted(set(old) | set(new)):
        if old.get(path) != new.get(path):
            return (f"parameter {path} with shape {old.get(path)} "
                    f"(this config: {new.get(path)})")
    return None


class Checkpoints:
    """A CheckpointManager over ``workdir/checkpoints``; every step it saves is sealed with a
    SHA-256 manifest (cv_jax.training.checkpoint_integrity).

    With ``resume=True`` (the run that trains in ``workdir``), damaged steps are first moved to
    ``checkpoints/damaged/`` and unfinished writes of an earlier process are removed.
    """

    def __init__(self, workdir: str, *, keep: int, best_metric: str, best_mode: str,
                 resume: bool = False):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        save_from_one_replica()
        self.best_metric = best_metric
        self._saving: int | None = None  # the step being written
        # Saved with every checkpoint when set: the streaming pipeline's position.
        self.data: grain.DatasetIterator | None = None
        if resume and jax.process_index() == 0 and os.path.isdir(self.directory):
            checkpoint_integrity.remove_unfinished(self.directory)
            checkpoint_integrity.set_aside_damaged(self.directory)
        if resume and jax.process_count() > 1:  # every process then lists the same steps
            multihost_utils.sync_global_devices("cv_jax: checkpoints checked")

        def metric(metrics: dict) -> float:
            return metrics[best_metric]

        options = ocp.CheckpointManagerOptions(
            best_fn=metric,
            best_mode=best_mode,
            preservation_policy=policies.AnyPreservationPolicy([
                policies.LatestN(n=keep),
                policies.BestN(get_metric_fn=metric, reverse=best_mode == "min", n=1,
                               keep_checkpoints_without_metrics=False),
            ]),
            create=True,
            async_options=ocp.AsyncOptions(post_finalization_callback=self._seal),
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    @classmethod
    def for_run(cls, workdir: str, config, resume: bool = False) -> Checkpoints:
        """The checkpoints of a run of ``config``: keep and best-by as the config says."""
        metric, mode = selection(config)
        return cls(workdir, keep=config.training.keep_checkpoints, best_metric=metric,
                   best_mode=mode, resume=resume)

    def _seal(self) -> None:
        """Called by Orbax's save thread once step ``_saving`` is written, just before its
        temporary directory is renamed to the step."""
        if jax.process_index() != 0:
            return
        final = os.path.join(self.directory, str(self._saving))
        temporary = final + ocp.path.step.TMP_DIR_SUFFIX
        checkpoint_integrity.seal(temporary if os.path.isdir(temporary) else final)

    @contextlib.contextmanager
    def _reporting_write_errors(self) -> Iterator[None]:
        try:
            yield
        except OSError as e:
            latest = self.latest_step()
            kept = "none yet" if latest is None else f"latest: step {latest}"
            raise CheckpointWriteError(
                f"Could not write checkpoint step {self._saving} to {self.directory}: {e}. "
                f"Earlier checkpoints are kept ({kept}); free disk space or fix the "
                "directory's permissions, then rerun with the same --workdir to resume."
            ) from e

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def save(self, step: int, state: Any, sig: dict, metrics: dict | None = None) -> None:
        """Saves asynchronously; ``wait()`` before reading it back. A failed write raises
        CheckpointWriteError here or at the next ``save``/``wait``."""
        with self._reporting_write_errors():
            self.manager.wait_until_finished()  # the previous step is sealed before this starts
            self._saving = step
            data = {} if self.data is None else {
                "data": grain.checkpoint.CheckpointSave(self.data)}
            self.manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                        signature=ocp.args.JsonSave(sig), **data),
                metrics=metrics,
            )

    def wait(self) -> None:
        with self._reporting_write_errors():
            self.manager.wait_until_finished()

    def signature(self, step: int) -> dict:
        return self.manager.restore(
            step, args=ocp.args.Composite(signature=ocp.args.JsonRestore())
        )["signature"]

    def restore(self, step: int, target: Any, sig: dict) -> Any:
        """Restores ``step`` into the structure and shardings of ``target``.

        Raises CheckpointMismatch, naming the first differing parameter, when the saved
        signature does not match ``sig``.
        """
        problem = first_mismatch(self.signature(step), sig)
        if problem:
            raise CheckpointMismatch(
                f"{self.directory} holds a checkpoint (step {step}) of {problem}. "
                "Use a new --workdir, or the config that wrote this one."
            )
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        )
        return restored["state"]

    def restore_data(self, step: int, iterator: grain.DatasetIterator) -> bool:
        """Sets ``iterator`` to the data state saved with ``step`` by this process (in a job
        of as many processes); False, leaving it as it is, where the checkpoint holds none
        (written by a resident run or by another number of processes)."""
        saved = os.path.join(self.directory, str(step), "data",
                             f"process_{jax.process_index()}-of-{jax.process_count()}.json")
        if not os.path.exists(saved):
            return False
        self.manager.restore(
            step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(iterator)))
        return True

    def close(self) -> None:
        with self._reporting_write_errors():
            self.manager.close()
