"""The `headline` recipe and airbench94 side by side, on the same data and machine.

    # cv_jax: the headline recipe in float32, one workdir per seed (a stopped seed resumes)
    python experiments/airbench94/side_by_side.py train --seeds=0,1,2 --root=runs/airbench94
    # each seed's final weights are also evaluated without TTA (seed_<k>/test_no_tta.json;
    # for runs trained before that step: side_by_side.py evaluate --seeds=... --root=...)
    # the table: cv_jax's results.json files and airbench94's printed logs (one file per seed,
    # named *seed<k>*.txt, in --airbench_logs)
    python experiments/airbench94/side_by_side.py report --root=runs/airbench94 \
        --airbench_logs=PATH --out=experiments/airbench94/RESULTS.md

How airbench94 is run for the comparison is in this folder's README.md.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
from absl import app, flags

from cv_jax.data import locate

flags.DEFINE_enum("command", None, ["train", "evaluate", "report"],
                  "What to do (or the first argument).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the cv_jax runs.")
flags.DEFINE_string("root", "runs/airbench94", "Folder of the cv_jax runs (seed_<k>/).")
flags.DEFINE_string("airbench_logs", "", "Folder of airbench94's logs, *seed<k>*.txt.")
flags.DEFINE_string("cifar10", "", "CIFAR-10 for the evaluation without TTA ('' = where "
                    "cv_jax.main finds it).")
flags.DEFINE_string("out", "", "Where to write the markdown table ('' = print it).")
FLAGS = flags.FLAGS

EPOCHS, BATCH, TRAIN_IMAGES = 9.9, 1024, 50_000
STEPS = math.ceil(TRAIN_IMAGES // BATCH * EPOCHS)  # 476, airbench94's total_train_steps
# airbench94 prints one row per epoch and a last row with epoch 'eval':
# | run | epoch | train_loss | train_acc | val_acc | tta_val_acc | total_time_seconds |
NO_TTA_FILE = "test_no_tta.json"
_ROW = re.compile(r"^\|\s*(\S*)\s*\|\s*(\S+)\s*\|\s*(\S+)\s*\|\s*(\S+)\s*\|\s*(\S*)\s*\|"
                  r"\s*(\S*)\s*\|\s*(\S+)\s*\|$")


def train(seeds: list[int], root: str, data: str) -> None:
    """Trains (or resumes) the headline recipe in float32 for each seed, one after another,
    with a checkpoint every epoch (48 steps), then evaluates its final weights without TTA."""
    for seed in seeds:
        workdir = os.path.join(root, f"seed_{seed}")
        subprocess.run([sys.executable, "-m", "cv_jax.main",
                        f"--config=configs/cifar10.py:headline,dtype=float32,seed={seed}",
                        f"--workdir={workdir}",
                        "--config.training.checkpoint_every_steps=48"], check=True)
        evaluate_without_tta(workdir, data)


def evaluate_without_tta(workdir: str, data: str) -> dict:
    """The run's final weights on the test split with one view per image (airbench94 prints
    this as the last epoch's val_acc), written to ``workdir/test_no_tta.json``."""
    out = subprocess.run([sys.executable, "-m", "cv_jax.tools.evaluate", f"--workdir={workdir}",
                          f"--data={data}", "--tta_flip=false", "--tta_translate=0"],
                         check=True, capture_output=True, text=True).stdout
    result = json.loads(out)
    kept = {k: result[k] for k in ("accuracy", "correct", "examples", "checkpoint_step")}
    with open(os.path.join(workdir, NO_TTA_FILE), "w") as f:
        json.dump(kept, f, indent=2)
    return kept


def airbench_result(path: str) -> dict:
    """Test accuracy (TTA and last epoch without), and timed seconds from an airbench94 log."""
    rows = [m.groups() for m in map(_ROW.match, open(path).read().splitlines()) if m]
    final = [r for r in rows if r[1] == "eval"]
    if not final:
        raise ValueError(f"{path}: no final 'eval' row: the run did not finish")
    epochs = [r for r in rows if r[1].isdigit()]
    return {"test_accuracy": float(final[-1][5]), "no_tta_accuracy": float(epochs[-1][4]),
            "seconds": float(final[-1][6])}


def cv_jax_result(workdir: str) -> dict:
    """Test accuracy (TTA, and without where evaluated) and training seconds of a cv_jax run."""
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    no_tta = None
    if os.path.exists(os.path.join(workdir, NO_TTA_FILE)):
        with open(os.path.join(workdir, NO_TTA_FILE)) as f:
            no_tta = json.load(f)["accuracy"]
    return {"test_accuracy": results["test_accuracy"], "no_tta_accuracy": no_tta,
            "seconds": results["train_time_s"], "steps": results["steps"]}


def _stats(values: list[float]) -> str:
    mean = float(np.mean(values))
    if len(values) < 2:
        return f"{mean:.2%} (n=1)"
    std = float(np.std(values, ddof=1))
    return f"{mean:.2%} ± {std:.2%} (n={len(values)}, standard error {std / len(values)**0.5:.2%})"


def report(root: str, airbench_logs: str) -> str:
    ours = {int(os.path.basename(p).split("_")[1]): cv_jax_result(p)
            for p in sorted(glob.glob(os.path.join(root, "seed_*")))
            if os.path.exists(os.path.join(p, "results.json"))}
    theirs = {}
    for path in sorted(glob.glob(os.path.join(airbench_logs, "*seed*.txt"))):
        seed = int(re.search(r"seed(\d+)", os.path.basename(path)).group(1))
        try:
            theirs[seed] = airbench_result(path)
        except ValueError:
            continue
    lines = ["| system | seed | test accuracy (TTA) | without TTA | timed s | "
             "training images/s |", "|---|---|---|---|---|---|"]
    for name, runs in (("cv_jax headline", ours), ("airbench94", theirs)):
        for seed, r in sorted(runs.items()):
            rate = STEPS * BATCH / r["seconds"]
            plain = "" if r["no_tta_accuracy"] is None else f"{r['no_tta_accuracy']:.2%}"
            lines.append(f"| {name} | {seed} | {r['test_accuracy']:.2%} | {plain} | "
                         f"{r['seconds']:.0f} | {rate:.0f} |")
    lines.append("")
    for name, runs in (("cv_jax headline", ours), ("airbench94", theirs)):
        if runs:
            lines.append(f"- {name}: {_stats([r['test_accuracy'] for r in runs.values()])}")
            plain = [r for r in runs.values() if r["no_tta_accuracy"] is not None]
            if plain:
                gains = [r["test_accuracy"] - r["no_tta_accuracy"] for r in plain]
                lines.append(f"  - without TTA: "
                             f"{_stats([r['no_tta_accuracy'] for r in plain])}; "
                             f"TTA adds {np.mean(gains):+.2%} on average")
    if len(ours) > 1 and len(theirs) > 1:
        accuracies = [[r["test_accuracy"] for r in runs.values()] for runs in (ours, theirs)]
        lines.append(f"- {_difference(*accuracies)}")
    return "\n".join(lines)


def _difference(ours: list[float], theirs: list[float]) -> str:
    """cv_jax's mean minus airbench94's, against airbench's standard error (the issue's
    criterion: a shortfall under it is a tie) and the difference's own standard error."""
    errors = [np.std(v, ddof=1) / len(v) ** 0.5 for v in (ours, theirs)]
    gap = float(np.mean(ours) - np.mean(theirs))
    verdict = "at or above airbench94's mean" if gap >= 0 else (
        "a tie (short by less than airbench94's standard error)" if -gap < errors[1] else
        "short by more than airbench94's standard error")
    return (f"difference of the means (cv_jax - airbench94): {gap:+.2%}; airbench94's "
            f"standard error {errors[1]:.2%}, the difference's "
            f"{float(np.hypot(*errors)):.2%}: {verdict}")


def main(argv: list[str]) -> None:
    command = FLAGS.command or (argv[1] if len(argv) > 1 else None)
    if command in ("train", "evaluate"):  # the report needs no data
        data = FLAGS.cifar10 or locate.find_dataset("cifar10", None)
    if command == "train":
        train([int(s) for s in FLAGS.seeds], FLAGS.root, data)
    elif command == "evaluate":  # finished runs: only the evaluation without TTA
        for seed in FLAGS.seeds:
            print(seed, evaluate_without_tta(os.path.join(FLAGS.root, f"seed_{seed}"), data))
    elif command == "report":
        text = report(FLAGS.root, FLAGS.airbench_logs)
        if FLAGS.out:
            with open(FLAGS.out, "w") as f:
                f.write(text + "\n")
        print(text)
    else:
        raise app.UsageError("say train, evaluate or report")


if __name__ == "__main__":
    app.run(main)
