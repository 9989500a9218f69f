"""A sweep's definition: the :class:`Sweep` and :class:`Point` types, the helpers that build
points (:func:`axis`, :func:`product`, :func:`zip_`, :func:`ablation`), the names of points
and their folders, and :func:`load_definition`, which reads an ``experiments/*.py`` file.

Running a definition is :mod:`cv_jax.analysis.sweep`'s job.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib.util
import itertools
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections as mlc

CONFIG_ARG = "config_arg"  # pseudo-key: text appended to the config string


SEED = "seed"


MAX_NAME = 100  # longer point names are cut and given a hash


class SweepError(ValueError):
    """A sweep definition that cannot run; the message names the file, point and key."""


def axis(key: str, values: Sequence[Any]) -> list[dict[str, Any]]:
    """``axis('optimizer.name', ['sgd', 'adam'])`` -> ``[{'optimizer.name': 'sgd'}, ...]``."""
    return [{key: value} for value in values]


def product(*axes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every combination of one entry per axis, merged (the last axis varies fastest)."""
    return [merge(combination) for combination in itertools.product(*axes)]


def zip_(*axes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The i-th entries of equally long axes, merged."""
    lengths = [len(a) for a in axes]
    if len(set(lengths)) > 1:
        raise SweepError(f"zip_ needs axes of equal length, got lengths {lengths}; "
                         "use product() to combine axes of different lengths")
    return [merge(entries) for entries in zip(*axes, strict=True)]


def merge(entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One override dict from several; a key given twice with different values is an error."""
    merged: dict[str, Any] = {}
    for entry in entries:
        for key, value in entry.items():
            if key in merged and merged[key] != value:
                raise SweepError(f"key {key!r} is set twice in one point ({merged[key]!r} and "
                                 f"{value!r}); each key may appear in one axis only")
            merged[key] = value
    return merged


@dataclasses.dataclass(frozen=True)
class Point:
    """One set of overrides; ``name`` is its directory (derived from the overrides when '')."""

    overrides: Mapping[str, Any]
    name: str = ""
    label: str = ""  # how tables call it ('' = name)


@dataclasses.dataclass
class Sweep:
    """What a definition's ``get_sweep(arg)`` returns."""

    name: str  # the output folder: <root>/<name>
    config: str  # config spec, as --config takes it: 'configs/cifar10.py:cpu'
    points: Sequence[Mapping[str, Any] | Point]
    common: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    seeds: Sequence[int] = ()  # () = one run per point with the config's seed
    description: str = ""
    baseline: str = ""  # the point an ablation compares every other one with
    # What each run asks a cluster for with --launcher=slurm (cv_jax.analysis.slurm.Resources:
    # partition, gpus_per_job, cpus_per_job, mem_gb, time_min, ...); flags override them.
    resources: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9._-]+", self.name):
            raise SweepError(f"sweep name {self.name!r} must be a plain folder name "
                             "(letters, digits, '.', '_', '-')")
        if not self.points:
            raise SweepError(f"sweep {self.name!r} has no points; give at least one ({{}} runs "
                             "the base config as it is)")


def ablation(name: str, config: str, ingredients: Mapping[str, Mapping[str, Any]],
             seeds: Sequence[int] = (0, 1, 2), common: Mapping[str, Any] | None = None,
             description: str = "") -> Sweep:
    """The full recipe, and the recipe without each ingredient (``{name: overrides that switch
    it off}``), each over ``seeds`` (at least 3, for a mean and a spread)."""
    if len(set(seeds)) < 3:
        raise SweepError(f"ablation {name!r} has seeds {list(seeds)}: use at least 3 distinct "
                         "seeds, e.g. seeds=(0, 1, 2)")
    points = [Point({}, name="full", label="full recipe")]
    for ingredient, overrides in ingredients.items():
        points.append(Point(dict(overrides), name="no_" + slug(ingredient.lower(), "a-z0-9"),
                            label=f"− {ingredient}"))
    return Sweep(name=name, config=config, points=points, common=dict(common or {}),
                 seeds=tuple(seeds), description=description, baseline="full")


def choose(arg: str | None, options: Sequence[str]) -> str:
    """``arg`` if it is one of ``options``; the first option when ``arg`` is empty."""
    if not arg:
        return options[0]
    if arg not in options:
        raise SweepError(f"unknown sweep variant {arg!r}; choose one of {', '.join(options)}")
    return arg


def slug(text: str, allowed: str = "A-Za-z0-9._=,+-") -> str:
    """``text`` with each run of characters outside ``allowed`` (a regex class) made one '_'."""
    return re.sub(f"[^{allowed}]+", "_", text).strip("_")


def value_name(value: Any) -> str:
    """How a value reads in a folder name: 0.001 -> '0.001', (32, 64) -> '32-64', '' -> 'none'."""
    if isinstance(value, (list, tuple)):
        return "-".join(value_name(v) for v in value) or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value) if value != "" else "none"


def short_keys(points: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Each key's last component, or the whole key where two keys share a last component."""
    keys = {k for p in points for k in p if k != CONFIG_ARG}
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: k.rsplit(".", 1)[-1] if last.count(k.rsplit(".", 1)[-1]) == 1 else k for k in keys}


def point_name(overrides: Mapping[str, Any], short: Mapping[str, str]) -> str:
    """``{'optimizer.name': 'adam', 'optimizer.learning_rate': 0.001}`` ->
    ``'name=adam,learning_rate=0.001'``; ``'base'`` for no overrides."""
    parts = [str(v) if k == CONFIG_ARG else f"{short[k]}={value_name(v)}"
             for k, v in overrides.items()]
    name = slug(",".join(parts)) or "base"
    if len(name) > MAX_NAME:
        digest = hashlib.sha1(repr(sorted(overrides.items())).encode()).hexdigest()[:8]
        name = f"{name[:MAX_NAME - 9]}~{digest}"
    return name


def named_points(sweep: Sweep) -> list[Point]:
    """The sweep's points, each with its folder name; two points with one name are an error."""
    raw = [p.overrides if isinstance(p, Point) else p for p in sweep.points]
    short = short_keys(raw)
    points = []
    for point in sweep.points:
        if not isinstance(point, Point):
            point = Point(dict(point))
        name = point.name or point_name(point.overrides, short)
        points.append(dataclasses.replace(point, name=name, label=point.label or name))
    seen: dict[str, Point] = {}
    for point in points:
        if point.name in seen:
            raise SweepError(
                f"sweep {sweep.name!r}: points {dict(seen[point.name].overrides)} and "
                f"{dict(point.overrides)} both get the folder {point.name!r}; list each "
                "point once, or give them distinct names with Point(overrides, name=...)")
        seen[point.name] = point
    return points


def flag_value(value: Any) -> str:
    """A value as ``--config.key=`` text that config_flags parses back to the same value."""
    if isinstance(value, (list, tuple)):
        return repr(tuple(value))
    if isinstance(value, (bool, int, float, str)):
        return str(value) if isinstance(value, (bool, str)) else repr(value)
    raise SweepError(f"cannot pass {value!r} ({type(value).__name__}) on the command line; "
                     "use a bool, number, string or tuple")


def extend_spec(spec: str, config_arg: str) -> str:
    """``('configs/c.py:cpu', 'model=lenet5')`` -> ``'configs/c.py:cpu,model=lenet5'``."""
    if not config_arg:
        return spec
    return f"{spec},{config_arg}" if ":" in spec else f"{spec}:{config_arg}"


def load_definition(spec: str) -> Sweep:
    """``'experiments/x.py:full'`` -> the Sweep that file's ``get_sweep('full')`` returns."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise SweepError(f"sweep definition {path!r} does not exist; pass a file such as "
                         "experiments/ablation_smoke.py (see experiments/README.md)")
    module_spec = importlib.util.spec_from_file_location("sweep_definition", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        config_file = " (it has get_config: it is a config file, for --config)" if hasattr(
            module, "get_config") else ""
        raise SweepError(f"{path} has no get_sweep(arg=None) function returning a "
                         f"cv_jax.analysis.sweep_definition.Sweep{config_file}")
    sweep = module.get_sweep(arg) if arg else module.get_sweep()
    if not isinstance(sweep, Sweep):
        raise SweepError(f"{path}: get_sweep() returned a {type(sweep).__name__}, not a "
                         "cv_jax.analysis.sweep_definition.Sweep")
    if not sweep.description and module.__doc__:
        sweep.description = module.__doc__.strip().splitlines()[0]
    return sweep


def check_key(config: mlc.ConfigDict, key: str) -> None:
    """Raises KeyError naming ``key``'s first missing part and the nearest existing keys."""
    node: Any = config
    for depth, part in enumerate(key.split(".")):
        if not isinstance(node, mlc.ConfigDict) or part not in node:
            where = ".".join(key.split(".")[:depth]) or "the config"
            options = list(node.keys()) if isinstance(node, mlc.ConfigDict) else []
            close = difflib.get_close_matches(part, options, n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise KeyError(f"unknown config key {key!r}: {where} has no {part!r}{hint}")
        node = node[part]
