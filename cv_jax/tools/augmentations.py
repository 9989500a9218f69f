"""A grid of a recipe's augmented training images: the original in the first column, then
augmented draws (the train step's on-device augmentation, :mod:`cv_jax.data.augment`).

    python -m cv_jax.tools.augmentations --config=configs/cifar10.py:cpu --out=grid.png \\
        [--rows=4 --cols=8 --seed=0]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags
from PIL import Image

from cv_jax.config import validate
from cv_jax.data import augment, pipeline
from cv_jax.data.locate import find_dataset
from cv_jax.data.sources import load_split
from cv_jax.runtime import cpu_defaults


def make_grid(columns: list[np.ndarray], scale: int, gap: int = 2) -> np.ndarray:
    """``columns`` of uint8 batches [rows, H, W, C] -> one RGB image, columns side by side."""
    rows, h, w, _ = columns[0].shape
    cell_h, cell_w = h * scale + gap, w * scale + gap
    extra = 2 * gap  # a wider gap after the originals
    grid = np.full((rows * cell_h + gap, len(columns) * cell_w + gap + extra, 3), 255, np.uint8)
    for j, batch in enumerate(columns):
        big = batch.repeat(scale, axis=1).repeat(scale, axis=2)
        if big.shape[-1] == 1:
            big = big.repeat(3, axis=-1)
        x0 = gap + j * cell_w + (extra if j else 0)
        for i in range(rows):
            y0 = gap + i * cell_h
            grid[y0:y0 + h * scale, x0:x0 + w * scale] = big[i]
    return grid


def main(argv: list[str]) -> None:
    absl_logging.set_verbosity(absl_logging.WARNING)
    flags_ = flags.FLAGS
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = flags_.config
    validate(config)
    data = config.dataset
    source = find_dataset(data.name, data.data_dir or None)
    train = load_split(source, data.train_split, image_size=tuple(data.image_size) or None,
                       cache_dir=data.cache_dir or None)
    pick = np.sort(pipeline.shuffled_order(len(train), flags_.seed)[:flags_.rows])
    images = jnp.asarray(train.images[pick])
    alternate = config.augment.flip and config.augment.flip_mode == "alternate"
    base = jax.random.key(flags_.seed)

    @jax.jit
    def step(x, j):
        """Draw j (alternating flips: as in epoch j - 1)."""
        flips = augment.alternating_flips(base, jnp.asarray(pick), j - 1) if alternate else None
        return augment.augment_batch(x, jax.random.fold_in(base, j), config.augment, flips)

    columns = [np.asarray(images)] + [np.asarray(step(images, j))
                                      for j in range(1, flags_.cols)]
    scale = max(1, 128 // max(images.shape[1:3]))
    Image.fromarray(make_grid(columns, scale)).save(flags_.out)
    print(f"Wrote {flags_.out}: {flags_.rows} training images from {source} (first column), "
          f"{flags_.cols - 1} augmented draws each. Augmentation: "
          f"{augment.describe(config.augment)}")


def cli() -> None:
    """Defines the flags and runs the command."""
    config_flags.DEFINE_config_file("config", None, "Config file (and :variant).",
                                    lock_config=True)
    flags.DEFINE_string("out", "augment_grid.png", "Where to save the grid (PNG).")
    flags.DEFINE_integer("rows", 4, "Training images, one per row.", lower_bound=1)
    flags.DEFINE_integer("cols", 8, "Columns: the original, then cols-1 augmented draws.",
                         lower_bound=2)
    flags.DEFINE_integer("seed", 0, "Chooses the images and the augmentation keys.")
    flags.mark_flags_as_required(["config"])
    app.run(main)


if __name__ == "__main__":
    cpu_defaults.apply()  # before JAX starts its backend
    cli()
