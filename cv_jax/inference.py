"""Predicting with a trained run: ``cv_jax.load(workdir)`` gives a model that maps images to
class probabilities, normalised and flip-averaged exactly as the run's evaluation.

    model = cv_jax.load("runs/r20", checkpoint="best", weights="raw")
    probabilities = model.predict_files(["cat.jpg", "dog.png"])   # [2, num_classes]
    model.top_k(probabilities, 3)   # [[(class, probability), ...], ...]

``model.variables`` ({'params', 'batch_stats'}) and ``model.logits`` serve other uses of a
trained run, such as a teacher's logits or a backbone's weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import ml_collections as mlc
import numpy as np

from cv_jax.data.sources import decode_image
from cv_jax.training import runs, sharding, steps
from cv_jax.training.state import TrainState


@dataclasses.dataclass
class LoadedModel:
    """One checkpoint of a trained run, ready for eval-mode prediction on the local devices.

    Batches are padded to ``batch_size`` and split over the devices, so every call compiles
    once per input dtype.
    """

    workdir: str
    config: mlc.ConfigDict
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]  # (H, W, C) the run was trained on
    step: int
    state: TrainState  # the chosen weights, without optimizer state
    settings: steps.EvalSettings
    batch_size: int
    mesh: jax.sharding.Mesh
    _logits: Callable = dataclasses.field(init=False, repr=False)
    _probabilities: Callable = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        def logits(state, images):
            return steps.predict_logits(state, images, self.settings)

        out = sharding.replicated(self.mesh)
        self._logits = jax.jit(logits, out_shardings=out)
        self._probabilities = jax.jit(lambda s, x: jax.nn.softmax(logits(s, x)),
                                      out_shardings=out)

    @property
    def variables(self) -> dict:
        """``{'params', 'batch_stats'}`` of the chosen weights."""
        return {"params": self.state.params, "batch_stats": self.state.batch_stats}

    def logits(self, images: np.ndarray) -> np.ndarray:
        """float32 [N, num_classes] eval-mode logits of a batch (see :meth:`predict`)."""
        return self._batched(self._logits, images)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities [N, num_classes] of images [N, H, W, C] at the run's image
        size, uint8 or float on the same 0-255 scale."""
        return self._batched(self._probabilities, images)

    def read_images(self, paths: Sequence[str]) -> np.ndarray:
        """Image files as uint8 [N, H, W, C], decoded and resized as the run's data loader
        does (C = 1, a grey channel, for runs trained on one); DataError naming the first file
        that cannot be decoded."""
        arrays = [decode_image(path, self.image_shape[:2], self.image_shape[2])
                  for path in paths]
        return np.stack(arrays) if arrays else np.zeros((0, *self.image_shape), np.uint8)

    def predict_files(self, paths: Sequence[str]) -> np.ndarray:
        """Class probabilities [N, num_classes] of image files of any size."""
        return self.predict(self.read_images(paths))

    def top_k(self, probabilities: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """Per row, the ``k`` most probable ``(class, probability)``, most probable first
        (ties in class order; ``k`` is capped at the number of classes)."""
        if k < 1:
            raise ValueError(f"top_k={k}: ask for at least 1 class")
        order = np.argsort(-probabilities, axis=-1, kind="stable")[:, :k]
        return [[(self.class_names[i], float(row[i])) for i in index]
                for row, index in zip(probabilities, order, strict=True)]

    def _check(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != self.image_shape:
            h, w, c = self.image_shape
            raise ValueError(
                f"images of shape {images.shape}: the run in {self.workdir} takes batches of "
                f"shape (N, {h}, {w}, {c}); resize them to {h}x{w} (read_images and "
                "predict_files decode and resize image files)"
            )
        if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
            raise ValueError(f"images of dtype {images.dtype}: give uint8 or float values on "
                             "the 0-255 scale")
        return images

    def _batched(self, fn: Callable, images: np.ndarray) -> np.ndarray:
        """``fn(state, batch)`` over padded, device-split batches; padding rows dropped."""
        images = self._check(images)
        outputs = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            padded = np.pad(chunk, [(0, self.batch_size - len(chunk))] + [(0, 0)] * 3)
            batch = jax.device_put(padded, sharding.batch_split(self.mesh))
            outputs.append((fn(self.state, batch), len(chunk)))
        if not outputs:
            return np.zeros((0, len(self.class_names)), np.float32)
        return np.concatenate([np.asarray(out)[:n] for out, n in jax.device_get(outputs)])


def load(workdir: str, checkpoint: str = "best", weights: str = "raw",
         batch_size: int = 0) -> LoadedModel:
    """The ``'best'`` or ``'latest'`` checkpoint of the run in ``workdir``, with its
    ``'raw'`` or ``'ema'`` weights; ``batch_size`` 0 is the run's ``eval.batch_size``."""
    run = runs.load_run(workdir, checkpoint)
    state = run.eval_state(weights).replace(opt_state=None, ema={})
    mesh = sharding.make_mesh()
    devices = mesh.devices.size
    size = batch_size or run.config.eval.batch_size
    return LoadedModel(
        workdir=workdir,
        config=run.config,
        class_names=run.class_names,
        image_shape=run.image_shape,
        step=run.step,
        state=state,
        settings=steps.EvalSettings.from_config(run.config),
        batch_size=-(-size // devices) * devices,
        mesh=mesh,
    )
