"""A markdown report (and plots) comparing runs from their workdirs.

    python -m cv_jax.analysis.report RUN_DIRS... [--out=runs/report] [--title=...]

A RUN_DIR that holds no run itself (no config.json, results.json, metrics.jsonl, log.txt or
checkpoints/) stands for every run below it, e.g. a whole sweep: ``runs/sweeps/optimizers``.

Rows are runs whose configs differ only in ``seed``; columns: the config keys that differ between
rows, test accuracy as mean ± sample std (ddof=1) over the row's finished runs with their number
n, best epoch, training time, images/s, parameters and (for runs with a checkpoint) forward
GFLOPs per image (cv_jax.analysis.flops), all means over the row. A run without
results.json is counted as failed (its log ends in a traceback, or a sweep saw a non-zero exit
code) or unfinished. The header states hardware, jax version, epochs, seeds and datasets; runs
on different datasets get a warning and a dataset column. Plots: training and eval curves,
learning-rate schedules, accuracy bars with error bars, accuracy against parameters and GFLOPs.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from cv_jax.analysis import flops
from cv_jax.runtime import cpu_defaults
from cv_jax.training import checkpoint, curves
from cv_jax.training.results import read_json, read_results

MISSING = "—"
# Never a column: the seed is what a row averages over; the others are bookkeeping.
IGNORED_KEYS = frozenset({"seed", "recipe_reason", "dataset.cache_dir"})
# Shown together in the dataset column (when runs differ in them), not as config columns.
DATASET_KEYS = ("dataset.name", "dataset.data_dir")
RUN_MARKERS = ("results.json", "config.json", "metrics.jsonl", "log.txt", "checkpoints")
STD_NOTE = "sample standard deviation (ddof=1)"


def freeze(value: Any) -> Any:
    """Lists (as JSON gives tuples back) -> tuples, recursively, so values compare and hash."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, Mapping):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    return value


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'a': {'b': [1, 2]}}`` -> ``{'a.b': (1, 2)}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = freeze(value)
    return flat


# ------------------------------------------------------------------------------ reading runs


@dataclasses.dataclass
class Record:
    """What one workdir holds."""

    workdir: str
    config: dict[str, Any]  # flattened; {} when unknown
    results: dict | None
    metrics: list[dict]
    status: str  # 'finished' | 'failed' | 'unfinished'
    note: str = ""  # why it failed
    class_names: tuple[str, ...] | None = None
    parameters: int | None = None
    gflops: float | None = None  # forward, per image (cv_jax.analysis.flops)

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    @property
    def dataset(self) -> tuple[Any, Any]:
        return tuple(self.config.get(k, MISSING) for k in DATASET_KEYS)


def checkpoint_signature(workdir: str) -> dict | None:
    """The latest checkpoint's signature (model, class names, parameter shapes), if any."""
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        return None
    ckpt = checkpoint.Checkpoints(workdir, keep=1, best_metric="test_accuracy", best_mode="max")
    try:
        step = ckpt.latest_step()
        return ckpt.signature(step) if step is not None else None
    finally:
        ckpt.close()


def last_error(workdir: str) -> str | None:
    """The exception line ending ``workdir/log.txt`` when the log holds a traceback."""
    path = os.path.join(workdir, "log.txt")
    if not os.path.exists(path):
        return None
    with open(path, errors="replace") as f:
        text = f.read()
    if "Traceback (most recent call last)" not in text:
        return None
    tail = text.split("Traceback (most recent call last)")[-1].strip().splitlines()
    return next((line.strip() for line in reversed(tail)
                 if line.strip() and not line.startswith(" ")), "a traceback")


def status_of(workdir: str, results: dict | None, exit_code: int | None) -> tuple[str, str]:
    """``(status, note)``: finished with results.json; else failed when the log ends in a
    traceback or the exit code was non-zero; else unfinished."""
    if results is not None:
        return "finished", ""
    error = last_error(workdir)
    if error is not None:
        return "failed", error
    if exit_code:
        return "failed", f"exit code {exit_code}"
    return "unfinished", "no results.json yet"


def as_tree(config: Any) -> dict:
    """A ConfigDict or mapping as nested plain dicts ({} for None)."""
    return config.to_dict() if hasattr(config, "to_dict") else dict(config or {})


def load_record(workdir: str, exit_code: int | None = None,
                config: Mapping[str, Any] | None = None) -> Record:
    """Reads a run; ``config`` stands in for a missing config.json (a run that failed early)."""
    results = read_results(workdir)
    saved = read_json(workdir, "config.json")
    tree = saved if saved is not None else as_tree(config)
    status, note = status_of(workdir, results, exit_code)
    signature = checkpoint_signature(workdir)
    parameters = (results or {}).get("parameters")
    if parameters is None and signature is not None:
        parameters = sum(int(np.prod(s)) for s in signature["param_shapes"].values())
    classes = tuple(signature["class_names"]) if signature is not None else None
    gflops = None
    if signature is not None and saved is not None:
        gflops = flops.run_gflops(workdir, signature)
    return Record(workdir, flatten(tree), results, curves.read_metrics(workdir), status, note,
                  classes, parameters, gflops)


def find_runs(paths: Sequence[str]) -> list[str]:
    """Run directories: each path that holds a run, else every run below it (in name order)."""
    found: list[str] = []
    for path in paths:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path} is not a directory; pass run workdirs (or folders "
                                    "of them, such as runs/sweeps/NAME)")
        below = list(_runs_below(path))
        if not below:
            raise FileNotFoundError(f"{path} holds no run (none of {', '.join(RUN_MARKERS)} "
                                    "in it or below it)")
        found += [p for p in below if p not in found]
    return found


def _runs_below(path: str):
    if any(os.path.exists(os.path.join(path, m)) for m in RUN_MARKERS):
        yield path
        return
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if entry.is_dir():
            yield from _runs_below(entry.path)


# ---------------------------------------------------------------------------------- grouping


@dataclasses.dataclass
class Group:
    """One table row: runs whose configs differ only in the seed."""

    label: str
    records: list[Record]

    @property
    def finished(self) -> list[Record]:
        return [r for r in self.records if r.status == "finished"]

    def accuracies(self) -> np.ndarray:
        """Test accuracies of the finished runs, in percent."""
        return np.array([100 * r.results["test_accuracy"] for r in self.finished])

    def mean(self) -> float | None:
        acc = self.accuracies()
        return float(acc.mean()) if len(acc) else None

    def std(self) -> float | None:
        """Sample standard deviation (ddof=1); None for fewer than 2 runs."""
        acc = self.accuracies()
        return float(acc.std(ddof=1)) if len(acc) > 1 else None

    def average(self, fn) -> float | None:
        """Mean of ``fn(results)`` over finished runs where it is not None."""
        values = [v for v in (fn(r.results) for r in self.finished) if v is not None]
        return float(np.mean(values)) if values else None


def diff_keys(records: Sequence[Record]) -> list[str]:
    """Config keys with more than one value among the runs that have them (seed and
    bookkeeping excluded); a key only some configs have (an older schema) does not count."""
    values: dict[str, set] = {}
    for record in records:
        for key, value in record.config.items():
            values.setdefault(key, set()).add(value)
    skip = IGNORED_KEYS | set(DATASET_KEYS)
    return sorted(k for k, v in values.items() if len(v) > 1 and k not in skip)


def group_records(records: Sequence[Record], keys: Sequence[str]) -> list[Group]:
    """Rows in order of first appearance: runs with equal ``keys`` values and dataset."""
    groups: dict[Any, list[Record]] = {}
    for record in records:
        key = ((tuple(record.config.get(k, MISSING) for k in keys), record.dataset)
               if record.config else record.workdir)
        groups.setdefault(key, []).append(record)
    return [Group(row_label(rows), rows) for rows in groups.values()]


def row_label(records: Sequence[Record]) -> str:
    """The workdir; for several, their folder when they are its seed=* subfolders (a sweep's
    layout), else ``folder/{a,b}``."""
    dirs = [os.path.normpath(r.workdir) for r in records]
    parents = {os.path.dirname(d) for d in dirs}
    names = [os.path.basename(d) for d in dirs]
    if len(dirs) == 1:
        return dirs[0]
    if len(parents) == 1 and all(n.startswith("seed") for n in names):
        return parents.pop()
    if len(parents) == 1:
        return os.path.join(parents.pop(), "{" + ",".join(names) + "}")
    return "{" + ",".join(dirs) + "}"


# -------------------------------------------------------------------------------- formatting


def fmt_value(value: Any) -> str:
    if value == MISSING:
        return MISSING
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "(" + ", ".join(fmt_value(v) for v in value) + ")"
    return repr(value) if value == "" else str(value)


def fmt_accuracy(group: Group) -> str:
    mean, std = group.mean(), group.std()
    if mean is None:
        return MISSING
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def fmt_number(value: float | None, spec: str) -> str:
    return MISSING if value is None else format(value, spec)


def best_epoch(results: dict) -> float | None:
    """The epoch of the best checkpoint: best_step / steps per epoch."""
    if results.get("best_step") is None or not results.get("steps") or not results.get("epochs"):
        return None
    return results["best_step"] / (results["steps"] / results["epochs"])


def row_status(group: Group) -> str:
    counts: dict[str, int] = {}
    for record in group.records:
        counts[record.status] = counts.get(record.status, 0) + 1
    if set(counts) == {"finished"}:
        return "ok"
    return ", ".join(f"{n} {status}" for status, n in counts.items())


def cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(cell(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]


def dataset_text(records: Sequence[Record]) -> str:
    """'cifar10 (located automatically), 10 classes' for the runs' dataset(s)."""
    name, data_dir = records[0].dataset
    classes = next((r.class_names for r in records if r.class_names), None)
    where = data_dir if data_dir not in ("", MISSING) else "located automatically"
    count = f", {len(classes)} classes" if classes else ""
    return f"{name} ({where}){count}"


def datasets_differ(records: Sequence[Record]) -> bool:
    """Different dataset.name / data_dir in the configs, or different class names."""
    configured = {r.dataset for r in records if r.config}
    classes = {r.class_names for r in records if r.class_names}
    return len(configured) > 1 or len(classes) > 1


def distinct(values) -> str:
    found = sorted({v for v in values if v is not None}, key=str)
    return ", ".join(fmt_value(v) for v in found) or "unknown (no run finished)"


# ----------------------------------------------------------------------------------- report


def header(records: Sequence[Record], groups: Sequence[Group], title: str,
           command: str) -> list[str]:
    """Title, provenance (hardware, jax, epochs, seeds, runs, dataset) and how to read it."""
    done = [r.results for r in records if r.results]
    counts = ", ".join(f"{sum(r.status == s for r in records)} {s}"
                       for s in ("finished", "failed", "unfinished")
                       if any(r.status == s for r in records))
    datasets = sorted({dataset_text([r]) for r in records if r.config}) or ["unknown"]
    return [
        f"# {title}", "",
        f"Generated {datetime.date.today().isoformat()} by `{command}`.", "",
        f"- **Runs**: {len(records)} ({counts}) in {len(groups)} rows; seeds: "
        f"{distinct(r.seed for r in records)}",
        f"- **Hardware**: {distinct(r.get('device') for r in done)}; "
        f"jax {distinct(r.get('jax_version') for r in done)}",
        f"- **Epochs**: {distinct(r.get('epochs') for r in done)} "
        f"(steps: {distinct(r.get('steps') for r in done)})",
        f"- **Dataset**: {'; '.join(datasets)}; "
        f"{distinct(r.get('test_examples') for r in done)} test images",
        f"- **Test accuracy** in %: mean ± {STD_NOTE} over the finished runs of a row, which "
        "differ only in seed (n of them). Best epoch, train time (training loop, without "
        "compilation) and images/s are means over the same runs.",
    ]


def warnings(records: Sequence[Record]) -> list[str]:
    lines = []
    if datasets_differ(records):
        kinds = sorted({dataset_text([r]) for r in records if r.config})
        classes = sorted({", ".join(r.class_names) for r in records if r.class_names})
        lines.append(f"> **Warning: these runs use different datasets** ({'; '.join(kinds)}"
                     + (f"; class names: {' / '.join(classes)}" if len(classes) > 1 else "")
                     + "). Their accuracies are not comparable; see the dataset column.")
    devices = {r.results.get("device") for r in records if r.results}
    if len(devices) > 1:
        lines.append(f"> **Warning: these runs ran on different hardware** "
                     f"({', '.join(sorted(map(str, devices)))}): times and images/s are not "
                     "comparable.")
    return lines


def results_table(groups: Sequence[Group], keys: Sequence[str], show_dataset: bool) -> list[str]:
    """One row per group; a GFLOPs column when some run has a checkpoint to count them from."""
    show_gflops = any(gflops_of(g) is not None for g in groups)
    head = ["run", *(f"`{k}`" for k in keys), *(["dataset"] if show_dataset else []),
            "test acc. (%)", "n", "best epoch", "train time (s)", "images/s", "parameters",
            *(["GFLOPs/image"] if show_gflops else []), "status"]
    rows = []
    for g in groups:
        first = g.records[0]
        rows.append([
            g.label, *(fmt_value(first.config.get(k, MISSING)) for k in keys),
            *([dataset_text(g.records)] if show_dataset else []),
            fmt_accuracy(g), len(g.finished),
            fmt_number(g.average(best_epoch), ".3g"),
            fmt_number(g.average(lambda r: r.get("train_time_s")), ",.1f"),
            fmt_number(g.average(lambda r: r.get("images_per_sec")), ",.0f"),
            fmt_number(parameters_of(g), ","),
            *([fmt_number(gflops_of(g), ".3g")] if show_gflops else []), row_status(g)])
    return table(head, rows)


def ablation_table(groups: Sequence[Group]) -> list[str]:
    """Each ablation against the first group (the full recipe): mean ± std and the change."""
    base = groups[0].mean()
    rows = []
    for g in groups:
        mean = g.mean()
        delta = MISSING if g is groups[0] or mean is None or base is None else \
            f"{mean - base:+.2f}"
        rows.append([g.label, fmt_accuracy(g), delta, len(g.finished), row_status(g)])
    return table(["ablation", "test acc. (%)", f"Δ vs {groups[0].label} (points)", "n",
                  "status"], rows)


def problems(records: Sequence[Record]) -> list[str]:
    lines = []
    for r in records:
        if r.status != "finished":
            log = os.path.join(r.workdir, "log.txt")
            lines.append(f"- `{r.workdir}`: **{r.status}**: {r.note}"
                         + (f" (log: `{log}`)" if os.path.exists(log) else ""))
    return ["## Runs without results", "", *lines, ""] if lines else []


def markdown(records: Sequence[Record], title: str, command: str,
             ablation: Sequence[tuple[str, Sequence[str]]] | None = None,
             plots: Sequence[str] = ()) -> str:
    keys = diff_keys(records)
    groups = group_records(records, keys)
    lines = header(records, groups, title, command) + [""]
    alerts = warnings(records)
    lines += [*alerts, ""] if alerts else []
    if ablation:
        lines += ["## Ablation", "", *ablation_table(ablation_groups(records, ablation)), ""]
    lines += ["## Results", "", *results_table(groups, keys, datasets_differ(records)), ""]
    lines += problems(records)
    if plots:
        lines += ["## Plots", ""] + [f"![{os.path.splitext(p)[0]}]({p})" for p in plots] + [""]
    return "\n".join(lines)


def ablation_groups(records: Sequence[Record],
                    ablation: Sequence[tuple[str, Sequence[str]]]) -> list[Group]:
    by_dir = {r.workdir: r for r in records}
    return [Group(label, [by_dir[d] for d in dirs]) for label, dirs in ablation]


# ------------------------------------------------------------------------------------ plots


def plot_names(labels: Sequence[str]) -> dict[str, str]:
    """Short legend names of the rows' labels: without a trailing ``seed=<s>``/``seed_<s>``
    folder (unless the seeds are what tells rows apart) and relative to the folder all rows
    share, e.g. ``runs/sweeps/lr/constant/seed=0`` -> ``constant``."""
    def without_seed(label: str) -> str:
        head, tail = os.path.split(label)
        return head if head and re.fullmatch(r"seed[=_]\d+", tail) else label

    names = [without_seed(label) for label in labels]
    if len(set(names)) < len(names):
        names = list(labels)
    if len(names) == 1:
        names = [os.path.basename(names[0]) or names[0]]
    else:
        try:
            common = os.path.commonpath(names)
        except ValueError:  # absolute and relative labels mixed
            common = ""
        relative = [os.path.relpath(n, common) if common else n for n in names]
        if "." not in relative:
            names = relative
    return dict(zip(labels, names, strict=True))


def write_plots(groups: Sequence[Group], out: str) -> list[str]:
    """curves.png, lr.png, accuracy.png, accuracy_vs_parameters.png and accuracy_vs_gflops.png
    (those with data)."""
    names = plot_names([g.label for g in groups])
    runs = {}  # one run per row (its first with metrics), so each row keeps one colour
    for g in groups:
        shown = next((r for r in g.records if r.metrics), None)
        if shown is not None:
            seed = f" (seed {shown.seed})" if len(g.records) > 1 else ""
            runs[names[g.label] + seed] = shown.metrics
    written = []
    if runs:
        written.append(curves.plot_curves(runs, os.path.join(out, "curves.png")))
        written.append(curves.plot_curves(runs, os.path.join(out, "lr.png"),
                                          panels=(("train", "learning_rate"),)))
    scored = [g for g in groups if g.mean() is not None]
    if scored:
        written.append(accuracy_bars(scored, names, os.path.join(out, "accuracy.png")))
    for size_of, name, label in ((parameters_of, "parameters", "parameters"),
                                 (gflops_of, "gflops", "GFLOPs per image (forward)")):
        sized = [g for g in scored if size_of(g)]
        if len({size_of(g) for g in sized}) > 1:  # one size for all says nothing
            written.append(accuracy_against(sized, names, size_of, label,
                                            os.path.join(out, f"accuracy_vs_{name}.png")))
    return [os.path.basename(p) for p in written]


def gflops_of(group: Group) -> float | None:
    """The group's forward GFLOPs per image (its runs share the model)."""
    return next((r.gflops for r in group.records if r.gflops is not None), None)


def parameters_of(group: Group) -> int | None:
    """The parameter count of a row's runs (the first known)."""
    return next((r.parameters for r in group.records if r.parameters is not None), None)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def accuracy_bars(groups: Sequence[Group], names: Mapping[str, str], path: str) -> str:
    """Horizontal bars of mean test accuracy, error bars one sample std."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.35 * len(groups)))
    y = np.arange(len(groups))
    ax.barh(y, [g.mean() for g in groups], xerr=[g.std() or 0.0 for g in groups], capsize=3,
            color="tab:blue", alpha=0.8)
    ax.set_yticks(y, [f"{names[g.label]} (n={len(g.finished)})" for g in groups], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"test accuracy (%), error bars: {STD_NOTE}")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def accuracy_against(groups: Sequence[Group], names: Mapping[str, str],
                     size_of: Callable[[Group], float], label: str, path: str) -> str:
    """Mean test accuracy (error bars: std over seeds) against a model size, log scale."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for g in groups:
        size = size_of(g)
        ax.errorbar(size, g.mean(), yerr=g.std() or 0.0, fmt="o", capsize=3)
        ax.annotate(names[g.label], (size, g.mean()), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


# -------------------------------------------------------------------------------------- entry


def write_report(workdirs: Sequence[str], out: str, title: str = "Runs", command: str = "",
                 exit_codes: Mapping[str, int] | None = None,
                 configs: Mapping[str, Any] | None = None,
                 ablation: Sequence[tuple[str, Sequence[str]]] | None = None) -> str:
    """Writes ``out/report.md`` and its plots; returns the report's path.

    ``exit_codes`` and ``configs`` (by workdir) come from a sweep: a non-zero exit code marks a
    run failed, and a config stands in for a config.json the run never wrote.
    """
    exit_codes, configs = exit_codes or {}, configs or {}
    records = [load_record(d, exit_codes.get(d), configs.get(d)) for d in workdirs]
    groups = group_records(records, diff_keys(records))
    plots = write_plots(groups, out)
    text = markdown(records, title, command or "python -m cv_jax.analysis.report", ablation, plots)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "report.md")
    with open(path, "w") as f:
        f.write(text + "\n")
    return path


def main(argv: Sequence[str]) -> None:
    from absl import app, flags
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # quiet orbax's INFO lines
    if len(argv) < 2:
        raise app.UsageError("pass the run directories to report on: "
                             "python -m cv_jax.analysis.report runs/a runs/b [--out=DIR]")
    try:
        workdirs = find_runs(argv[1:])
    except FileNotFoundError as e:
        sys.exit(f"error: {e}")
    command = "python -m cv_jax.analysis.report " + " ".join(sys.argv[1:])
    path = write_report(workdirs, flags.FLAGS.out, flags.FLAGS.title, command)
    with open(path) as f:
        print(f.read())
    print(f"report: {path}")


if __name__ == "__main__":
    cpu_defaults.apply()  # before JAX starts its backend
    from absl import app, flags

    flags.DEFINE_string("out", "runs/report", "Folder for report.md and the plots.")
    flags.DEFINE_string("title", "Runs", "The report's title.")
    app.run(main)
