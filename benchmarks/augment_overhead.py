"""Step-time cost of the full augmentation stack against crop + flip alone.

    python benchmarks/augment_overhead.py --config=configs/cifar10.py:headline [--steps=50]

Times the jitted train step of the config's model on device-resident synthetic CIFAR-sized
uint8 images (the data loader is out of the picture: augmentation runs inside the step), for
  crop+flip              the recipe's crop and flip only (no mixup, no RandAugment)
  crop+flip+mixup/cutmix mixup 0.8 / CutMix 1.0, switch 0.5 (timm's defaults)
  full stack             the above + RandAugment(2, 9)
and prints the median step time, images/s and the overhead against crop+flip.
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

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/cifar10.py:headline", "Config (and :variant).",
                                lock_config=False)
flags.DEFINE_integer("steps", 50, "Timed steps per variant (after one compile and warm-up).")
flags.DEFINE_integer("batch_size", 0, "Global batch size (0: the config's).")

VARIANTS = {
    "crop+flip": {},
    "crop+flip+mixup/cutmix": {"mixup": dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0,
                                             switch_prob=0.5)},
    "full stack": {"mixup": dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5),
                   "augment": dict(auto_augment="randaugment", randaugment_num_ops=2,
                                   randaugment_magnitude=9)},
}


def time_variant(config, steps: int) -> float:
    """Median seconds per train step of ``config`` (after compiling and two warm-up steps)."""
    mesh = sharding.make_mesh(config.training.num_devices)
    batch = config.training.batch_size
    data = synthetic_train_set(batch * 4)
    plan = Plan.from_config(config, len(data))
    _, tx, settings = setup.optimizer_and_settings(config, data, plan)
    state = setup.build_state(config, data, settings, tx, mesh)
    images, labels, permute = setup.device_train_set(data, config, mesh)
    permutation = permute(0)
    step_fn = setup.make_train_step(settings, batch, mesh)
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        state, metrics = step_fn(state, images, labels, permutation, i % plan.steps_per_epoch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return float(np.median(times[2:]))


def main(argv):
    del argv
    base = FLAGS.config
    if FLAGS.batch_size:
        base.training.batch_size = FLAGS.batch_size
    device = jax.devices()[0]
    print(f"model {base.model.name}, batch {base.training.batch_size}, "
          f"{base.training.compute_dtype}; {len(jax.devices())} x {device.device_kind} "
          f"({device.platform}); jax {jax.__version__}, python {platform.python_version()}")
    print(f"{'variant':<26}{'ms/step':>10}{'images/s':>12}{'overhead':>10}")
    reference = None
    for name, overrides in VARIANTS.items():
        config = base.copy_and_resolve_references()
        config.mixup.update(mixup_alpha=0.0, cutmix_alpha=0.0)
        config.augment.update(auto_augment="")
        for section, values in overrides.items():
            config[section].update(values)
        seconds = time_variant(config, FLAGS.steps)
        reference = reference or seconds
        print(f"{name:<26}{1000 * seconds:>10.1f}{base.training.batch_size / seconds:>12,.0f}"
              f"{100 * (seconds / reference - 1):>9.1f}%")


if __name__ == "__main__":
    app.run(main)
