"""Host throughput of the streaming pipeline against PIL's own decode rate, and what it means for
feeding a GPU.

    python benchmarks/host_throughput.py [--data=DIR] [--images=400] [--rounds=3] [--crop=224]

Without --data, writes --images ImageNet-like JPEGs (500x375, quality 90, about 100 KB each:
colour waves, blocky texture and noise, near ImageNet's mean file size) to a temporary
ImageFolder; --data=DIR reads DIR's train/ split (an ImageFolder tree: ImageNet, Imagenette,
your photos). Then, back to back in this process and best of --rounds each (files in the page
cache):

  (a)  PIL decode in one thread: ``Image.open(f).convert('RGB')`` of every file, and the same
       with ``draft`` to the crop size first (the pipeline drafts where a crop allows it);
  (a') PIL decode in one process per core: the best decode rate this machine reaches;
  (b0) the pipeline's work per image in a plain loop, one thread: decode + random-resized-crop
       to --crop + flip (``FileDataset.read_example`` with the host augmentation), no Grain;
  (b)  the streaming pipeline (``cv_jax.data.streaming.Stream``, as a run of
       configs/imagenet.py reads it, batches of --batch): 1, 2 and 4 threads in this process,
       and 1 and 2 Grain worker processes;
(b0) and (b) once for each crop resize in --resize (``dataset.stream_resize``: 'antialias',
Pillow's; 'bilinear', OpenCV's).

Each line gives images/s of wall time and images per CPU-second (this process and its children
together; under load from other processes the CPU-second figure moves least). The summary
prints, for each resize, (b)/(a'), the pipeline against the machine's best PIL decode rate,
and the host cores one H100 needs to keep a ResNet-50 bf16 training step fed at an assumed rate
(--gpu_images_per_s; no GPU measurement of it exists in this repository yet).
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import pathlib
import platform
import resource
import tempfile
import time
from collections.abc import Callable

import grain
import numpy as np
import PIL
import psutil
from absl import app, flags
from PIL import Image

from cv_jax.data.dataset import FileDataset
from cv_jax.data.sources import list_split
from cv_jax.data.streaming import HostAugment, ReadExample, Stream

FLAGS = flags.FLAGS
flags.DEFINE_string("data", "", "An ImageFolder tree whose train/ split is read ('': generate).")
flags.DEFINE_integer("images", 400, "Images to generate (without --data); at most this many "
                                    "are read from --data.")
flags.DEFINE_integer("rounds", 3, "Rounds of every measurement; the best is reported.")
flags.DEFINE_integer("passes", 5, "Passes over the files per measurement.")
flags.DEFINE_integer("crop", 224, "The random-resized-crop's size (dataset.stream_crop).")
flags.DEFINE_integer("batch", 64, "Images per streamed batch.")
flags.DEFINE_list("resize", ["antialias", "bilinear"], "The crop's resizes to measure "
                  "(dataset.stream_resize; 'bilinear' needs OpenCV: cv_jax[opencv]).")
flags.DEFINE_float("gpu_images_per_s", 3000.0,
                   "ASSUMED ResNet-50 bf16 training throughput of one H100, images/s (see "
                   "docs/data.md#host-throughput for where the default comes from).")


def photo(rng: np.random.Generator, height: int = 375, width: int = 500) -> np.ndarray:
    """An ImageNet-sized photo stand-in: colour waves, 4-pixel blocks of texture and noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32) / max(height, width)
    channels = []
    for _ in range(3):
        a, b, c, d = rng.uniform(0.5, 6, 4)
        p, q = rng.uniform(0, 2 * np.pi, 2)
        channels.append(110 + 60 * np.sin(2 * np.pi * (a * x + b * y) + p)
                        + 40 * np.sin(2 * np.pi * (4 * c * x * y + d * y) + q))
    blocks = rng.normal(0, 25, (height // 4 + 1, width // 4 + 1, 3)).repeat(4, 0).repeat(4, 1)
    image = np.stack(channels, -1) + blocks[:height, :width] + rng.normal(0, 12, (height, width,
                                                                                  3))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_photos(root: pathlib.Path, count: int) -> pathlib.Path:
    """``count`` photos as JPEGs (quality 90) in root/train/<4 classes>/."""
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / "train" / f"class{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo(rng)).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def clock() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its child processes: the live ones, as
    psutil reads them, and those that have ended and been waited for, as the kernel sums them;
    a Grain worker ends once it has produced its share of an epoch)."""
    cpu = 0.0
    process = psutil.Process()
    for p in (process, *process.children(recursive=True)):
        try:
            times = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        cpu += times.user + times.system
    ended = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter(), cpu + ended.ru_utime + ended.ru_stime


def rates(images: int, start: tuple[float, float], end: tuple[float, float]
          ) -> tuple[float, float]:
    """(images/s of wall time, images per CPU-second) between two clocks."""
    return images / (end[0] - start[0]), images / max(end[1] - start[1], 1e-9)


def pil_decode(paths: list[str], draft_to: int = 0) -> int:
    """Decodes every file as plain PIL does (drafted to ``draft_to`` pixels first if > 0)."""
    for path in paths:
        with Image.open(path) as image:
            if draft_to:
                image.draft("RGB", (draft_to, draft_to))
            image.convert("RGB")
    return len(paths)


def pil_decode_parallel(paths: list[str], processes: int, passes: int) -> tuple[float, float]:
    """PIL decode of ``passes`` x ``paths`` split over ``processes`` processes."""
    chunks = [paths[i::processes] for i in range(processes)] * passes
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pool.map(pil_decode, [paths[:processes]] * processes)  # started and warm
        start = clock()
        pool.map(pil_decode, chunks, chunksize=1)
        return rates(passes * len(paths), start, clock())


def pipeline_loop(files: FileDataset, augment: HostAugment, passes: int) -> int:
    """The streaming pipeline's per-image work in a plain loop: read, crop, flip."""
    for epoch in range(passes):
        read = ReadExample(files, epoch, augment)
        for index in range(len(files)):
            read(np.int64(index))
    return passes * len(files)


def stream(files: FileDataset, augment: HostAugment, passes: int, threads: int,
           workers: int) -> tuple[float, float, float]:
    """Streams ``passes`` shuffled passes over the files as one epoch: the rates over its
    second half (started, its prefetch buffer drained: the rate it produces at), and the
    seconds to its first batch (the start of every epoch: worker processes start then)."""
    order = np.concatenate([np.random.default_rng(p).permutation(len(files))
                            for p in range(passes)])
    steps = len(order) // FLAGS.batch
    opened = time.perf_counter()
    batches = Stream(files, lambda epoch: order, steps, FLAGS.batch, augment=augment,
                     workers=workers, threads=threads).batches()
    try:
        for step in range(steps):
            next(batches)
            if step == 0:
                first = time.perf_counter() - opened
            if step == steps // 2:
                start = clock()
        return (*rates((steps - 1 - steps // 2) * FLAGS.batch, start, clock()), first)
    finally:
        batches.close()


def timed(read: Callable[[], int]) -> tuple[float, float]:
    """The rates of ``read()``, which returns the images it read."""
    start = clock()
    images = read()
    return rates(images, start, clock())


def cpu_name() -> str:
    """The CPU's model name (Linux), else the machine type."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def main(argv):
    del argv
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        root = FLAGS.data or str(write_photos(pathlib.Path(tmp), FLAGS.images))
        files = list_split(root, "train", crop=FLAGS.crop)
        files = files.take(np.arange(min(len(files), FLAGS.images)))
        paths = [str(p) for p in files.paths]
        sizes = [Image.open(p).size for p in paths]
        kilobytes = np.mean([os.path.getsize(p) for p in paths]) / 1e3
        print(f"{datetime.date.today()}; {cpu_name()}, "
              f"{cores} cores available, load average {os.getloadavg()[0]:.1f} at the start "
              f"(other processes count); python {platform.python_version()}, Pillow "
              f"{PIL.__version__}, grain {getattr(grain, '__version__', '?')}, numpy "
              f"{np.__version__}")
        print(f"{len(paths)} files from {FLAGS.data or 'generated photos'}: mean "
              f"{np.mean([s[0] for s in sizes]):.0f}x{np.mean([s[1] for s in sizes]):.0f} "
              f"(WxH), {kilobytes:.0f} KB; crop {FLAGS.crop}, flip; best of {FLAGS.rounds} "
              f"rounds of {FLAGS.passes} passes")
        pil_decode(paths)  # into the page cache
        passes, rounds = FLAGS.passes, FLAGS.rounds
        rows = [
            ("(a)  PIL decode, 1 thread", lambda: timed(
                lambda: sum(pil_decode(paths) for _ in range(passes)))),
            (f"(a)  PIL decode with draft to {FLAGS.crop}, 1 thread", lambda: timed(
                lambda: sum(pil_decode(paths, FLAGS.crop) for _ in range(passes)))),
            (f"(a') PIL decode, {cores} processes", lambda: pil_decode_parallel(
                paths, cores, passes)),
        ]
        for resize in FLAGS.resize:
            augment = HostAugment(seed=0, crop=FLAGS.crop, flip=True, resize=resize)
            rows.append((f"(b0) {resize}: decode+crop+flip, loop, 1 thread",
                         lambda a=augment: timed(lambda: pipeline_loop(files, a, passes))))
            rows += [(f"(b)  {resize}: pipeline, {t} thread{'s' * (t > 1)}",
                      lambda a=augment, t=t: stream(files, a, passes, threads=t, workers=0))
                     for t in (1, 2, 4)]
            rows += [(f"(b)  {resize}: pipeline, {w} worker{'s' * (w > 1)}",
                      lambda a=augment, w=w: stream(files, a, passes, threads=2, workers=w))
                     for w in (1, 2)]
        print(f"{'':<50}{'images/s':>10}{'per CPU-s':>11}{'1st batch':>11}")
        results = {}
        for name, measure in rows:  # the best of the rounds, of each figure
            measured = [measure() for _ in range(rounds)]
            results[name] = tuple(max(m[i] for m in measured) for i in (0, 1))
            start = f"{min(m[2] for m in measured):>10.2f}s" if len(measured[0]) > 2 else ""
            print(f"{name:<50}{results[name][0]:>10.0f}{results[name][1]:>11.0f}{start}",
                  flush=True)
        print(f"load average {os.getloadavg()[0]:.1f} at the end")

    decode = results["(a)  PIL decode, 1 thread"]
    machine = results[f"(a') PIL decode, {cores} processes"][0]
    for resize in FLAGS.resize:
        piped = {name: value for name, value in results.items()
                 if name.startswith(f"(b)  {resize}:")}
        fastest = max(piped, key=lambda name: piped[name][0])
        # Per CPU-second from the rows read in this process: a worker row's CPU figure misses
        # what a worker spent while it was not yet, or no longer, this process's child.
        per_cpu_s = max(value[1] for name, value in piped.items() if "worker" not in name)
        loop = next(value[1] for name, value in results.items()
                    if name.startswith(f"(b0) {resize}:"))
        print(f"\n{resize}: fastest pipeline: {fastest.split(': ', 1)[1]}, {piped[fastest][0]:.0f} "
              f"images/s = {piped[fastest][0] / machine:.2f} x the machine's best PIL decode "
              f"rate ({machine:.0f} images/s, {cores} processes; target >= 0.80)")
        print(f"{resize}: per CPU-second (threads): pipeline {per_cpu_s:.0f} images against PIL "
              f"decode alone {decode[1]:.0f} ({per_cpu_s / decode[1]:.2f} x) and against its own "
              f"work in a plain loop {loop:.0f} ({per_cpu_s / loop:.2f} x)")
        print(f"{resize}: one H100 at an ASSUMED {FLAGS.gpu_images_per_s:.0f} ResNet-50 bf16 "
              f"training images/s needs {FLAGS.gpu_images_per_s / per_cpu_s:.1f} host cores "
              f"busy decoding and cropping these files ({per_cpu_s:.0f} images per "
              "core-second)")


if __name__ == "__main__":
    app.run(main)
