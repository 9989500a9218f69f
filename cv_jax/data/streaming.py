"""The streaming pipeline: a training split read, decoded, augmented on the host and batched by
Grain, each process reading only its share of every global batch.

The example order is given, epoch by epoch, by the caller (the resident pipeline's
``epoch_permutation``, so both pipelines see the same batches); each epoch is one Grain
``MapDataset`` over this process's examples, batch after batch. :class:`EpochBatches`, a Grain
``DatasetIterator``, chains the epochs; its state (the next step and the Grain state within
its epoch) is what a checkpoint saves, and an iterator can also start at any step.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import grain
import numpy as np
from absl import flags

from cv_jax.data.dataset import Crop, Split
from cv_jax.data.decode import Box


@dataclasses.dataclass(frozen=True)
class HostAugment:
    """Host-side augmentation of 224-pixel-class training images: Inception-style
    random-resized-crop to ``crop`` pixels square (area fraction in ``scale``, aspect ratio in
    3/4..4/3; 0: off), taken from the image at its own size and resized as ``resize`` says
    ('antialias' or 'bilinear', cv_jax/data/decode.py), and a random horizontal flip
    (``flip``). Each example's draw is keyed by (``seed``, epoch, example index), so it is the
    same on any process or worker layout and after a resume."""

    seed: int
    crop: int = 0
    scale: tuple[float, float] = (0.08, 1.0)
    flip: bool = False
    resize: str = "antialias"

    def crop_of(self, epoch: int) -> Crop | None:
        """The crop of epoch ``epoch``'s examples (None: off), for ``Split.read_example``."""
        if not self.crop:
            return None
        return Crop(self.crop, functools.partial(self.box, epoch), self.resize)

    def box(self, epoch: int, index: int, height: int, width: int) -> Box:
        """The crop of example ``index`` in epoch ``epoch``, from its image of that size."""
        rng = np.random.default_rng((self.seed, epoch, index, 0))
        return crop_box(height, width, self.scale, rng)

    def flips(self, epoch: int, index: int) -> bool:
        """Whether example ``index`` is mirrored in epoch ``epoch``."""
        return self.flip and np.random.default_rng((self.seed, epoch, index, 1)).random() < 0.5


def crop_box(height: int, width: int, scale: tuple[float, float], rng: np.random.Generator,
             ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Box:
    """A random crop of an image of ``height`` x ``width``, of ``scale`` of its area and
    ``ratio`` aspect, as (top, left, height, width) (torchvision's RandomResizedCrop: 10 tries,
    then the centre crop); it is then resized bilinearly to the crop size."""
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        w = int(round(np.sqrt(target * aspect)))
        h = int(round(np.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # the centre crop at the nearest allowed aspect ratio
    aspect = min(max(width / height, ratio[0]), ratio[1])
    w, h = (width, int(round(width / aspect))) if width / height < aspect else \
        (int(round(height * aspect)), height)
    w, h = min(w, width), min(h, height)
    return (height - h) // 2, (width - w) // 2, h, w


@dataclasses.dataclass(frozen=True)
class ReadExample:
    """Grain map function: example index -> {'image', 'label', 'index', 'bad'}, decoded (and
    augmented) as epoch ``epoch`` reads it; under ``bad_files='skip'`` a file that does not
    decode is replaced by the next example that does, and named in 'bad' (see
    ``FileDataset.read_example``)."""

    split: Split
    epoch: int
    augment: HostAugment | None = None

    def __call__(self, index: np.integer) -> dict[str, Any]:
        augment = self.augment or HostAugment(seed=0)
        image, index, bad = self.split.read_example(int(index), augment.crop_of(self.epoch))
        if augment.flips(self.epoch, index):
            image = np.ascontiguousarray(image[:, ::-1])
        return {"image": image, "label": self.split.labels[index],
                "index": np.int32(index), "bad": np.str_(bad)}


def local_positions(order: np.ndarray, steps_per_epoch: int, batch_size: int,
                    process_index: int, process_count: int) -> np.ndarray:
    """This process's examples of an epoch, batch after batch: of each global batch of
    ``order`` (the epoch's example order), the contiguous ``batch_size / process_count`` rows
    the process's devices hold. The epoch's last partial batch is dropped, as the resident
    pipeline drops it."""
    per_process = batch_size // process_count
    batches = np.asarray(order)[: steps_per_epoch * batch_size].reshape(steps_per_epoch,
                                                                        batch_size)
    start = process_index * per_process
    return batches[:, start:start + per_process].reshape(-1)


@dataclasses.dataclass(frozen=True)
class Stream:
    """How a process streams a training split: ``order(epoch)`` gives the epoch's order of the
    examples, of which the process reads rows ``process_index`` of ``process_count`` of each
    global batch of ``batch_size``; ``workers`` Grain processes (0: this one) with ``threads``
    reading threads each."""

    split: Split
    order: Callable[[int], np.ndarray]
    steps_per_epoch: int
    batch_size: int
    process_index: int = 0
    process_count: int = 1
    augment: HostAugment | None = None
    workers: int = 0
    threads: int = 4

    def __post_init__(self) -> None:
        if self.batch_size % self.process_count:
            raise ValueError(f"the batch of {self.batch_size} does not divide across "
                             f"{self.process_count} processes")

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.process_count

    def epoch(self, epoch: int, first_batch: int = 0) -> grain.IterDataset:
        """Epoch ``epoch``'s batches of this process from its ``first_batch``-th on."""
        positions = local_positions(self.order(epoch), self.steps_per_epoch, self.batch_size,
                                    self.process_index, self.process_count)
        batches = (grain.MapDataset.source(positions)
                   .map(ReadExample(self.split, epoch, self.augment))
                   .batch(self.local_batch_size, drop_remainder=True))
        batches = batches[first_batch:]
        read = grain.ReadOptions(num_threads=self.threads,
                                 prefetch_buffer_size=max(self.threads, 1) * 2)
        dataset = batches.to_iter_dataset(read)
        if self.workers:
            if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags (their defaults)
                flags.FLAGS.mark_as_parsed()
            dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.workers))
        return dataset

    def batches(self, step: int = 0) -> EpochBatches:
        """This process's batches from global step ``step`` on."""
        return EpochBatches(self, step)


class EpochBatches(grain.DatasetIterator):
    """A process's batches of a :class:`Stream`, epoch after epoch, from global step ``step``.

    Its state (``get_state``) is ``{'step': the step of the next batch, 'epoch': the epoch
    being read, 'first_batch': the batch its Grain iterator started at, 'grain': that
    iterator's state}``; a ``grain.checkpoint`` handler saves it with a checkpoint, and
    ``set_state`` goes back to it.
    """

    def __init__(self, stream: Stream, step: int = 0):
        super().__init__()
        self._stream = stream
        self._iterator: grain.DatasetIterator | None = None
        self._epoch, self._first = divmod(step, stream.steps_per_epoch)
        self._step = step

    def _started(self) -> grain.DatasetIterator:
        """The epoch's Grain iterator, opened on first use (worker processes start then)."""
        if self._iterator is None:
            self._open(self._epoch, self._first)
        return self._iterator

    def _open(self, epoch: int, first_batch: int) -> None:
        """Reads epoch ``epoch`` from its ``first_batch``-th batch on."""
        self.close()
        self._epoch, self._first = epoch, first_batch
        self._iterator = iter(self._stream.epoch(epoch, first_batch))
        self._closed = False

    @property
    def step(self) -> int:
        """The global step of the next batch."""
        return self._step

    def __next__(self) -> dict[str, np.ndarray]:
        if self._step >= (self._epoch + 1) * self._stream.steps_per_epoch:
            self._open(self._epoch + 1, 0)
        batch = next(self._started())
        self._step += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"step": self._step, "epoch": self._epoch, "first_batch": self._first,
                "grain": self._started().get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        self._open(int(state["epoch"]), int(state["first_batch"]))
        self._iterator.set_state(state["grain"])
        self._step = int(state["step"])

    def close(self) -> None:
        """Stops the epoch's Grain iterator (and its worker processes)."""
        if self._iterator is not None:
            self._iterator.close()
            self._iterator = None
        self._closed = True
