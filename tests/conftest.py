"""Test setup: 8 fake CPU devices and fast compilation (set before JAX is imported), and shared
fixtures."""

import os

# LLVM optimisation level 0: the tests' tiny programs spend far longer compiling than running,
# and this roughly halves the suite's time. Tests that compare runs bit for bit compare runs
# compiled alike (subprocesses inherit these flags); others state their tolerances.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# As every command does in its __main__ block (the subprocesses tests start get them that way).
from cv_jax.runtime import cpu_defaults  # noqa: E402

cpu_defaults.apply()

import gzip  # noqa: E402
import importlib.util  # noqa: E402
import pathlib  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

# Each run builds fresh jitted closures; the persistent cache lets identical programs
# (the same tiny model in several tests) compile once per session.
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="cv_jax_xla_"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)

REPO = pathlib.Path(__file__).resolve().parents[1]
CLASSES = ("cat", "dog", "frog", "ship")
# results.json and metrics.jsonl fields that differ between otherwise identical runs.
TIMING = {"images_per_sec", "train_time_s", "timed_s", "compile_time_s", "timed_from_step"}


def load_config(arg: str = "smoke", path: str = "configs/cifar10.py"):
    """``get_config(arg)`` of a config file, as --config=path:arg would give it, training with
    plain layers (``training.cpu_formulations='off'``), as on a GPU: the CPU formulations are
    tested against them in tests/models/cpu."""
    spec = importlib.util.spec_from_file_location("config_under_test", REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg)
    config.training.cpu_formulations = "off"
    return config


def write_image_folder(root: pathlib.Path, counts: dict[str, int], size: int = 16,
                       seed: int = 0, sizes: tuple[int, int] | None = None,
                       classes: tuple[str, ...] = CLASSES) -> pathlib.Path:
    """An ImageFolder tree root/<split>/<class>/*.png whose classes differ in colour (learnable).

    ``counts`` maps split -> images per class. With ``sizes``, photos of different sizes instead
    (height and width each drawn from ``sizes``, inclusive) saved as JPEG at quality 90, as
    ImageNet's differ.
    """
    rng = np.random.default_rng(seed)
    for split, per_class in counts.items():
        for index, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                height, width = rng.integers(sizes[0], sizes[1] + 1, 2) if sizes else (size, size)
                image = rng.integers(0, 80, (height, width, 3), dtype=np.uint8)
                image[..., index % 3] += np.uint8(120 + 40 * (index // 3))
                if sizes:
                    Image.fromarray(image).save(folder / f"{i:03d}.jpg", quality=90)
                else:
                    Image.fromarray(image).save(folder / f"{i:03d}.png")
    return root


def write_photo_folder(root: pathlib.Path, counts: dict[str, int],
                       sizes: tuple[int, int] = (40, 90), seed: int = 0,
                       classes: tuple[str, ...] = CLASSES[:3]) -> pathlib.Path:
    """:func:`write_image_folder` of JPEG photos of different sizes, 3 classes by default."""
    return write_image_folder(root, counts, seed=seed, sizes=sizes, classes=classes)


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    """``array`` as an IDX file: 00 00 type ndim, big-endian uint32 sizes, the values."""
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + array.tobytes()


def write_idx_folder(folder: pathlib.Path, counts: dict[str, int], gz: bool = True,
                     size: tuple[int, int] = (28, 28), num_classes: int = 10,
                     seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The MNIST files of ``counts`` (split -> images) in ``folder``, gzipped or raw: class k
    is a bright band at its own height on dark noise (learnable). Returns {split: (images
    uint8 [N, H, W], labels uint8 [N])}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, count in counts.items():
        labels = (np.arange(count) % num_classes).astype(np.uint8)
        rng.shuffle(labels)
        images = rng.integers(0, 60, (count, *size), dtype=np.uint8)
        for image, label in zip(images, labels, strict=True):
            row = int(label) * size[0] // num_classes
            image[row:row + max(1, size[0] // num_classes)] += np.uint8(150)
        prefix = {"train": "train", "test": "t10k"}[split]
        for kind, array, dims in (("images", images, 3), ("labels", labels, 1)):
            data = idx_bytes(array)
            name = f"{prefix}-{kind}-idx{dims}-ubyte" + (".gz" if gz else "")
            (folder / name).write_bytes(gzip.compress(data) if gz else data)
        arrays[split] = (images, labels)
    return arrays


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> pathlib.Path:
    """4 classes; 24 train and 9 test images per class (36 test images: not a multiple of 8)."""
    return write_image_folder(tmp_path_factory.mktemp("tiny"), {"train": 24, "test": 9})


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("cache"))


def tiny_config(data_dir, cache_dir, **training):
    """The smoke recipe on the tiny folder: a few steps of a tiny net (with plain layers, as
    :func:`load_config` gives it)."""
    config = load_config("smoke")
    config.dataset.update(data_dir=str(data_dir), cache_dir=cache_dir, max_train_examples=0,
                          max_eval_examples=0)
    config.model_init_examples = 64
    config.training.update({"batch_size": 16, "log_every_steps": 1, "num_epochs": 2.0, **training})
    config.eval.batch_size = 16
    return config


def convnet_config(data_dir, cache_dir, **training):
    """``tiny_config`` with a one-layer convnet (no BatchNorm), no augmentation and no TTA:
    seconds per run."""
    from cv_jax.config import model_section

    config = tiny_config(data_dir, cache_dir, **training)
    config.model = model_section("convnet", layers="conv:8,pool:max:2", fc="",
                                           batch_norm=False)
    config.optimizer.update(freeze="", lr_multipliers="", learning_rate=0.05)
    config.augment.update(crop_padding=0, flip=False)
    config.eval.tta_flip = False
    return config


@pytest.fixture(scope="session")
def trained_run(tiny_folder, cache_dir, tmp_path_factory):
    """``(workdir, results)`` of the tiny smoke run (12 steps, 2 epochs, on 8 devices), shared by
    the tests that need a finished run; they must not write into it."""
    from cv_jax.training import train

    workdir = str(tmp_path_factory.mktemp("trained_run"))
    return workdir, train.train_and_evaluate(tiny_config(tiny_folder, cache_dir), workdir)
