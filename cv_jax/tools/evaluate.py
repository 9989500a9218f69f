"""Evaluate a trained run on any dataset:

    python -m cv_jax.tools.evaluate --workdir=runs/c10 --data=PATH [--split=test]
    [--checkpoint=best]
        [--tta_flip=true|false] [--tta_translate=PIXELS]

PATH is an ImageFolder tree or archive, a CIFAR python-batches directory, or 'tfds:NAME'.
The TTA flags override the run's ``eval.tta_flip`` / ``eval.tta_translate`` (the same weights,
evaluated with or without test-time augmentation).
Prints JSON: accuracy, examples, correct, loss, per-class accuracy.
"""

from __future__ import annotations

import json

from absl import app, flags, logging

from cv_jax.data.dataset import DataError
from cv_jax.data.sources import load_split
from cv_jax.optim import opt_state
from cv_jax.runtime import cpu_defaults
from cv_jax.training import runs, sharding
from cv_jax.training.evaluation import Evaluator, summarize
from cv_jax.training.metrics import per_class_accuracy
from cv_jax.training.steps import EvalSettings

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A run directory written by cv_jax.main.")
flags.DEFINE_string("data", None, "Dataset to evaluate on.")
flags.DEFINE_string("split", "test", "Split (folder) name inside --data.")
flags.DEFINE_enum("checkpoint", "latest", ["latest", "best"], "Which checkpoint to evaluate.")
flags.DEFINE_integer("batch_size", 0, "Evaluation batch size (0: the run's eval.batch_size).")
flags.DEFINE_boolean("tta_flip", None, "Average with mirror images (default: the run's).")
flags.DEFINE_integer("tta_translate", None, "Pixels of the translated TTA views, 0: none "
                     "(default: the run's).", lower_bound=0)


def evaluate_run(workdir: str, data: str, split: str = "test", which: str = "latest",
                 batch_size: int = 0, tta_flip: bool | None = None,
                 tta_translate: int | None = None) -> dict:
    """Accuracy of a run's checkpoint on ``split`` of ``data``; every example counted once.

    ``tta_flip`` / ``tta_translate`` override the run's evaluation TTA where not None."""
    run = runs.load_run(workdir, which)
    for key, value in (("tta_flip", tta_flip), ("tta_translate", tta_translate)):
        if value is not None:
            run.config.eval[key] = value
    image_size = tuple(run.signature["image_shape"][:2])
    dataset = load_split(data, split, image_size=image_size)
    if tuple(dataset.class_names) != run.class_names:
        raise DataError(
            f"{data} ({split}) has classes {list(dataset.class_names)} but the run in {workdir} "
            f"was trained on {list(run.class_names)}; evaluate on data with the same class folders"
        )
    mesh = sharding.make_mesh()
    size = batch_size or run.config.eval.batch_size
    size = -(-size // mesh.devices.size) * mesh.devices.size
    settings = EvalSettings.from_config(run.config)
    evaluator = Evaluator(dataset, size, settings, mesh)
    out = evaluator.predictions(opt_state.eval_state(run.state))  # schedule-free: averaged weights
    return summarize(out, dataset) | {
        "per_class_accuracy": per_class_accuracy(out["prediction"], dataset.labels,
                                                 dataset.class_names),
        "checkpoint_step": run.step,
    }


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    print(json.dumps(evaluate_run(FLAGS.workdir, FLAGS.data, FLAGS.split, FLAGS.checkpoint,
                                  FLAGS.batch_size, FLAGS.tta_flip, FLAGS.tta_translate),
                     indent=2))


if __name__ == "__main__":
    cpu_defaults.apply()  # before JAX starts its backend
    flags.mark_flags_as_required(["workdir", "data"])
    app.run(main)
