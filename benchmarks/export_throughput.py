"""Size and CPU speed of a trained run's exported files (python -m cv_jax.export):

    python benchmarks/export_throughput.py --workdir=runs/c10_cpu [--batch_size=256]
        [--batches=20] [--out_dir=DIR]

(a run of the cpu recipe: python -m cv_jax.main --config=configs/cifar10.py:cpu
--workdir=runs/c10_cpu). Exports the run's best checkpoint as StableHLO and as ONNX, both with a
dynamic batch size (the command's default), prints the size of each file, then times inference
on random uint8 images, one batch of ``--batch_size`` per call, through

  cv_jax predict    cv_jax.load(workdir, batch_size=B).predict(batch): weights as arguments,
                    batches padded and split over the local devices, results back on the host
  StableHLO         jax.export.deserialize(file).call(batch), in this process (same XLA flags)
  onnxruntime       InferenceSession(file).run(None, {'images': batch}) on its CPU provider

and prints images/s from the median time of ``--batches`` calls (after 2 warm-up calls, which
compile), with the machine, the date and the versions. All three compute the same
probabilities (the run's normalisation and TTA); the command checks that the ONNX file agrees.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import tempfile
import time
from collections.abc import Callable

import jax
import numpy as np
import onnxruntime
from absl import app, flags, logging

import cv_jax
from cv_jax import export
from cv_jax.runtime import cpu_defaults

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A run directory written by cv_jax.main.")
flags.DEFINE_integer("batch_size", 256, "Images per call.", lower_bound=1)
flags.DEFINE_integer("batches", 20, "Timed calls per path.", lower_bound=1)
flags.DEFINE_string("out_dir", "", "Where to write the exported files (default: a temporary "
                    "directory, removed at the end).")
flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which checkpoint to export.")
WARMUP = 2


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def images_per_second(call: Callable, batch, batches: int) -> tuple[float, float]:
    """(images/s, ms per call) from the median of ``batches`` timed calls."""
    times = []
    for i in range(WARMUP + batches):
        start = time.perf_counter()
        np.asarray(call(batch))  # on the host, so that the call has finished
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
    median = float(np.median(times))
    return len(batch) / median, 1e3 * median


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    with tempfile.TemporaryDirectory() as scratch:
        out_dir = FLAGS.out_dir or scratch
        files = {}
        for fmt, name in (("stablehlo", "model.stablehlo"), ("onnx", "model.onnx")):
            files[fmt] = export.export_run(FLAGS.workdir, fmt, os.path.join(out_dir, name),
                                           checkpoint=FLAGS.checkpoint)
        model = cv_jax.load(FLAGS.workdir, FLAGS.checkpoint, batch_size=FLAGS.batch_size)
        with open(files["stablehlo"].path, "rb") as f:
            exported = jax.export.deserialize(f.read())
        session = onnxruntime.InferenceSession(files["onnx"].path,
                                               providers=["CPUExecutionProvider"])
        batch = np.random.default_rng(0).integers(0, 256, (FLAGS.batch_size, *model.image_shape),
                                                  np.uint8)
        paths = {
            "cv_jax predict": model.predict,
            "StableHLO": exported.call,
            "onnxruntime": lambda x: session.run(None, {"images": x})[0],
        }
        results = {name: images_per_second(call, batch, FLAGS.batches)
                   for name, call in paths.items()}

    description = files["onnx"].description
    tta = description["tta"]
    versions = {p: importlib.metadata.version(p) for p in ("jax", "jaxlib", "onnxruntime",
                                                           "jax2onnx")}
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {cpu_name()}, "
          f"{os.cpu_count()} logical CPUs; {jax.devices()[0].platform} backend; "
          f"python {platform.python_version()}, "
          + ", ".join(f"{p} {v}" for p, v in versions.items()))
    print(f"run {FLAGS.workdir} ({FLAGS.checkpoint}, step {model.step}): "
          f"{description['run']['model']}, images {'x'.join(map(str, model.image_shape))}, "
          f"{description['preprocessing']['compute_dtype']}, TTA flip={tta['flip']} "
          f"translate={tta['translate']}")
    for fmt, result in files.items():
        print(f"{fmt:<10} {result.description['bytes'] / 1e6:8.2f} MB")
    print(f"batch {FLAGS.batch_size}, median of {FLAGS.batches} calls:")
    print(f"{'path':<16}{'images/s':>12}{'ms/call':>10}")
    for name, (rate, ms) in results.items():
        print(f"{name:<16}{rate:>12.1f}{ms:>10.2f}")


if __name__ == "__main__":
    cpu_defaults.apply()  # before JAX starts its backend, as the commands do
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
