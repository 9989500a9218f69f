"""The streaming pipeline's side of a run (``dataset.pipeline='streaming'``): the training
split's Grain stream (``cv_jax.data.streaming``) in the order of the resident pipeline, and its
batches as global arrays on the mesh, each process giving its own rows
(``jax.make_array_from_process_local_data``)."""

from __future__ import annotations

import logging
from typing import Any

import grain
import jax
import ml_collections as mlc
import numpy as np

from cv_jax.config import ConfigError
from cv_jax.data.dataset import Split
from cv_jax.data.decode import OPENCV_INSTALL, opencv
from cv_jax.data.streaming import EpochBatches, HostAugment, Stream
from cv_jax.training import sharding

log = logging.getLogger("cv_jax")

FIELDS = ("image", "label", "index")  # a batch's arrays, in the train step's argument order


def make_stream(config: mlc.ConfigDict, train: Split, steps_per_epoch: int,
                permute) -> Stream:
    """This process's stream of ``train`` for a run of ``config``: epoch ``e`` in the order
    ``permute(e)`` (the resident pipeline's, on the devices), fetched to the host."""
    d = config.dataset
    augment = HostAugment(seed=config.seed, crop=d.stream_crop,
                          scale=tuple(d.stream_crop_scale), flip=d.stream_flip,
                          resize=d.stream_resize)
    if d.stream_crop and d.stream_resize == "bilinear":
        require_opencv()
    return Stream(train, lambda epoch: np.asarray(jax.device_get(permute(epoch))),
                  steps_per_epoch, config.training.batch_size, jax.process_index(),
                  jax.process_count(), augment, d.stream_workers, d.stream_threads)


def require_opencv() -> None:
    """A ConfigError naming the extra to install when OpenCV, which
    ``dataset.stream_resize='bilinear'`` resizes with, is not installed."""
    try:
        opencv()
    except ImportError as e:
        raise ConfigError("config.dataset.stream_resize='bilinear' needs OpenCV, which is not "
                          f"installed: {OPENCV_INSTALL} (or set stream_resize='antialias')"
                          ) from e


class StreamedBatches(grain.DatasetIterator):
    """The batches of a :class:`Stream` as global arrays split over ``mesh``'s data axis.

    ``batch(step)`` reads on from the previous step, or starts the stream at ``step``. As a
    Grain ``DatasetIterator`` its state is the stream's, so ``grain.checkpoint`` saves and
    restores it with a checkpoint.
    """

    def __init__(self, stream: Stream, mesh: jax.sharding.Mesh, image_shape: tuple[int, ...]):
        super().__init__()
        self._stream, self._sharding = stream, sharding.batch_split(mesh)
        self._shapes = {"image": ((stream.batch_size, *image_shape), np.uint8),
                        "label": ((stream.batch_size,), np.int32),
                        "index": ((stream.batch_size,), np.int32)}
        self._iterator: EpochBatches | None = None
        self.skipped: dict[str, str] = {}  # file -> reason: passed over under bad_files='skip'

    def batch(self, step: int) -> tuple[jax.Array, ...]:
        """Step ``step``'s images, labels and example indices, global arrays."""
        if self._iterator is None or self._iterator.step != step:
            self._open(step)
        local = next(self._iterator)
        self._note_bad(local["bad"])
        return tuple(jax.make_array_from_process_local_data(
            self._sharding, np.asarray(local[k], dtype=self._shapes[k][1]), self._shapes[k][0])
            for k in FIELDS)

    def _note_bad(self, bad: np.ndarray) -> None:
        """Logs (once) and records the files this process's batch passed over."""
        for line in (line for text in bad.tolist() if text for line in text.split("\n")):
            name, _, reason = line.partition(": ")
            if name not in self.skipped:
                self.skipped[name] = reason
                log.warning("Skipped bad file %s (%s; dataset.bad_files='skip'): the next "
                            "example in file order takes its place.", name, reason)

    def example(self) -> tuple[jax.ShapeDtypeStruct, ...]:
        return tuple(jax.ShapeDtypeStruct(*self._shapes[k], sharding=self._sharding)
                     for k in FIELDS)

    def _open(self, step: int) -> None:
        self.close()
        self._iterator = self._stream.batches(step)
        self._closed = False

    @property
    def step(self) -> int | None:
        """The step of the next batch (None: not started)."""
        return None if self._iterator is None else self._iterator.step

    def __next__(self) -> tuple[jax.Array, ...]:
        return self.batch(0 if self._iterator is None else self._iterator.step)

    def get_state(self) -> dict[str, Any]:
        if self._iterator is None:
            self._open(0)
        return self._iterator.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._open(int(state["step"]))
        self._iterator.set_state(state)
        log.info("Streaming resumes at step %d from the saved Grain state.", self.step)

    def close(self) -> None:
        if self._iterator is not None:
            self._iterator.close()
            self._iterator = None
        self._closed = True
