"""Throughput of N seeds trained as one program (cv_jax.workflows.vectorized) against one run.

    python benchmarks/vectorized_seeds.py --config=configs/cifar10.py:headline \\
        [--members=1,4,8 --modes=vmap,unroll --steps=20 --batch_size=0]

Times the jitted train step of the config's model on device-resident synthetic CIFAR-sized
uint8 images: first the plain single-run step (``setup.make_train_step``), then the step of
every member count in each mode of ``members.make_vectorized_step`` (vmap, unroll). Prints
per row the compile time, the median step time, the images/s each member trains on, the images/s
of all members together, and that total against the plain run's: the speed-up over training
the N seeds one after another.
"""

from __future__ import annotations

import platform
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from cv_jax.tools.bench import synthetic_train_set
from cv_jax.training import setup, sharding
from cv_jax.training.plan import Plan
from cv_jax.workflows import members, vectorized

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/cifar10.py:headline", "Config (and :variant).",
                                lock_config=False)
flags.DEFINE_integer("steps", 20, "Timed steps per row (after one compile and warm-up).")
flags.DEFINE_integer("batch_size", 0, "Global batch size (0: the config's).")
flags.DEFINE_list("members", ["1", "4", "8"], "Member (seed) counts to time.")
flags.DEFINE_list("modes", ["vmap", "unroll"], "cv_jax.workflows.vectorized step modes to time.")


def timed(step_fn, state, args: tuple, steps: int) -> tuple[float, float]:
    """``(compile seconds, median seconds per step)`` of ``step_fn(state, *args)`` after two
    warm-up steps."""
    start = time.perf_counter()
    step_fn = step_fn.lower(state, *args).compile()
    compile_time = time.perf_counter() - start
    times = []
    for _ in range(steps + 2):
        start = time.perf_counter()
        state, metrics = step_fn(state, *args)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return compile_time, float(np.median(times[2:]))


def main(argv):
    del argv
    config = FLAGS.config
    if FLAGS.batch_size:
        config.training.batch_size = FLAGS.batch_size
    batch = config.training.batch_size
    mesh = sharding.make_mesh(config.training.num_devices)
    data = synthetic_train_set(batch * 4)
    plan = Plan.from_config(config, len(data))
    _, tx, settings = setup.optimizer_and_settings(config, data, plan)
    images, labels, permute = setup.device_train_set(data, config, mesh)
    args = (images, labels, permute(0), 0, None)

    device = jax.devices()[0]
    print(f"model {config.model.name} {tuple(config.model.get('widths', ()))}, batch {batch}, "
          f"{config.training.compute_dtype}; {mesh.devices.size} x {device.device_kind} "
          f"({device.platform}); jax {jax.__version__}, python {platform.python_version()}; "
          f"median of {FLAGS.steps} steps")
    print(f"{'members':<16}{'compile s':>10}{'ms/step':>10}{'img/s each':>12}{'img/s total':>13}"
          f"{'vs 1 run':>10}")
    plain = setup.build_state(config, data, settings, tx, mesh)
    rows = [("1 plain", 1, setup.make_train_step(settings, batch, mesh), lambda: plain)]
    for mode in FLAGS.modes:
        for count in map(int, FLAGS.members):
            configs = [members.member_config(config, seed) for seed in range(count)]
            rows.append((f"{count} {mode}", count,
                         members.make_vectorized_step(configs, [], data, plan, mesh, mode),
                         lambda c=configs: vectorized.stack(
                             vectorized.build_members(c, data, settings, tx, mesh), mesh)))
    reference = None
    for name, count, step_fn, make_state in rows:
        compile_time, seconds = timed(step_fn, make_state(), args, FLAGS.steps)
        total = count * batch / seconds
        reference = reference or total
        print(f"{name:<16}{compile_time:>10.1f}{1000 * seconds:>10.1f}{batch / seconds:>12,.1f}"
              f"{total:>13,.1f}{total / reference:>9.2f}x")


if __name__ == "__main__":
    app.run(main)
