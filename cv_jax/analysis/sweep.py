"""Sweeps and ablations: each point of a grid of config overrides in its own workdir; a report.

    python -m cv_jax.analysis.sweep --sweep=experiments/optimizers.py[:full] [--parallel=N]
    [--dry_run] [--launcher=local|slurm [--slurm_partition=P --slurm_gpus_per_job=G ...]]

A definition file (``experiments/*.py``) has ``get_sweep(arg=None)`` returning a :class:`Sweep`:
a base config spec (as ``--config`` takes it), overrides common to every point, the points
(override dicts ``{dotted key: value}``, built with :func:`axis`, :func:`product` and
:func:`zip_`) and optionally seeds, each point then being run once per ``config.seed``. The text
after ``:`` in ``--sweep`` is ``arg`` (e.g. ``cpu`` / ``full`` sizes). :func:`ablation` builds
the sweep of a recipe and the recipe minus each of its ingredients.

Each run is ``python -m cv_jax.main --config=SPEC --workdir=DIR --config.a.b=v ...`` in a
subprocess (a crash stops only that run), or a SLURM job (:mod:`cv_jax.analysis.slurm`),
logging to ``DIR/log.txt``, in
``<root>/<sweep name>/<point>[/seed=<s>]``, a name made of the point's overrides. Every run's
overrides are checked against the loaded config (and ``validate``) before the first
starts. Finished runs are skipped; unfinished ones resume from their checkpoints. The report
(:mod:`cv_jax.analysis.report`) goes to ``<root>/<sweep name>/report/``.

The pseudo-key ``config_arg`` extends the config string instead of overriding a key, for what
only the config file can do (``axis("config_arg", ["model=lenet5", "model=resnet20"])`` builds
each model's own section and recipe).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections as mlc
from absl import app, flags
from absl import flags as absl_flags
from absl import logging as absl_logging
from ml_collections import config_flags

from cv_jax.analysis import lr_points, report, slurm
from cv_jax.analysis.report import freeze
from cv_jax.analysis.sweep_definition import (
    CONFIG_ARG,
    SEED,
    Point,
    Sweep,
    SweepError,
    check_key,
    extend_spec,
    flag_value,
    load_definition,
    named_points,
)
from cv_jax.config import lookup, validate
from cv_jax.training import runs as saved_runs
from cv_jax.training.results import read_results

# ----------------------------------------------------------------------------- building points


# ------------------------------------------------------------------------------- naming runs


# ---------------------------------------------------------------------------- planning runs


@dataclasses.dataclass
class Run:
    """One training run of a sweep: a point at a seed."""

    point: Point
    seed: int | None
    workdir: str
    spec: str  # the config spec with the point's config_arg
    overrides: dict[str, Any]  # dotted key -> value, common + point + seed
    config: mlc.ConfigDict | None = None  # as main will build it (set by plan())

    def flags(self) -> list[str]:
        return [f"--config.{k}={flag_value(v)}" for k, v in self.overrides.items()]

    def command(self) -> list[str]:
        return [sys.executable, "-m", "cv_jax.main", f"--config={self.spec}",
                f"--workdir={self.workdir}", *self.flags()]


def expand(sweep: Sweep, root: str) -> list[Run]:
    """Every (point, seed) run of the sweep with its workdir, spec and overrides."""
    runs = []
    for point in named_points(sweep):
        overrides = {**sweep.common, **point.overrides}
        spec = extend_spec(sweep.config, str(overrides.pop(CONFIG_ARG, "")))
        folder = os.path.join(root, sweep.name, point.name)
        if not sweep.seeds:
            runs.append(Run(point, None, folder, spec, overrides))
            continue
        if SEED in overrides:
            raise SweepError(f"sweep {sweep.name!r}: point {point.name!r} sets 'seed' and the "
                             "sweep lists seeds; set one or the other")
        for seed in sweep.seeds:
            runs.append(Run(point, seed, os.path.join(folder, f"seed={seed}"), spec,
                            {**overrides, SEED: seed}))
    return runs


def parse_config(spec: str, flags: Sequence[str]) -> mlc.ConfigDict:
    """The config ``python -m cv_jax.main --config=SPEC FLAGS...`` builds (same parser)."""
    argv = ["cv_jax.main", f"--config={spec}", *flags]
    values = absl_flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config", flag_values=values,
                                    lock_config=True, sys_argv=argv)
    with warnings.catch_warnings():  # config_flags loads the file with load_module()
        warnings.filterwarnings("ignore", "the load_module", DeprecationWarning)
        values(argv)
    return values.config




def resolve(run: Run, base: mlc.ConfigDict) -> mlc.ConfigDict:
    """The run's config, checked: every key exists, reads back as given, and validates."""
    for key in run.overrides:
        check_key(base, key)
    config = parse_config(run.spec, run.flags())
    for key, value in run.overrides.items():
        if not same_value(lookup(config, key), value):
            raise ValueError(f"--config.{key}={flag_value(value)} was read as "
                             f"{lookup(config, key)!r}, not {value!r}")
    validate(config)
    return config


def same_value(a: Any, b: Any) -> bool:
    """Equality with lists and tuples alike (JSON turns tuples into lists)."""
    return freeze(a) == freeze(b)


def plan(sweep: Sweep, root: str, where: str = "") -> list[Run]:
    """The sweep's runs with their configs; raises SweepError, naming the definition, the point
    and the problem, before anything runs."""
    runs = expand(sweep, root)
    bases: dict[str, mlc.ConfigDict] = {}
    for run in runs:
        context = f"{where or sweep.name}: point {run.point.name!r}"
        try:
            if run.spec not in bases:
                bases[run.spec] = parse_config(run.spec, [])
            run.config = resolve(run, bases[run.spec])
        except Exception as e:  # config files and config_flags raise many kinds
            raise SweepError(f"{context}: {error_text(e)}") from e
        check_workdir(run, context)
    return runs


def error_text(error: BaseException) -> str:
    """The message of an exception (KeyError's without its quotes)."""
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return str(text).strip() or type(error).__name__


def check_workdir(run: Run, context: str) -> None:
    """A workdir that already holds a run must hold this run's overrides (else its results would
    be reported under the wrong point)."""
    if not os.path.exists(os.path.join(run.workdir, "config.json")):
        return
    saved = saved_runs.read_config(run.workdir)
    for key, value in run.overrides.items():
        try:
            old = lookup(saved, key)
        except (KeyError, AttributeError):
            old = "(missing)"
        if not same_value(old, value):
            raise SweepError(
                f"{context}: {run.workdir} holds a run with {key}={old!r}, but this sweep sets "
                f"{value!r}; delete that folder, or rename the sweep (Sweep.name) to start afresh")


# ----------------------------------------------------------------------------- running


def is_finished(workdir: str) -> bool:
    """Whether the run in ``workdir`` wrote its results (it only does so at the end)."""
    return read_results(workdir) is not None


Runner = Callable[[Run], int]


def subprocess_runner(run: Run, env: Mapping[str, str] | None = None) -> int:
    """Runs ``run.command()``, appending its output to ``workdir/log.txt``; the exit code."""
    return slurm.start_logged(run.command(), run.workdir, env).wait()


def parallel_env(parallel: int) -> dict[str, str]:
    """The environment of each run: with several at once on one GPU, no run may grab most of
    its memory up front (JAX's default), unless the caller set that variable."""
    env = dict(os.environ)
    if parallel > 1:
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    return env


def execute(runs: Sequence[Run], runner: Runner, parallel: int = 1,
            echo: Callable[[str], None] = print) -> dict[str, int]:
    """Runs every unfinished run (``parallel`` at a time); ``{workdir: exit code}`` of those
    that ran. Finished runs are skipped."""
    todo = [r for r in runs if not is_finished(r.workdir)]
    echo(f"{len(runs) - len(todo)} of {len(runs)} runs already finished; running {len(todo)}"
         + (f", {parallel} at a time" if parallel > 1 and todo else ""))
    codes: dict[str, int] = {}

    def one(index: int, run: Run) -> None:
        state = "resuming" if os.path.isdir(os.path.join(run.workdir, "checkpoints")) else "start"
        echo(f"[{index}/{len(todo)}] {state}: {run.workdir}")
        start = time.perf_counter()
        codes[run.workdir] = code = runner(run)
        outcome = "finished" if code == 0 else f"FAILED (exit {code}; see {run.workdir}/log.txt)"
        echo(f"[{index}/{len(todo)}] {outcome} in {time.perf_counter() - start:.0f} s: "
             f"{run.workdir}")

    with concurrent.futures.ThreadPoolExecutor(max(1, parallel)) as pool:
        for future in [pool.submit(one, i, r) for i, r in enumerate(todo, 1)]:
            future.result()
    return codes


# ---------------------------------------------------------------------------- definitions


def report_groups(sweep: Sweep, runs: Sequence[Run]) -> list[tuple[str, list[str]]]:
    """``[(label, workdirs)]`` per point, the baseline first (the ablation table's rows)."""
    groups: dict[str, tuple[str, list[str]]] = {}
    for run in runs:
        groups.setdefault(run.point.name, (run.point.label, []))[1].append(run.workdir)
    order = sorted(groups, key=lambda name: name != sweep.baseline)
    return [groups[name] for name in order]


@dataclasses.dataclass
class Outcome:
    """What a sweep left: its report (None for a dry run) and the runs without results."""

    report: str | None
    unfinished: list[str]


LAUNCHERS = ("local", "slurm")


def run_sweep(spec: str, root: str = "runs/sweeps", parallel: int | None = None,
              dry_run: bool = False, runner: Runner | None = None,
              echo: Callable[[str], None] = print,
              finder: Callable[[Sequence[str], str], int] | None = None,
              launcher: str = "local", resources: Mapping[str, Any] | None = None,
              cluster: str = "slurm") -> Outcome:
    """Plans, runs and reports the sweep of definition ``spec``: first the LR range tests of
    its ``LRFind`` points (``cv_jax.analysis.lr_points``; ``finder`` runs one), then its runs
    (``runner``; by default local processes, or with ``launcher='slurm'`` jobs asking for the
    definition's ``resources`` updated by ``resources``, on ``cluster``). ``parallel`` runs at
    a time: 1 by default locally, every run with SLURM. Raises SweepError before anything runs
    when the definition is wrong."""
    if launcher not in LAUNCHERS:
        raise SweepError(f"--launcher={launcher!r} is not one of {list(LAUNCHERS)}")
    definition = load_definition(spec)
    if launcher == "slurm":
        slurm_resources = slurm.Resources.from_dict(
            {**definition.resources, **(resources or {})}, where=f"sweep {spec}")
    sweep = lr_points.resolve(definition, root, run_tests=False, echo=echo)
    runs = plan(sweep, root, where=spec)
    echo(describe(sweep, runs, spec, root))
    if dry_run:
        return Outcome(None, [r.workdir for r in runs if not is_finished(r.workdir)])
    if lr_points.needs_range_tests(definition):
        sweep = lr_points.resolve(definition, root, run_tests=True, echo=echo,
                                  finder=finder or lr_points.subprocess_finder)
        runs = plan(sweep, root, where=spec)
    if launcher == "slurm":
        parallel = parallel or len(runs)
        runner = runner or slurm.SlurmRunner(os.path.join(root, sweep.name, "slurm"),
                                             slurm_resources, cluster=cluster, echo=echo)
    parallel = parallel or 1
    if runner is None:
        runner = functools.partial(subprocess_runner, env=parallel_env(parallel))
    codes = execute(runs, runner, parallel, echo)
    path = report.write_report(
        [r.workdir for r in runs], os.path.join(root, sweep.name, "report"),
        title=f"{'Ablation' if sweep.baseline else 'Sweep'} {sweep.name}: {sweep.description}",
        command=f"python -m cv_jax.analysis.sweep --sweep={spec}", exit_codes=codes,
        configs={r.workdir: r.config for r in runs},
        ablation=report_groups(sweep, runs) if sweep.baseline else None)
    echo(f"report: {path}")
    return Outcome(path, [r.workdir for r in runs if not is_finished(r.workdir)])


def describe(sweep: Sweep, runs: Sequence[Run], spec: str, root: str) -> str:
    """The plan: one line per run with its state and overrides."""
    points = len({r.point.name for r in runs})
    seeds = f" x {len(sweep.seeds)} seed{'s' * (len(sweep.seeds) > 1)}" if sweep.seeds else ""
    lines = [f"{spec}: {points} points{seeds} = {len(runs)} runs of {sweep.config} in "
             f"{os.path.join(root, sweep.name)}"]
    for run in runs:
        state = ("finished" if is_finished(run.workdir) else
                 "resume" if os.path.isdir(os.path.join(run.workdir, "checkpoints")) else "new")
        lines.append(f"  {state:8s} {run.workdir}  {' '.join(run.flags()) or '(no overrides)'}")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)  # quiet orbax's INFO lines
    opts = flags.FLAGS
    try:
        resources = {key: value for key, flag in SLURM_FLAGS.items()
                     if (value := opts[flag].value) is not None}
        outcome = run_sweep(opts.sweep, opts.root, opts.parallel, opts.dry_run,
                            launcher=opts.launcher, resources=resources)
    except SweepError as e:
        sys.exit(f"error: {e}")
    if outcome.report is not None and outcome.unfinished:
        sys.exit(f"{len(outcome.unfinished)} run(s) did not finish (their logs: "
                 f"<workdir>/log.txt); see {outcome.report}")


# Resources field -> the flag that overrides it (None = as the definition or the default says).
SLURM_FLAGS = {"partition": "slurm_partition", "gpus_per_job": "slurm_gpus_per_job",
               "cpus_per_job": "slurm_cpus_per_job", "mem_gb": "slurm_mem_gb",
               "time_min": "slurm_time_min"}


def define_flags() -> None:
    flags.DEFINE_string("sweep", None, "Sweep definition file, optionally :arg "
                        "(experiments/optimizers.py:full).")
    flags.DEFINE_integer("parallel", None, "Runs at a time (each a separate process or job); "
                         "default 1 locally, all with --launcher=slurm.")
    flags.DEFINE_enum("launcher", "local", LAUNCHERS, "local: each run a process on this "
                      "machine; slurm: each run a SLURM job, submitted through submitit.")
    flags.DEFINE_string("slurm_partition", None, "SLURM partition of the jobs.")
    flags.DEFINE_integer("slurm_gpus_per_job", None, "GPUs per job (default 1).")
    flags.DEFINE_integer("slurm_cpus_per_job", None, "CPU cores per job (default 8).")
    flags.DEFINE_integer("slurm_mem_gb", None, "Memory per job in GB (default: the partition's).")
    flags.DEFINE_integer("slurm_time_min", None, "Time limit per job in minutes (default 240); "
                         "a job that reaches it saves, is requeued and resumes.")
    flags.DEFINE_boolean("dry_run", False, "List the runs and their workdirs; run nothing.")
    flags.DEFINE_string("root", "runs/sweeps", "Sweeps go to ROOT/<sweep name>/.")
    flags.mark_flags_as_required(["sweep"])


if __name__ == "__main__":
    define_flags()
    app.run(main)
