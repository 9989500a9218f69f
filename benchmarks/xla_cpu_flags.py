"""Train-step throughput of cv_jax on the CPU under XLA:CPU flag sets, with and without
cv_jax's CPU formulations (config.training.cpu_formulations), each in a fresh process.

    python benchmarks/xla_cpu_flags.py [--model=resnet20 --batch_size=128 --rounds=2 --steps=10]

XLA reads its flags once per process, so every variant runs ``python -m cv_jax.tools.bench`` in a
subprocess with its own ``XLA_FLAGS`` (cv_jax's own CPU defaults, ``cv_jax.runtime.xla_flags``, are
switched off with CV_JAX_XLA_DEFAULTS=0 so that each row is exactly the flags it names;
cv_jax's glibc malloc settings, ``cv_jax.runtime.host_malloc``, stay on in every row).
Rounds are interleaved (A B C A B C) so that a background load hits every variant alike;
the table gives each variant's median images/s over the rounds and its ratio to the first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "resnet20", "cv_jax model name.")
flags.DEFINE_integer("batch_size", 128, "Global batch size.")
flags.DEFINE_integer("rounds", 2, "Runs per variant (interleaved).")
flags.DEFINE_integer("steps", 10, "Timed steps per run.")
flags.DEFINE_bool("torch", True, "Also time PyTorch eager (channels_last) once per round.")

YNN_DOTS = "--xla_cpu_experimental_ynn_fusion_type=dot"
# name -> (XLA_FLAGS, config.training.cpu_formulations)
VARIANTS = {
    "XLA defaults": ("", "off"),
    "YNNPACK dots": (YNN_DOTS, "off"),
    "YNNPACK convolutions": ("--xla_cpu_experimental_ynn_fusion_type=individual_convolution",
                             "off"),
    "oneDNN": ("--xla_cpu_use_onednn=true", "off"),
    "YNNPACK dots, no XLA fusion": (YNN_DOTS + " --xla_disable_hlo_passes=fusion", "off"),
    "CPU formulations": ("", "on"),
    "YNNPACK dots + CPU formulations": (YNN_DOTS, "on"),
    "YNNPACK dots and reductions + CPU formulations (cv_jax's CPU default)":
        (YNN_DOTS + ",reduce", "on"),
}


def run_bench(xla_flags: str, formulations: str, with_torch: bool) -> list[dict]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        env = {**os.environ, "XLA_FLAGS": xla_flags, "CV_JAX_XLA_DEFAULTS": "0",
               "JAX_PLATFORMS": "cpu"}
        command = [sys.executable, "-m", "cv_jax.tools.bench", f"--models={FLAGS.model}",
                   f"--batch_size={FLAGS.batch_size}", f"--steps={FLAGS.steps}",
                   f"--cpu_formulations={formulations}",
                   f"--json={out.name}"] + (["--torch"] if with_torch else [])
        subprocess.run(command, env=env, check=True, capture_output=True)
        with open(out.name) as f:
            return json.load(f)


def main(argv):
    del argv
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    torch_rates: list[float] = []
    for _ in range(FLAGS.rounds):
        for index, (name, (xla_flags, formulations)) in enumerate(VARIANTS.items()):
            rows = run_bench(xla_flags, formulations, FLAGS.torch and index == 0)
            rates[name].append(rows[0]["images_per_sec"])
            if len(rows) > 1:
                torch_rates.append(rows[1]["images_per_sec"])
            print(f"  {name}: {rates[name][-1]:.1f} images/s", file=sys.stderr)
    print(f"{FLAGS.model}, batch {FLAGS.batch_size}, float32, CPU ({os.cpu_count()} cores); "
          f"median images/s of {FLAGS.rounds} interleaved runs of {FLAGS.steps} steps")
    print("| variant | XLA_FLAGS | cpu_formulations | images/s | vs defaults |\n"
          "|---|---|---|---|---|")
    reference = float(np.median(rates["XLA defaults"]))
    for name, values in rates.items():
        median = float(np.median(values))
        xla_flags, formulations = VARIANTS[name]
        print(f"| {name} | `{xla_flags or '-'}` | {formulations} | {median:.1f} "
              f"| {median / reference:.2f} |")
    if torch_rates:
        print(f"| PyTorch eager, channels_last | | | {np.median(torch_rates):.1f} "
              f"| {np.median(torch_rates) / reference:.2f} |")


if __name__ == "__main__":
    app.run(main)
