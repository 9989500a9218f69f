"""The members of a vectorised run (``cv_jax.workflows.vectorized``): their seeds and
hyper-parameters,
their configs and run directories, and the one jitted step that trains them all.

The members are every seed of ``--seeds`` crossed with every combination of the
``--vary KEY=V1,V2,...`` lists. Their configs differ only in ``seed`` and the varied keys; all
of them see the same batches (``data_seed``).

A varied key must be a number read only inside the train step: under ``optimizer``,
``schedule`` (not the ``plateau_*`` keys), ``loss``, ``mixup``, ``noise``, ``augment`` or
``model`` (the learning rate, weight decay, momentum, label smoothing, mixup/cutmix alpha,
dropout rates, ...), or ``training.ema_decay``. Keys that change the parameters' shapes are
refused when the members' states are stacked.

In ``vmap`` mode the step is traced once, from a config whose varied keys hold traced values
(one per member along the vmapped axis). Code that branches on such a value cannot be traced
that way; the error names the varied keys, and ``unroll`` mode (one copy of the step per
member, each built from its member's own config) trains them. A value of 0 switches a part of
the step off (no weight decay transform, no dropout mask), which makes another program, so a
varied key's values must all be non-zero.
"""

from __future__ import annotations

import itertools
import os
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc

from cv_jax.analysis.sweep_definition import check_key, point_name, short_keys
from cv_jax.config import ConfigError, lookup, validate
from cv_jax.data.dataset import ArrayDataset
from cv_jax.training import setup
from cv_jax.training.plan import Plan

MODES = ("vmap", "unroll")
VARIABLE_SECTIONS = ("optimizer", "schedule", "loss", "mixup", "noise", "augment", "model")
VARIABLE_KEYS = ("training.ema_decay",)
FIXED_PREFIXES = ("schedule.plateau_",)  # read by the reduce-on-plateau update, after evaluations


def parse_seeds(text: str | Sequence[str | int]) -> tuple[int, ...]:
    """``'0,1,2'`` (or a list of them) -> ``(0, 1, 2)``; at least one seed, no repeats."""
    items = text.split(",") if isinstance(text, str) else text
    try:
        seeds = tuple(int(str(s).strip()) for s in items if str(s).strip())
    except ValueError:
        raise ConfigError(f"--seeds={text!r}: write integers, e.g. 0,1,2,3") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds={text!r}: give one or more distinct integer seeds")
    return seeds


def is_variable(key: str) -> bool:
    """Whether ``key`` is read only by the train step (so it may differ between members)."""
    return key in VARIABLE_KEYS or (key.split(".", 1)[0] in VARIABLE_SECTIONS
                                    and not key.startswith(FIXED_PREFIXES))


def parse_vary(items: Sequence[str], config: mlc.ConfigDict) -> dict[str, tuple]:
    """``['optimizer.learning_rate=0.05,0.1']`` -> ``{'optimizer.learning_rate': (0.05, 0.1)}``,
    each value of the config value's type; refuses what cannot vary inside one program."""
    varied: dict[str, tuple] = {}
    for item in items:
        key, sep, text = (s.strip() for s in item.partition("="))
        if not sep or not text:
            raise ConfigError(f"--vary={item!r}: write KEY=V1,V2,... "
                                        "(e.g. optimizer.learning_rate=0.05,0.1,0.2)")
        try:
            check_key(config, key)
        except KeyError as e:
            raise ConfigError(f"--vary={item!r}: {e.args[0]}") from None
        if key in varied:
            raise ConfigError(f"--vary: {key!r} is given twice; list its values once")
        if not is_variable(key):
            raise ConfigError(
                f"--vary={item!r}: {key} is read outside the train step (data, run length, "
                "evaluation, teacher or plateau update), so its members need separate runs "
                f"(make sweep); vary keys of {', '.join(VARIABLE_SECTIONS)} or "
                f"{', '.join(VARIABLE_KEYS)}")
        varied[key] = _parse_values(item, key, text, lookup(config, key))
    return varied


def _parse_values(item: str, key: str, text: str, default: Any) -> tuple:
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        raise ConfigError(
            f"--vary={item!r}: {key} is a {type(default).__name__}, not a number; members "
            "may differ only in numbers (train other settings as separate runs)")
    try:
        values = tuple(type(default)(v.strip()) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(
            f"--vary={item!r}: {key} takes {type(default).__name__} values") from None
    if len(set(values)) != len(values):
        raise ConfigError(f"--vary={item!r}: list each value of {key} once")
    if 0 in values:
        raise ConfigError(
            f"--vary={item!r}: a 0 switches that part of the step off, which is another "
            f"program; train {key}=0 as a separate run")
    return values


def member_overrides(varied: Mapping[str, Sequence]) -> list[dict[str, Any]]:
    """Every combination of the varied keys' values (``[{}]`` when nothing varies)."""
    keys = list(varied)
    return [dict(zip(keys, combo, strict=True))
            for combo in itertools.product(*(varied[k] for k in keys))]


def member_config(config: mlc.ConfigDict, seed: int,
                  overrides: Mapping[str, Any] | None = None) -> mlc.ConfigDict:
    """``config`` with ``seed``, the member's ``overrides`` and an explicit ``data_seed`` (the
    shared example order): what a separate ``train.train_and_evaluate`` run of this member
    would be given."""
    member = config.copy_and_resolve_references()
    member.data_seed = config.data_seed if config.data_seed >= 0 else config.seed
    member.seed = seed
    for key, value in (overrides or {}).items():
        _assign(member, key, value)
    validate(member)
    return member


def member_dir(workdir: str, seed: int, overrides: Mapping[str, Any] | None = None) -> str:
    """``workdir/seed_<s>``, or ``workdir/<key>=<value>,.../seed_<s>`` for varied keys."""
    if not overrides:
        return os.path.join(workdir, f"seed_{seed}")
    name = point_name(overrides, short_keys([overrides]))
    return os.path.join(workdir, name, f"seed_{seed}")


def with_values(config: mlc.ConfigDict, values: Mapping[str, Any]) -> mlc.ConfigDict:
    """A copy of ``config`` holding ``values`` (traced arrays allowed) at their dotted keys."""
    out = config.copy_and_resolve_references()
    for key, value in values.items():
        _assign(out, key, value, any_type=True)
    return out


def _assign(config: mlc.ConfigDict, key: str, value: Any, any_type: bool = False) -> None:
    """Sets dotted ``key`` (a key inside a section) of ``config``; ``any_type`` allows values
    of another type (traced arrays)."""
    section, _, name = key.rpartition(".")
    node = lookup(config, section)
    if any_type:
        with node.ignore_type():
            node[name] = value
    else:
        node[name] = value


def member(tree: Any, i: int) -> Any:
    """Member ``i`` of a stacked pytree."""
    return jax.tree.map(lambda x: x[i], tree)


def _step_of(config: mlc.ConfigDict, data: ArrayDataset, plan: Plan,
             mesh: jax.sharding.Mesh):
    """``setup.train_step_fn`` built from ``config``: its own optimizer, settings and model,
    bound into the (shared-structure) state it is given and unbound from the result."""
    _, tx, settings = setup.optimizer_and_settings(config, data, plan)
    apply_fn = setup.create_model(config, data).apply
    run = setup.train_step_fn(settings, config.training.batch_size, mesh)

    def step(state, *shared):
        new, metrics = run(state.replace(tx=tx, apply_fn=apply_fn), *shared)
        return new.replace(tx=state.tx, apply_fn=state.apply_fn), metrics

    return step


def _where(error: BaseException) -> str:
    """``file:line`` of the innermost cv_jax frame ``error`` passed through."""
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if f"{os.sep}cv_jax{os.sep}" in f.filename]
    if not frames:
        return "an unknown place"
    frame = frames[-1]
    return f"{os.path.relpath(frame.filename)}:{frame.lineno} in {frame.name}"


def make_vectorized_step(configs: Sequence[mlc.ConfigDict], varied: Sequence[str],
                         data: ArrayDataset, plan: Plan, mesh: jax.sharding.Mesh,
                         mode: str = "vmap", own_orders: bool = False,
                         steps_per_call: int = 1):
    """One jitted step of every member (``configs``, which differ in seed and the ``varied``
    keys): ``(stacked state, images, labels, permutation, index, teacher) -> (state,
    metrics)``; with ``steps_per_call`` > 1, that many steps per call (``setup.jit_steps``). The
    training set, permutation, batch index (so the batch) and the distillation teacher are
    shared; with ``own_orders`` the permutation is one row per member ([members, n] indices
    into the training set), so each member draws its own batch (bootstrap samples).

    ``vmap``: one step traced from the first config with the varied keys as traced values,
    vmapped over the member axis. ``unroll``: each member's step built from its own config,
    repeated once per member in one program (XLA:CPU lowers a vmapped convolution to a grouped
    one, far slower than separate ones).
    """
    if mode == "unroll":
        singles = [_step_of(c, data, plan, mesh) for c in configs]

        def step(state, images, labels, permutation, *shared):
            outputs = [one(member(state, i), images, labels,
                           permutation[i] if own_orders else permutation, *shared)
                       for i, one in enumerate(singles)]
            return jax.tree.map(lambda *xs: jnp.stack(xs), *outputs)
    else:
        values = {k: jnp.asarray([lookup(c, k) for c in configs]) for k in varied}

        def one(state, member_values, *shared):
            return _step_of(with_values(configs[0], member_values), data, plan, mesh)(
                state, *shared)

        mapped = jax.vmap(one, in_axes=(0, 0, None, None, 0 if own_orders else None, None,
                                        None))

        def step(state, *shared):
            try:
                return mapped(state, values, *shared)
            except jax.errors.ConcretizationTypeError as e:
                raise ConfigError(
                    f"the train step branches on the value of one of {', '.join(varied)} (at "
                    f"{_where(e)}), so it cannot vary inside one vmapped step; use "
                    "--mode=unroll (one copy of the step per member) or separate runs") from e
    return setup.jit_steps(step, mesh, steps_per_call)
