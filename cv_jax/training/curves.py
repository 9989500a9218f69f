"""A run's logged metrics (workdir/metrics.jsonl) and plots of its training curves."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence

import numpy as np


def jsonl_records(path: str) -> Iterator[tuple[str, dict]]:
    """``(line, record)`` for each JSON line of ``path``, blank lines left out. A last line cut
    short by a crash is skipped; an unreadable line elsewhere raises ValueError naming it."""
    with open(path) as f:
        lines = f.readlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                return
            raise ValueError(f"{path} line {number} is not JSON: {line[:80]!r}; fix or remove "
                             "that line") from None
        yield line, record


def read_metrics(workdir: str, up_to_step: int | None = None) -> list[dict]:
    """The records of ``workdir/metrics.jsonl`` in step order, one per (split, step).

    A resumed run logs again the steps after its last checkpoint; the later record of a
    (split, step) pair wins. ``up_to_step`` drops records logged after that step.
    """
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    latest: dict[tuple[str, int], dict] = {}
    for _, record in jsonl_records(path):
        if up_to_step is None or record["step"] <= up_to_step:
            latest[(record["split"], record["step"])] = record
    return sorted(latest.values(), key=lambda r: r["step"])


def series(records: Sequence[dict], split: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of one metric of one split (records without it are skipped)."""
    rows = [(r["step"], r[metric]) for r in records if r["split"] == split and metric in r]
    steps, values = zip(*rows, strict=True) if rows else ((), ())
    return np.asarray(steps), np.asarray(values, dtype=float)


def plot_curves(runs: Mapping[str, Sequence[dict]], path: str,
                panels: Sequence[tuple[str, str]] = (("train", "loss"), ("test", "loss"),
                                                     ("train", "accuracy"),
                                                     ("test", "accuracy"),
                                                     ("train", "learning_rate"))) -> str:
    """One figure with a panel per ``(split, metric)``, a line per run; returns ``path``.

    The x axis is the epoch where records carry one (train records do), else the step.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for ax, (split, metric) in zip(axes.flat, panels, strict=False):
        for label, records in runs.items():
            steps, values = series(records, split, metric)
            if len(steps):
                ax.plot(steps_to_epochs(records, steps), values, label=label)
        ax.set_title(f"{split} {metric}")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if len(runs) > 1 and handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8)
        fig.tight_layout(rect=(0, 0.06 + 0.03 * (len(labels) // 4), 1, 1))
    else:
        fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def steps_to_epochs(records: Sequence[dict], steps: np.ndarray) -> np.ndarray:
    """Epochs of ``steps``, from the step/epoch ratio of the train records (steps if none)."""
    for r in records:
        if r.get("epoch"):
            return steps * (r["epoch"] / r["step"])
    return steps.astype(float)
