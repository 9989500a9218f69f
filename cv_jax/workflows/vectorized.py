"""Several seeds, and hyper-parameters that keep the shapes, of one config trained as one
program: N models, one jitted step, one stream of batches.

    python -m cv_jax.workflows.vectorized --config=configs/cifar10.py:cpu --workdir=runs/seeds \\
        --seeds=0,1,2,3 [--vary=optimizer.learning_rate=0.05,0.1 ...] [--mode=vmap|unroll] \\
        [--bootstrap]

The members (``cv_jax.workflows.members``) are every seed crossed with every combination of the
``--vary`` values. They share the stream of batches (ordered by ``config.data_seed``, or by
``config.seed`` when that is -1) and every setting but the seed and the varied keys. Each member
has its own initialisation and augmentation/dropout keys (``setup.seed_keys``). Their states are
stacked on a leading member axis, replicated over the mesh; the batch is split on the mesh's
'data' axis exactly as in a single run, and one jitted step runs the single-run step for every
member: vmapped over the member axis (the batch is shared, not mapped; varied values are traced),
or with ``mode='unroll'`` as one copy per member. A member is ``train.train_and_evaluate`` of
its config (its seed and values, the same ``data_seed``), up to the order of XLA's
floating-point sums (tests/workflows/test_vectorized.py checks it).

vmap pays off where one run leaves an accelerator idle (small models, small batches). On CPU,
XLA lowers a vmapped convolution to a grouped one, which is many times slower than separate
convolutions: use ``unroll`` there (or separate runs); benchmarks/vectorized_seeds.py measures.

Each member is written as a complete run in ``workdir/seed_<s>/`` (with varied keys in
``workdir/<key>=<value>,.../seed_<s>/``): config.json with its seed, values and the shared
data_seed, metrics.jsonl, tensorboard/, checkpoints/, results.json. So ``cv_jax.tools.evaluate``,
``cv_jax.training.runs``, ``cv_jax.training.curves`` and ``cv_jax.analysis.report`` read it as if
it had been trained alone.
The members are trained by a single run's loop and hooks (``cv_jax.training.hooks``), each
reporting for itself: train records, evaluations, reduce-on-plateau and checkpoints at a single
run's steps, and SIGTERM or SIGINT stop the run with a checkpoint. Rerunning the command resumes
every member from their latest common checkpoint, and a finished run only reports. Early
stopping (a per-run decision) is not supported.

With ``--bootstrap`` (bagged ensembles: ``cv_jax.workflows.ensemble --vectorized=vmap``) each member
trains on its own bootstrap sample of the training set, drawn with its seed
(``dataset.resample_seed`` = seed, ``pipeline.resample_indices``): the full training set goes
to the devices once, and member i's batch is the shared permutation's slice mapped through its
sample's indices, so it equals the separate run with that ``resample_seed`` and ``data_seed``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from cv_jax.config import ConfigError, validate
from cv_jax.data import pipeline
from cv_jax.data.dataset import ArrayDataset
from cv_jax.runtime import cpu_defaults
from cv_jax.training import checkpoint, datasets, evaluation, hooks, setup, sharding, steps
from cv_jax.training.clock import Clock
from cv_jax.training.metrics import MetricWriter
from cv_jax.training.plan import Plan
from cv_jax.training.results import (
    is_finished,
    read_results,
    results_record,
    save_config,
    write_results,
)
from cv_jax.training.state import TrainState
from cv_jax.workflows.members import (
    MODES,
    make_vectorized_step,
    member,
    member_config,
    member_dir,
    member_overrides,
    parse_seeds,
    parse_vary,
)

log = logging.getLogger("cv_jax")


def stack(trees: Sequence[Any], mesh: jax.sharding.Mesh) -> Any:
    """Stacks same-shaped pytrees on a new leading (member) axis, replicated over ``mesh``.

    The tree structure (with its static fields, e.g. ``apply_fn``) is the first tree's. Leaves
    get strong dtypes (a fresh state's step is weakly typed, a restored one's is not), so a fresh
    and a resumed run compile the same step.
    """
    treedef = jax.tree.structure(trees[0])
    leaves = [jnp.stack(column).astype(column[0].dtype)
              for column in zip(*map(jax.tree.leaves, trees), strict=True)]
    return jax.device_put(jax.tree.unflatten(treedef, leaves), sharding.replicated(mesh))


def check_same_shapes(names: Sequence[str], states: Sequence[Any]) -> None:
    """Members can only be stacked when their states have one structure and shape: a varied
    key that changes them (a model width, a switched-off part) is refused, naming the member."""
    def layout(state):  # leaf paths and shapes (the static fields, e.g. tx, may differ)
        leaves = jax.tree_util.tree_flatten_with_path(state)[0]
        return [(jax.tree_util.keystr(path), jnp.shape(x)) for path, x in leaves]

    first = layout(states[0])
    for name, state in zip(names[1:], states[1:], strict=True):
        if layout(state) != first:
            raise ConfigError(
                f"{name} has parameters or optimizer state of other shapes than {names[0]}: a "
                "varied key changes the shapes, so those members need separate runs")


def member_getter(mesh: jax.sharding.Mesh):
    """``take(stacked, i)``: member ``i`` of a stacked pytree, replicated like a single run's."""
    return jax.jit(member, out_shardings=sharding.replicated(mesh))


def build_members(configs: Sequence[mlc.ConfigDict], data: ArrayDataset,
                  settings: steps.TrainSettings, tx, mesh: jax.sharding.Mesh,
                  orders: np.ndarray | None = None, clock: Clock | None = None
                  ) -> list[TrainState]:
    """A fresh state per member config (each with its own seed), as ``setup.build_state``;
    with ``orders`` ([members, n] indices) member i starts from its own sample of ``data``
    (a data-dependent init sees that sample, as in its separate run)."""
    samples = [data] * len(configs) if orders is None else [pipeline.take(data, o) for o in orders]
    return [setup.build_state(c, d, settings, tx, mesh, clock)
            for c, d in zip(configs, samples, strict=True)]


def without_resampling(config: mlc.ConfigDict) -> mlc.ConfigDict:
    """``config`` reading the whole training set (the one bootstrap samples are drawn from)."""
    base = config.copy_and_resolve_references()
    base.dataset.resample_seed = -1
    return base


def through_samples(permute, orders: np.ndarray, mesh: jax.sharding.Mesh):
    """``epoch -> [members, n]``: the shared permutation of that epoch mapped through each
    member's sample (``orders``), i.e. indices into the whole training set."""
    samples = jax.device_put(orders, sharding.replicated(mesh))
    mapped = jax.jit(lambda s, p: s[:, p], out_shardings=sharding.replicated(mesh))
    return lambda epoch: mapped(samples, permute(epoch))


def bootstrap_orders(members: Sequence[Member], n: int) -> np.ndarray:
    """[members, n]: each member's bootstrap sample of n examples, drawn with its seed."""
    return np.stack([pipeline.resample_indices(n, m.seed) for m in members]).astype(np.int32)


def per_member(history: list[dict], count: int) -> list[list[dict]]:
    """Per-step metrics of shape [members] -> each member's per-step metrics."""
    fetched = jax.device_get(history)
    return [[{k: v[i] for k, v in m.items()} for m in fetched] for i in range(count)]


@dataclasses.dataclass
class Member:
    """One member of the vectorised run (a seed, with its values of the varied keys): its
    config and its run directory's writers."""

    seed: int
    overrides: dict[str, Any]
    config: mlc.ConfigDict
    workdir: str
    ckpt: checkpoint.Checkpoints
    writer: MetricWriter | None = None

    @classmethod
    def create(cls, config: mlc.ConfigDict, workdir: str, seed: int,
               overrides: dict[str, Any] | None = None, bootstrap: bool = False) -> Member:
        overrides = dict(overrides or {})
        sample = {"dataset.resample_seed": seed} if bootstrap else {}
        mconfig = member_config(config, seed, {**overrides, **sample})
        directory = member_dir(workdir, seed, overrides)
        os.makedirs(directory, exist_ok=True)
        return cls(seed, overrides, mconfig, directory,
                   checkpoint.Checkpoints.for_run(directory, mconfig))

    @property
    def name(self) -> str:
        values = ", ".join(f"{k}={v}" for k, v in self.overrides.items())
        return f"seed {self.seed}" + (f" ({values})" if values else "")

    def close(self) -> None:
        self.ckpt.wait()
        if self.writer is not None:
            self.writer.close()
        self.ckpt.close()


def check_supported(config: mlc.ConfigDict, mode: str, bootstrap: bool = False) -> None:
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r}: use one of {MODES}")
    if config.early_stopping.patience:
        raise ConfigError(
            "config.early_stopping.patience > 0: early stopping decides per run and is not "
            "supported by the vectorised run; train the seeds separately (cv_jax.main)")
    if config.dataset.pipeline != "resident":
        raise ConfigError(
            f"config.dataset.pipeline={config.dataset.pipeline!r}: the vectorised run trains "
            "its members from the resident training set; set config.dataset.pipeline="
            "'resident', or train the seeds separately (cv_jax.main)")
    if not bootstrap:
        return
    d = config.dataset
    if d.resample_seed >= 0 or d.resample_weights:
        raise ConfigError(
            f"config.dataset.resample_seed={d.resample_seed}, resample_weights="
            f"{d.resample_weights!r}: bootstrap members draw their samples with their own "
            "seeds; leave resample_seed at -1 and resample_weights at ''")
    if d.normalization == "featurewise" or config.loss.class_weights == "balanced":
        raise ConfigError(
            "bootstrap members with dataset.normalization='featurewise' or "
            "loss.class_weights='balanced' would each need statistics of their own sample, "
            "which one program does not compute; use 'given' statistics and explicit class "
            "weights, or separate runs (cv_jax.workflows.ensemble without --vectorized)")


def resume_step(members: Sequence[Member]) -> int | None:
    """The latest step every member has a checkpoint of (None: start afresh)."""
    latest = [m.ckpt.latest_step() for m in members]
    return None if None in latest else min(latest)


def initial_state(members: Sequence[Member], data: ArrayDataset, settings: steps.TrainSettings,
                  tx, plan: Plan, mesh: jax.sharding.Mesh,
                  orders: np.ndarray | None = None,
                  clock: Clock | None = None) -> tuple[TrainState, dict]:
    """The stacked state of the members (fresh, or restored from their latest common
    checkpoint) and the model signature of their checkpoints; their data-dependent inits on
    ``clock``."""
    states = build_members([m.config for m in members], data, settings, tx, mesh, orders,
                           clock)
    check_same_shapes([m.name for m in members], states)
    sig = checkpoint.signature(members[0].config.model.to_dict(), states[0].params,
                               data.class_names, data.images.shape[1:])
    start = resume_step(members)
    if start is not None:
        states = [m.ckpt.restore(start, s, sig) for m, s in zip(members, states, strict=True)]
        log.info("Resuming %d members from step %d of %d.", len(members), start,
                 plan.total_steps)
    return stack(states, mesh), sig


def train_seeds(config: mlc.ConfigDict, workdir: str, seeds: Sequence[int],
                max_steps_this_run: int | None = None, mode: str = "vmap",
                vary: Mapping[str, Sequence] | None = None,
                bootstrap: bool = False) -> list[dict]:
    """Trains one member per seed of ``config`` and combination of the ``vary`` values
    (dotted key -> values, see ``cv_jax.workflows.members``) in one program (``mode``: see
    ``members.make_vectorized_step``); with ``bootstrap`` each on its own bootstrap sample
    of the training set. Returns the members' results, seed by seed within each combination
    (each also written to its ``members.member_dir``/results.json)."""
    seeds = parse_seeds(seeds)
    validate(config)
    check_supported(config, mode, bootstrap)
    vary = dict(vary or {})
    mesh = setup.make_mesh(config)
    members = [Member.create(config, workdir, s, o, bootstrap)
               for o in member_overrides(vary) for s in seeds]
    lead = members[0].config
    try:
        data = datasets.load_datasets(without_resampling(lead))
        plan = Plan.from_config(lead, len(data.train))
        previous = [read_results(m.workdir) for m in members]
        if all(is_finished(p, m.ckpt.latest_step(), plan)
               for p, m in zip(previous, members, strict=True)):
            log.info("Vectorised run in %s is finished.", workdir)
            return previous
        _, tx, settings = setup.optimizer_and_settings(lead, data.train, plan)
        orders = bootstrap_orders(members, len(data.train)) if bootstrap else None
        clock = Clock()  # the members' timed_s: all their inits and the loop
        state, sig = initial_state(members, data.train, settings, tx, plan, mesh, orders, clock)
        for m in members:
            save_config(m.config, m.workdir)
            m.writer = MetricWriter(m.workdir)
        log.info("%d members (seeds %s%s): %d train / %d test examples; %d steps (%d per "
                 "epoch) on %s.", len(members), list(seeds),
                 "".join(f", {k} {list(v)}" for k, v in vary.items()),
                 len(data.train), len(data.test), plan.total_steps,
                 plan.steps_per_epoch, sharding.describe_devices(mesh))
        def make_step(steps_per_call: int):
            return make_vectorized_step([m.config for m in members], list(vary), data.train,
                                        plan, mesh, mode, own_orders=orders is not None,
                                        steps_per_call=steps_per_call)

        program = setup.device_program(lead, data.train, plan, mesh, make_step)
        if orders is not None:
            program = dataclasses.replace(
                program, permute=through_samples(program.permute, orders, mesh))
        take = member_getter(mesh)
        compiled = setup.compile_program(program, state,
                                         evaluation.make_evaluators(lead, data, mesh),
                                         eval_state=take(state, 0))
        return _train(lead, members, plan, compiled, take, state, sig, mesh, max_steps_this_run,
                      clock)
    finally:
        for m in members:
            m.close()


def _train(config: mlc.ConfigDict, members: list[Member], plan: Plan, compiled: setup.Compiled,
           take, state: TrainState, sig: dict, mesh: jax.sharding.Mesh,
           max_steps_this_run: int | None, clock: Clock | None = None) -> list[dict]:
    """The training of ``train_seeds`` from a stacked state: the loop with a run's hooks for
    every member (``take(state, i)``: member i's state), then each member's results."""
    runs = hooks.Runs([hooks.Output(m.config, m.ckpt, m.writer, m.name) for m in members],
                      take=take, stack=lambda states: stack(states, mesh),
                      split=lambda history: per_member(history, len(members)))
    trained = hooks.train_runs(compiled.program, state, int(state.step[0]), config, plan, runs,
                               compiled.evaluators, sig, max_steps_this_run, clock=clock)
    step, last_eval = trained.loop.step, trained.hooks.evaluate.last
    if step < plan.total_steps:
        log.info("Stopped at step %d of %d; rerun with the same workdir to continue.", step,
                 plan.total_steps)
        return [{"steps": step, "finished": False, **e} for e in last_eval]
    timing = trained.timing(compiled.compile_time)
    together = {"vectorized_seeds": sorted({m.seed for m in members}),
                "vectorized_vary": {k: sorted({m.overrides[k] for m in members})
                                    for k in members[0].overrides}}
    return [finish(m, compiled.evaluators, take(trained.loop.state, i), last_eval[i], plan,
                   timing, mesh, together) for i, m in enumerate(members)]


def finish(member: Member, evaluators: dict[str, evaluation.Evaluator], state: TrainState,
           last_eval: dict, plan: Plan, timing: dict, mesh: jax.sharding.Mesh,
           together: dict) -> dict:
    """Writes a finished member's results.json and returns the results. A member this process
    did not evaluate (it resumed at the last step) keeps its results.json, or is evaluated
    when it has none (a crash before it was written)."""
    member.ckpt.wait()
    if not last_eval:
        previous = read_results(member.workdir)
        if is_finished(previous, member.ckpt.latest_step(), plan):
            return previous
        last_eval = evaluation.evaluate_weights(evaluators, state, plan.total_steps, None,
                                                member.ckpt)
    results = member_results(member, plan, state, last_eval, timing, mesh, together)
    write_results(member.workdir, results)
    log.info("%s: final test accuracy %.4f (%d / %d examples).", member.name,
             results["test_accuracy"], results["test_correct"], results["test_examples"])
    return results


def member_results(member: Member, plan: Plan, state: TrainState, last_eval: dict,
                   timing: dict, mesh: jax.sharding.Mesh, together: dict) -> dict:
    """A finished member's results.json, with the keys of ``train.train_and_evaluate``'s.

    ``images_per_sec`` is each member's rate (the program processes members x that);
    ``together`` (``vectorized_seeds`` and ``vectorized_vary``: the seeds and varied values
    of the members trained together) is added.
    """
    return results_record(member.config, plan, plan.total_steps, state, last_eval,
                          member.ckpt.best_step(), timing, mesh) | together


def main(argv: Sequence[str] | None = None) -> None:
    import sys

    from absl import app, flags
    from absl import logging as absl_logging
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config file (and :variant).",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory of the members' run directories.")
    flags.DEFINE_list("seeds", ["0", "1", "2", "3"], "Seeds to train together, e.g. 0,1,2,3.")
    flags.DEFINE_multi_string(
        "vary", [], "KEY=V1,V2,...: a hyper-parameter the members differ in, e.g. "
        "optimizer.learning_rate=0.05,0.1,0.2 (repeatable; members are every seed x every "
        "combination).")
    flags.DEFINE_enum("mode", "vmap", MODES, "vmap: one batched step (GPU/TPU); unroll: one "
                      "copy of the step per member (CPU, where a vmapped convolution is slow).")
    flags.DEFINE_bool("bootstrap", False, "Each member trains on its own bootstrap sample of "
                      "the training set, drawn with its seed (bagging).")
    flags.mark_flags_as_required(["config", "workdir"])

    def run(args):
        if len(args) > 1:
            raise app.UsageError(f"Unexpected arguments: {args[1:]}")
        absl_logging.set_verbosity(absl_logging.WARNING)
        logging.getLogger("cv_jax").setLevel(logging.INFO)
        config = flags.FLAGS.config
        train_seeds(config, flags.FLAGS.workdir, flags.FLAGS.seeds, mode=flags.FLAGS.mode,
                    vary=parse_vary(flags.FLAGS.vary, config), bootstrap=flags.FLAGS.bootstrap)

    app.run(run, argv=argv or sys.argv)


if __name__ == "__main__":
    cpu_defaults.apply()  # before JAX starts its backend
    main()
