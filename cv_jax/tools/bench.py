"""Training throughput of cv_jax's train step, side by side with PyTorch on the same machine.

    python -m cv_jax.tools.bench [--models=resnet20,resnet18_cifar] [--batch_size=128]
        [--dtype=float32|bfloat16] [--steps=20] [--warmup=3] [--torch] [--torch_compile]
        [--json=FILE]

For each model, the jitted ``setup.make_train_step`` of a plain SGD recipe (Nesterov momentum,
weight decay, no augmentation, so both sides do the same work) runs on device-resident
synthetic images of the model's design size (32x32 or 224x224); with ``--torch`` the PyTorch
counterpart from ``cv_jax.tools.torch_reference`` runs next (channels_last, bf16 autocast when
``--dtype=bfloat16``, ``torch.compile`` with ``--torch_compile``). Each side runs in a process
of its own (``--worker=jax``; ``python -m cv_jax.tools.torch_reference``), the JAX one with
``XLA_PYTHON_CLIENT_PREALLOCATE=false``, so the two never share a device's memory. Each
compiles, runs ``--warmup`` untimed steps, then times ``--steps`` steps with one
synchronisation at the end. One row per side: images/s, milliseconds per step (the timed
stretch over the steps), the step's FLOPs as XLA counts them in the unoptimised step without
cv_jax's CPU formulations (XLA cannot count inside cv_jax's CPU kernels), MFU against the
device's peak (``--peak_tflops``, or a known GPU's dense peak), peak memory, and the ratio
cv_jax / PyTorch. Throughput is measured here, never in a timed unit test.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any

import jax
import ml_collections as mlc
import numpy as np
from absl import app, flags

from cv_jax import models
from cv_jax.config import base_config, model_section
from cv_jax.data.dataset import ArrayDataset
from cv_jax.runtime import cpu_defaults
from cv_jax.training import runs, setup, sharding
from cv_jax.training.plan import Plan

# Dense peak FLOP/s by device kind and compute dtype (vendor data sheets, SXM parts).
PEAK_FLOPS = {
    "H100": {"bfloat16": 989e12, "float32": 67e12},
    "H200": {"bfloat16": 989e12, "float32": 67e12},
    "A100": {"bfloat16": 312e12, "float32": 19.5e12},
}


def synthetic_train_set(num_examples: int, image_shape=(32, 32, 3),
                        classes: int = 10) -> ArrayDataset:
    """Uniform random uint8 images with random labels (a fixed seed)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (num_examples, *image_shape), dtype=np.uint8)
    labels = rng.integers(0, classes, num_examples).astype(np.int32)
    return ArrayDataset(images, labels, tuple(f"class{i}" for i in range(classes)))


def sgd_config(model: str, batch_size: int, dtype: str,
               cpu_formulations: str = "auto") -> mlc.ConfigDict:
    """The benchmark recipe: ``model`` trained by SGD + Nesterov, no augmentation."""
    config = base_config()
    config.model = model_section(model)
    config.training.update(batch_size=batch_size, compute_dtype=dtype, num_steps=1000,
                           cpu_formulations=cpu_formulations)
    config.optimizer.update(name="sgd", learning_rate=0.1, momentum=0.9, nesterov=True,
                            weight_decay=5e-4)
    config.schedule.update(name="constant", warmup_epochs=0.0)
    config.augment.update(crop_padding=0, flip=False)
    config.model_init_examples = min(config.model_init_examples, batch_size)
    return config


def _memory_bytes(compiled) -> int | None:
    """Peak device memory in use (GPU/TPU), else XLA's estimate for the compiled step."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    return int(analysis.temp_size_in_bytes + analysis.argument_size_in_bytes
               + analysis.output_size_in_bytes - analysis.alias_size_in_bytes)


def _flops(lowered, num_devices: int) -> float | None:
    """FLOPs of one global step: XLA counts those of one device's share of the batch."""
    cost = lowered.cost_analysis()
    if isinstance(cost, list):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    return num_devices * float(cost["flops"]) if cost and cost.get("flops") else None


def time_jax_step(model: str, batch_size: int, dtype: str, steps: int, warmup: int = 3,
                  cpu_formulations: str = "auto") -> dict[str, Any]:
    """Seconds per cv_jax train step of ``model`` (``steps`` steps timed with one
    synchronisation at the end, after ``warmup`` untimed ones), with its FLOPs, memory and
    parameters."""
    config = sgd_config(model, batch_size, dtype, cpu_formulations)
    mesh = sharding.make_mesh(config.training.num_devices)
    data = synthetic_train_set(batch_size * 2, models.default_input_shape(model))
    plan = Plan.from_config(config, len(data))
    _, tx, settings = setup.optimizer_and_settings(config, data, plan)
    state = setup.build_state(config, data, settings, tx, mesh)
    images, labels, permute = setup.device_train_set(data, config, mesh)
    permutation = permute(0)
    start = time.perf_counter()
    step = setup.make_train_step(settings, batch_size, mesh)
    step = step.lower(state, images, labels, permutation, 0).compile()
    compile_time = time.perf_counter() - start
    plain = state.replace(apply_fn=runs.build_model(config, len(data.class_names)).apply)
    flops = _flops(setup.make_train_step(settings, batch_size, mesh).lower(
        plain, images, labels, permutation, 0), mesh.devices.size)
    for i in range(warmup):
        state, _ = step(state, images, labels, permutation, i % 2)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for i in range(steps):
        state, _ = step(state, images, labels, permutation, i % 2)
    jax.block_until_ready(state)
    seconds = (time.perf_counter() - start) / steps
    device = mesh.devices.flatten()[0]
    return {"seconds": seconds, "flops": flops,
            "peak_bytes": _memory_bytes(step), "compile_s": compile_time,
            "parameters": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params)),
            "device": f"{mesh.devices.size} x {device.device_kind}", "version": jax.__version__}


def peak_flops(device_kind: str, dtype: str, override_tflops: float) -> float | None:
    """The device's dense peak FLOP/s for ``dtype``: ``override_tflops`` if given, else the
    table above when the device kind names a known GPU, else None (MFU is then left blank)."""
    if override_tflops:
        return override_tflops * 1e12
    for name, peaks in PEAK_FLOPS.items():
        if name in device_kind:
            return peaks.get(dtype, peaks["float32"])
    return None


def row(framework: str, model: str, batch_size: int, image: tuple, dtype: str,
        result: dict, peak: float | None) -> dict[str, Any]:
    seconds = result["seconds"]
    flops = result.get("flops")
    return {
        "framework": framework, "model": model, "batch": batch_size,
        "image": f"{image[0]}x{image[1]}", "dtype": dtype, "device": result["device"],
        "version": result["version"], "parameters": result["parameters"],
        "images_per_sec": batch_size / seconds, "step_ms": 1000 * seconds,
        "gflops_per_step": flops / 1e9 if flops else None,
        "mfu": flops / seconds / peak if flops and peak else None,
        "peak_mib": result["peak_bytes"] / 2**20 if result.get("peak_bytes") else None,
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of benchmark rows; ``ratio`` is cv_jax's images/s over PyTorch's."""
    header = ("| framework | model | batch | image | dtype | device | images/s | step ms "
              "| GFLOP/step | MFU | peak MiB | cv_jax / PyTorch |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]

    def cell(value, fmt):
        return "–" if value is None else format(value, fmt)

    for r in rows:
        lines.append(
            f"| {r['framework']} {r['version']} | {r['model']} | {r['batch']} | {r['image']} "
            f"| {r['dtype']} | {r['device']} | {r['images_per_sec']:,.0f} "
            f"| {r['step_ms']:.1f} | {cell(r['gflops_per_step'], '.1f')} "
            f"| {cell(r['mfu'], '.1%')} | {cell(r['peak_mib'], ',.0f')} "
            f"| {cell(r.get('ratio'), '.2f')} |")
    return "\n".join(lines)


def worker_env(framework: str) -> dict[str, str]:
    """A side's environment: this one, cv_jax importable, and for JAX no preallocation."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(models.__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    if framework == "jax":
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    return env


def run_worker(framework: str, args: list[str]) -> dict[str, Any]:
    """Runs one side's timing in a new process (``framework``: jax or torch); its result."""
    module = "cv_jax.tools.bench" if framework == "jax" else "cv_jax.tools.torch_reference"
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "result.json")
        subprocess.run([sys.executable, "-m", module, *args, f"--json={out}"], check=True,
                       env=worker_env(framework))
        with open(out) as f:
            return json.load(f)


def compare(model_names: list[str], batch_size: int, dtype: str, steps: int, warmup: int = 3,
            torch: bool = True, torch_compile: bool = False, channels_last: bool = True,
            peak_tflops: float = 0.0, cpu_formulations: str = "auto") -> list[dict[str, Any]]:
    """The table's rows: for each model cv_jax's and (with ``torch``) PyTorch's, each timed in
    a process of its own; cv_jax's row has the ``ratio`` of the images/s."""
    rows = []
    for model in model_names:
        image = models.default_input_shape(model)
        result = run_worker("jax", [
            "--worker=jax", f"--models={model}", f"--batch_size={batch_size}", f"--dtype={dtype}",
            f"--steps={steps}", f"--warmup={warmup}", f"--cpu_formulations={cpu_formulations}"])
        peak = peak_flops(result["device"], dtype, peak_tflops)
        ours = row("cv_jax", model, batch_size, image, dtype, result, peak)
        rows.append(ours)
        if torch:
            theirs = run_worker("torch", [
                f"--model={model}", f"--batch_size={batch_size}",
                f"--image={','.join(map(str, image))}", f"--steps={steps}", f"--warmup={warmup}",
                *(["--bf16"] if dtype == "bfloat16" else []),
                *(["--compile"] if torch_compile else []),
                "--channels_last" if channels_last else "--no-channels_last"])
            theirs["flops"] = ours["gflops_per_step"] and ours["gflops_per_step"] * 1e9
            name = "pytorch" + (" compiled" if torch_compile else "")
            rows.append(row(name, model, batch_size, image, dtype, theirs, peak))
            ours["ratio"] = ours["images_per_sec"] / rows[-1]["images_per_sec"]
    return rows


FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_list("models", ["resnet20"], "cv_jax model names (python -m cv_jax.models).")
    flags.DEFINE_integer("batch_size", 128, "Global batch size.")
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
    flags.DEFINE_integer("steps", 20, "Timed steps per row (one synchronisation at the end).")
    flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
    flags.DEFINE_bool("torch", False, "Also time the PyTorch counterpart of each model.")
    flags.DEFINE_bool("torch_compile", False, "torch.compile the PyTorch step.")
    flags.DEFINE_bool("channels_last", True, "PyTorch in channels_last memory format.")
    flags.DEFINE_float("peak_tflops", 0.0, "Device peak TFLOP/s for MFU (0: known GPUs only).")
    flags.DEFINE_string("json", "", "Also write the rows to this JSON file.")
    flags.DEFINE_enum("cpu_formulations", "auto", ["auto", "on", "off"],
                      "config.training.cpu_formulations of the cv_jax step.")
    flags.DEFINE_enum("worker", "", ["", "jax"], "Internal: time the one model of --models "
                      "in this process and write the result to --json.")


def main(argv):
    del argv
    if FLAGS.worker:
        (model,) = FLAGS.models
        result = time_jax_step(model, FLAGS.batch_size, FLAGS.dtype, FLAGS.steps,
                               FLAGS.warmup, FLAGS.cpu_formulations)
        with open(FLAGS.json, "w") as f:
            json.dump(result, f)
        return
    rows = compare(FLAGS.models, FLAGS.batch_size, FLAGS.dtype, FLAGS.steps, FLAGS.warmup,
                   FLAGS.torch, FLAGS.torch_compile, FLAGS.channels_last, FLAGS.peak_tflops,
                   FLAGS.cpu_formulations)
    print(f"{time.strftime('%Y-%m-%d')}, python {platform.python_version()}, "
          f"{platform.processor() or platform.machine()}; {FLAGS.steps} steps after "
          f"{FLAGS.warmup} warm-up steps, one synchronisation")
    print(format_table(rows))
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    cpu_defaults.apply()  # before JAX starts its backend
    define_flags()
    app.run(main)
