"""Top-k class predictions of a trained run for image files and folders:

    python -m cv_jax.tools.predict --workdir=runs/r20 IMAGE_OR_DIR... [--top_k=5] [--json]
        [--checkpoint=best|latest] [--weights=raw|ema]

Images of any size are decoded and resized as the run's data loader does (RGB, grayscale and
RGBA converted; one grey channel for a run trained on one, e.g. on MNIST IDX files). A folder
stands for every image file below it, in sorted order. Files that cannot be decoded are named
on stderr and the rest still predicted; the exit status is then 1.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

import numpy as np
from absl import app, flags, logging

from cv_jax.data.dataset import DataError
from cv_jax.data.sources import list_images
from cv_jax.inference import LoadedModel, load
from cv_jax.runtime import cpu_defaults

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command-line flags, defined only when run as a program (other CLIs of the package
    define flags of the same names)."""
    flags.DEFINE_string("workdir", None, "A run directory written by cv_jax.main.")
    flags.DEFINE_integer("top_k", 5, "Classes shown per image (at most the number of classes).",
                         lower_bound=1)
    flags.DEFINE_alias("top-k", "top_k")
    flags.DEFINE_bool("json", False,
                      "Print a JSON list of {file, top_k: [{class, probability}]}.")
    flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which checkpoint to use.")
    flags.DEFINE_enum("weights", "raw", ["raw", "ema"], "Raw weights or their moving average.")
    flags.DEFINE_integer("batch_size", 0,
                         "Images per forward pass (0: the run's eval.batch_size).")


def expand(paths: Sequence[str]) -> tuple[list[str], list[str]]:
    """The files named by ``paths`` (a folder: every image file below it) and an error for
    each missing path and each folder that holds no image file."""
    files, errors = [], []
    for path in paths:
        if not os.path.exists(path):
            errors.append(f"{path} does not exist")
        elif not os.path.isdir(path):
            files.append(path)
        elif images := list_images(path):
            files.extend(images)
        else:
            errors.append(f"{path} holds no image files")
    return files, errors


def predict_paths(model: LoadedModel, files: Sequence[str],
                  k: int) -> tuple[list[dict], list[str]]:
    """``{file, top_k}`` for each decodable file and an error for each other one; files are
    decoded and predicted one batch at a time."""
    results, errors = [], []
    for start in range(0, len(files), model.batch_size):
        images, names = [], []
        for path in files[start:start + model.batch_size]:
            try:
                images.append(model.read_images([path])[0])
                names.append(path)
            except DataError as e:
                errors.append(str(e))
        if not names:
            continue
        ranked = model.top_k(model.predict(np.stack(images)), k)
        results.extend(
            {"file": name, "top_k": [{"class": c, "probability": p} for c, p in top]}
            for name, top in zip(names, ranked, strict=True))
    return results, errors


def format_text(results: Sequence[dict]) -> str:
    """One block per file: its path, then one ``probability  class`` line per class."""
    lines = []
    for result in results:
        lines.append(result["file"])
        lines.extend(f"  {t['probability']:.4f}  {t['class']}" for t in result["top_k"])
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    paths = argv[1:]
    if not paths:
        raise app.UsageError("give one or more image files or folders after the flags")
    logging.set_verbosity(logging.WARNING)
    try:
        model = load(FLAGS.workdir, FLAGS.checkpoint, FLAGS.weights, FLAGS.batch_size)
    except (FileNotFoundError, ValueError) as e:  # no run, no checkpoint, no EMA, mismatch
        print(f"error: {e}", file=sys.stderr)
        return 2
    files, missing = expand(paths)
    results, bad = predict_paths(model, files, FLAGS.top_k)
    if FLAGS.json:
        print(json.dumps(results, indent=2))
    elif results:
        print(format_text(results))
    for error in missing + bad:
        print(f"error: {error}", file=sys.stderr)
    return 1 if missing or bad else 0


if __name__ == "__main__":
    cpu_defaults.apply()  # before JAX starts its backend
    define_flags()
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
