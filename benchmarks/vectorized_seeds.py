"""Throughput of N seeds trained as one program (cv_jax.workflows.vectorized) against one run.

    python benchmarks/vectorized_seeds.py --config=configs/cifar10.py:headline \\
        [--members=1,4,8 --modes=vmap,unroll --steps=20 --batch_size=0]

Times the jitted train step of the config's model on device-resident synthetic CIFAR-sized
uint8 images: first the plain single-run step (``setup.make_train_step``), then the step of
every member count in each mode of ``members.make_vectorized_step`` (vmap, unroll), each
compiled, run for two untimed steps, then timed over ``--steps`` steps with one
synchronisation at the end. Prints per row the compile time, the time per step, the images/s
each member trains on, the images/s of all members together, and that total against the plain
run's: the speed-up over training the N seeds one after another. ``measure`` returns the rows
(benchmarks/gpu_check.py).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Sequence

import jax
import ml_collections as mlc
from absl import app, flags
from ml_collections import config_flags

from cv_jax.tools.bench import synthetic_train_set
from cv_jax.training import setup, sharding
from cv_jax.training.plan import Plan
from cv_jax.workflows import members, vectorized


def timed(step_fn, state, args: tuple, steps: int, warmup: int = 2) -> tuple[float, float]:
    """``(compile seconds, seconds per step)`` of ``step_fn(state, *args)``: ``steps`` steps
    with one synchronisation at the end, after ``warmup`` untimed ones."""
    start = time.perf_counter()
    step_fn = step_fn.lower(state, *args).compile()
    compile_time = time.perf_counter() - start
    for _ in range(warmup):
        state, _ = step_fn(state, *args)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
        state, _ = step_fn(state, *args)
    jax.block_until_ready(state)
    return compile_time, (time.perf_counter() - start) / steps


def measure(config: mlc.ConfigDict, member_counts: Sequence[int] = (1, 4, 8),
            modes: Sequence[str] = ("vmap", "unroll"), steps: int = 20,
            batch_size: int = 0) -> dict:
    """The plain step's row, then one per member count and mode: compile s, ms per step,
    images/s per member and in total, and the total against the plain step's."""
    config = config.copy_and_resolve_references()
    if batch_size:
        config.training.batch_size = batch_size
    batch = config.training.batch_size
    mesh = sharding.make_mesh(config.training.num_devices)
    data = synthetic_train_set(batch * 4)
    plan = Plan.from_config(config, len(data))
    _, tx, settings = setup.optimizer_and_settings(config, data, plan)
    images, labels, permute = setup.device_train_set(data, config, mesh)
    args = (images, labels, permute(0), 0, None)
    plain = setup.build_state(config, data, settings, tx, mesh)
    cases = [("plain", 1, setup.make_train_step(settings, batch, mesh), lambda: plain)]
    for mode in modes:
        for count in member_counts:
            configs = [members.member_config(config, seed) for seed in range(count)]
            cases.append((mode, count,
                          members.make_vectorized_step(configs, [], data, plan, mesh, mode),
                          lambda c=configs: vectorized.stack(
                              vectorized.build_members(c, data, settings, tx, mesh), mesh)))
    rows, reference = [], None
    for mode, count, step_fn, make_state in cases:
        compile_time, seconds = timed(step_fn, make_state(), args, steps)
        total = count * batch / seconds
        reference = reference or total
        rows.append({"mode": mode, "members": count, "compile_s": compile_time,
                     "step_ms": 1000 * seconds, "images_per_sec_each": batch / seconds,
                     "images_per_sec_total": total, "vs_plain": total / reference})
    device = mesh.devices.flatten()[0]
    return {"model": config.model.name, "widths": list(config.model.get("widths", ())),
            "batch": batch, "dtype": config.training.compute_dtype, "steps": steps,
            "device": f"{mesh.devices.size} x {device.device_kind}", "rows": rows}


def main(argv):
    del argv
    flag = flags.FLAGS
    result = measure(flag.config, [int(n) for n in flag.members], flag.modes, flag.steps,
                     flag.batch_size)
    print(f"model {result['model']} {tuple(result['widths'])}, batch {result['batch']}, "
          f"{result['dtype']}; {result['device']}; jax {jax.__version__}, python "
          f"{platform.python_version()}; {flag.steps} steps, one synchronisation")
    print(f"{'members':<16}{'compile s':>10}{'ms/step':>10}{'img/s each':>12}{'img/s total':>13}"
          f"{'vs 1 run':>10}")
    for r in result["rows"]:
        name = f"{r['members']} {r['mode']}"
        print(f"{name:<16}{r['compile_s']:>10.1f}{r['step_ms']:>10.1f}"
              f"{r['images_per_sec_each']:>12,.1f}{r['images_per_sec_total']:>13,.1f}"
              f"{r['vs_plain']:>9.2f}x")


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", "configs/cifar10.py:headline",
                                    "Config (and :variant).", lock_config=False)
    flags.DEFINE_integer("steps", 20, "Timed steps per row (after one compile and warm-up).")
    flags.DEFINE_integer("batch_size", 0, "Global batch size (0: the config's).")
    flags.DEFINE_list("members", ["1", "4", "8"], "Member (seed) counts to time.")
    flags.DEFINE_list("modes", ["vmap", "unroll"],
                      "cv_jax.workflows.vectorized step modes to time.")
    app.run(main)
