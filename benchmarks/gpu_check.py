"""cv_jax's speed on one GPU, in one results file (``make gpu-check``; docs/speed.md):

(b) the ResNet-50 bf16 train step against PyTorch eager (``cv_jax.tools.bench``: each side in a
    process of its own);
(c) the headline net's train step for 1, 4 and 8 seeds trained as one vmapped program
    (``cv_jax.workflows.vectorized``, via benchmarks/vectorized_seeds.py) against the plain step;
(a) the headline speed run (``cv_jax.tools.speedrun``): the untimed warm-up run, then as many
    seeds as fit in what is left of ``--minutes``.

They run in that order, so the bench's processes have the GPU before this process starts JAX
(which then takes most of its memory). A part that fails is recorded and the next one runs; the
exit status is then 1. Writes ``--out`` (JSON; again after each part) and the same name with
``.md``: date, device, versions, each part's numbers.

    python benchmarks/gpu_check.py --data=data/cifar10-jpeg.tar.gz --out=$OUT/gpu_check.json
    python benchmarks/gpu_check.py --dry_run --out=/tmp/gpu_check.json   (CPU, tiny sizes)
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import platform
import shutil
import sys
import tempfile
import time
import traceback
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "torch",
            "torchvision", "ml_collections", "tensorboardX")
NEEDED = ("jax", "flax", "optax", "orbax", "ml_collections", "tensorboardX", "absl", "PIL")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="results JSON (and .md beside it)")
    parser.add_argument("--data", default="", help="CIFAR-10: a folder or the .tar.gz")
    parser.add_argument("--dry_run", action="store_true",
                        help="tiny sizes on CPU, synthetic data: a check of this script")
    parser.add_argument("--minutes", type=float, default=5.5,
                        help="the whole check's time; the speed run gets what is left")
    parser.add_argument("--seeds", type=int, default=25, help="at most this many speed runs")
    parser.add_argument("--bench_model", default="resnet50")
    parser.add_argument("--bench_batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per bench row")
    parser.add_argument("--members", default="1,4,8", help="vectorised seed counts")
    parser.add_argument("--workdir", default="", help="the speed runs' folder (default: a "
                        "temporary one, removed at the end)")
    args = parser.parse_args(argv)
    if not args.data and not args.dry_run:
        parser.error("--data (CIFAR-10) is needed unless --dry_run")
    return args


def versions() -> dict[str, str | None]:
    """Installed versions, read without importing the packages (jax's CUDA plugins too)."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"] or ""
        if name.startswith("jax-cuda") or name.startswith("jax_cuda"):
            found[name] = dist.version
    return found


def synthetic_cifar(root: pathlib.Path, train: int = 8, test: int = 2) -> str:
    """A tiny ImageFolder of 10 coloured classes, 32x32 (the dry run's data)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, per_class in (("train", train), ("test", test)):
        for k in range(10):
            folder = root / split / f"class{k}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                image = rng.integers(0, 100, (32, 32, 3), dtype=np.uint8)
                image[..., k % 3] += np.uint8(60 + 15 * k)
                Image.fromarray(image).save(folder / f"{i}.png")
    return str(root)


def run_bench(args) -> dict[str, Any]:
    from cv_jax.tools import bench

    torch = importlib.util.find_spec("torch") is not None
    model, batch, dtype, steps, warmup = (("lenet5", 8, "float32", 2, 2) if args.dry_run else
                                          (args.bench_model, args.bench_batch, "bfloat16",
                                           args.steps, 5))
    rows = bench.compare([model], batch, dtype, steps, warmup, torch=torch)
    return {"model": model, "batch": batch, "dtype": dtype, "steps": steps, "warmup": warmup,
            "rows": rows, "ratio": rows[0].get("ratio"), "table": bench.format_table(rows)}


def run_vectorized(args) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import vectorized_seeds

    from cv_jax.workflows import multirun

    recipe, members, steps = (("smoke", (2,), 2) if args.dry_run else
                              ("headline", tuple(int(n) for n in args.members.split(",")),
                               args.steps))
    result = vectorized_seeds.measure(multirun.recipe_config(recipe), members, ("vmap",), steps)
    return {"recipe": recipe, **result}


def speedrun_config(args, data: str, scratch: str):
    from cv_jax.workflows import multirun

    if not args.dry_run:
        config = multirun.recipe_config("headline")
        config.dataset.data_dir = data
        return config
    config = multirun.recipe_config("smoke")
    config.dataset.update(data_dir=data, cache_dir=os.path.join(scratch, "cache"),
                          max_train_examples=0, max_eval_examples=0)
    config.training.update(batch_size=16, log_every_steps=5)
    config.model_init_examples = 64
    config.eval.batch_size = 32
    return config


def run_speedrun(args, data: str, scratch: str, seconds_left: float) -> dict[str, Any]:
    from cv_jax.tools import speedrun

    config = speedrun_config(args, data, scratch)
    workdir = args.workdir or os.path.join(scratch, "speedrun")
    seeds = min(args.seeds, 2) if args.dry_run else args.seeds
    report = speedrun.speedrun(config, workdir, seeds=seeds, max_seconds=max(seconds_left, 1))
    keys = ("test_accuracy", "timed_s", "train_time_s", "compile_time_s", "images_per_sec",
            "epochs")
    return {"recipe": config.recipe, "epochs": config.training.num_epochs,
            "max_seconds": report["max_seconds"], "warmup": report["warmup"],
            "seeds": report["seeds"], "accuracy": report["accuracy"],
            "timed_s": report["timed_s"], "target": report["target"],
            "reached_target": report["reached_target"],
            "runs": [{"seed": s, **{k: r.get(k) for k in keys}}
                     for s, r in zip(report["seeds"], report["runs"], strict=True)]}


def device() -> dict[str, Any]:
    import jax

    first = jax.devices()[0]
    return {"kind": first.device_kind, "platform": first.platform,
            "count": jax.device_count()}


def markdown(results: dict[str, Any]) -> str:
    dev, ver = results["device"] or {}, results["versions"]
    lines = [f"# cv_jax GPU check, {results['date']}", "",
             f"{dev.get('count', '?')} x {dev.get('kind', '?')} ({dev.get('platform', '?')})"
             f"{', dry run' if results['dry_run'] else ''}; python {results['python']}, "
             + ", ".join(f"{k} {v}" for k, v in ver.items() if v) + "; "
             f"{results['seconds'].get('total', 0):.0f} s in all.", ""]
    run = results.get("speedrun")
    if run:
        acc, secs = run["accuracy"], run["timed_s"]
        std = "n/a" if secs["std"] is None else f"{secs['std']:.2f}"
        lines += [f"## (a) Speed run: {run['recipe']} recipe, {run['epochs']:g} epochs", "",
                  f"{len(run['seeds'])} seeds after an untimed warm-up run: test accuracy "
                  f"{acc['mean']:.4f} (min {acc['min']:.4f}), {run['reached_target']}/"
                  f"{acc['n']} reached {run['target']:.2%}; timed {secs['mean']:.2f} ± {std} s "
                  "per run (data-dependent init, training, final evaluation).", ""]
    bench = results.get("bench")
    if bench:
        lines += [f"## (b) {bench['model']} train step, {bench['dtype']}, batch "
                  f"{bench['batch']}: cv_jax / PyTorch "
                  + (f"{bench['ratio']:.2f}" if bench["ratio"] else "n/a"), "",
                  bench["table"], ""]
    vec = results.get("vectorized")
    if vec:
        lines += [f"## (c) Seeds as one program: {vec['recipe']} net, batch {vec['batch']}, "
                  f"{vec['dtype']}", "", "| members | mode | ms/step | img/s each | "
                  "img/s total | vs plain |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['members']} | {r['mode']} | {r['step_ms']:.1f} | "
                  f"{r['images_per_sec_each']:,.0f} | {r['images_per_sec_total']:,.0f} | "
                  f"{r['vs_plain']:.2f}x |" for r in vec["rows"]]
        lines.append("")
    for part, error in results["errors"].items():
        lines += [f"## {part} failed", "", "```", error.strip()[-2000:], "```", ""]
    return "\n".join(lines)


def write(results: dict[str, Any], out: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.splitext(out)[0] + ".md", "w") as f:
        f.write(markdown(results))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.dry_run:  # before JAX starts: the CPU, whatever this machine has, compiling fast
        os.environ["JAX_PLATFORMS"] = "cpu"
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_backend_optimization_level" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_optimization_level=0".strip()
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        hint = ("install the wheels of `make gpu-wheels` (docs/speed.md)"
                if set(missing) <= {"ml_collections", "tensorboardX"} else
                "run it with a Python that has cv_jax's dependencies (make install)")
        print(f"missing Python packages: {', '.join(missing)}; {hint}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO))
    from cv_jax.runtime import cpu_defaults

    cpu_defaults.apply()
    scratch = tempfile.mkdtemp(prefix="gpu_check_")
    data = synthetic_cifar(pathlib.Path(scratch, "data")) if args.dry_run else args.data
    results: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "dry_run": args.dry_run, "python": platform.python_version(), "versions": versions(),
        "device": None, "seconds": {}, "errors": {}, "speedrun": None, "bench": None,
        "vectorized": None}

    def attempt(part: str, run) -> None:
        begin = time.perf_counter()
        try:
            results[part] = run()
        except Exception:
            traceback.print_exc()
            results["errors"][part] = traceback.format_exc()
        results["seconds"][part] = time.perf_counter() - begin
        results["seconds"]["total"] = time.perf_counter() - started
        write(results, args.out)

    import jax

    jax.config.update("jax_compilation_cache_dir", os.path.join(scratch, "xla_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    attempt("bench", lambda: run_bench(args))  # first: before this process takes the GPU
    attempt("device", device)
    attempt("vectorized", lambda: run_vectorized(args))
    left = args.minutes * 60 - (time.perf_counter() - started) - 10
    attempt("speedrun", lambda: run_speedrun(args, data, scratch, left))
    shutil.rmtree(scratch, ignore_errors=True)
    print(markdown(results))
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
