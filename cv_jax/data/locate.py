"""Find where a dataset lives on this machine (see :func:`find_dataset`)."""

from __future__ import annotations

import logging
import os

from cv_jax.data import idx
from cv_jax.data.dataset import DataError
from cv_jax.data.sources import ARCHIVE_SUFFIXES, NPZ_SUFFIX, TFDS_PREFIX

logger = logging.getLogger(__name__)

DATA_ENV = "CV_JAX_DATA"
KERAS_ENV = "KERAS_HOME"
# Extra names the official downloads use: the CIFAR python batches (Keras 3 keeps them in
# cifar-10-batches-py-target/cifar-10-batches-py), Keras' fashion-mnist folder and mnist.npz.
_EXTRA_CANDIDATES = {
    "cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz", "cifar-10-batches-py-target"),
    "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz"),
    "fashion_mnist": ("fashion-mnist",),
    "mnist": ("mnist.npz",),
}
# A folder containing one of these is taken to be a dataset itself.
_DATASET_MARKERS = ("train", "test", "batches.meta", "meta", "cifar-10-batches-py",
                    "cifar-100-python", *sorted(idx.FILE_NAMES))
_FILE_SUFFIXES = (*ARCHIVE_SUFFIXES, NPZ_SUFFIX)


def candidate_names(name: str) -> tuple[str, ...]:
    """File/folder names under which dataset ``name`` is looked for inside a data folder."""
    return (name, f"{name}-jpeg.tar.gz", f"{name}.tar.gz", f"{name}.tgz", f"{name}.tar",
            *_EXTRA_CANDIDATES.get(name, ()))


def _default_repo_root() -> str:
    """The parent of the cv_jax package directory."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def keras_datasets_dir() -> str:
    """Where Keras' ``load_data`` functions keep their downloads: ``$KERAS_HOME/datasets``,
    default ``~/.keras/datasets``."""
    return os.path.join(os.environ.get(KERAS_ENV) or os.path.join("~", ".keras"), "datasets")


def _looks_like_dataset(path: str) -> bool:
    """Cheap check: an archive or .npz file, or a folder with split folders / CIFAR batches /
    IDX files in it (directly or under a single wrapper folder)."""
    if os.path.isfile(path):
        return path.lower().endswith(_FILE_SUFFIXES)
    if any(os.path.exists(os.path.join(path, marker)) for marker in _DATASET_MARKERS):
        return True
    # os.path.isdir, not DirEntry.is_dir: False (not OSError) for a symlink to itself.
    subdirs = [e.path for e in os.scandir(path)
               if not e.name.startswith(".") and os.path.isdir(e.path)]
    return len(subdirs) == 1 and any(
        os.path.exists(os.path.join(subdirs[0], marker)) for marker in _DATASET_MARKERS)


def _search_folder(folder: str, name: str, accept_self: bool) -> tuple[str | None, str]:
    """Look for ``name`` in ``folder``; return (found path or None, what happened)."""
    if not os.path.exists(folder):
        return None, "does not exist"
    for candidate in candidate_names(name) if os.path.isdir(folder) else ():
        path = os.path.join(folder, candidate)
        if os.path.exists(path):
            return path, "found"
    if accept_self and _looks_like_dataset(folder):
        return folder, "found"
    if not os.path.isdir(folder):
        return None, f"is a file but not a {'/'.join(_FILE_SUFFIXES)} file"
    itself = " and is not itself a dataset" if accept_self else ""
    return None, f"exists, but contains none of {', '.join(candidate_names(name))}{itself}"


def _tfds_status(name: str) -> tuple[bool, str]:
    """Whether TFDS has a prepared copy of ``name`` (cheap local check, never downloads)."""
    try:
        import tensorflow_datasets as tfds  # lazy: slow import, only needed as a last resort

        builder = tfds.builder(name)
        if builder.is_prepared():
            return True, "found"
        return False, f"not prepared in {builder.data_dir}"
    except Exception as e:  # unknown name, broken install, ...: just skip this option
        return False, f"skipped ({type(e).__name__}: {str(e).splitlines()[0][:200]})"


def _not_found_error(name: str, attempts: list[str]) -> DataError:
    """DataError listing every attempted location and the ways to fix it."""
    tried = "\n".join(f"  {i}. {attempt}" for i, attempt in enumerate(attempts, 1))
    return DataError(
        f"could not find dataset {name!r}. Tried, in order:\n{tried}\n"
        f"Fix: pass --config.dataset.data_dir=PATH or set {DATA_ENV}=PATH, where PATH is\n"
        "  - an ImageFolder directory or .tar.gz/.tgz/.tar archive laid out as "
        "<root>/<split>/<class>/<image>.jpg (one wrapper folder allowed),\n"
        "  - a CIFAR-10/100 python batches folder (cifar-10-batches-py) or "
        "cifar-10-python.tar.gz,\n"
        "  - a folder of MNIST / Fashion-MNIST IDX files (train-images-idx3-ubyte.gz, ...) or "
        "Keras' mnist.npz,\n"
        f"  - or a folder containing one of: {', '.join(candidate_names(name))}.")


def find_dataset(name: str, data_dir: str | None, repo_root: str | None = None) -> str:
    """Resolve where dataset ``name`` (e.g. 'cifar10') lives; return a source for load_split.

    Tried in order:
      1. ``data_dir`` (config.dataset.data_dir): used as given ('tfds:...' included), or the
         matching entry inside it; if it does not exist, DataError at once.
      2. ``$CV_JAX_DATA``: the dataset itself, or a folder containing ``<name>/``,
         ``<name>-jpeg.tar.gz``, ``<name>.tar.gz``, ... (see :func:`candidate_names`).
      3. ``<repo_root>/data/`` with the same candidate names.
      4. ``<repo_root>/../shared/data/`` with the same candidate names.
      5. Keras' download cache, ``$KERAS_HOME/datasets`` (default ``~/.keras/datasets``), with
         the same candidate names (``cifar-10-batches-py``, ``fashion-mnist``, ``mnist.npz``).
      6. ``tfds:<name>`` if TFDS has a prepared copy (local check only).
    ``repo_root`` defaults to the parent of the cv_jax package directory.

    Raises:
      DataError: ``data_dir`` is missing, or nothing was found (lists every place tried).
    """
    if data_dir:
        if data_dir.startswith(TFDS_PREFIX):
            return data_dir
        path = os.path.abspath(os.path.expanduser(data_dir))
        if not os.path.exists(path):
            raise DataError(f"config.dataset.data_dir={data_dir!r} does not exist ({path}). "
                            "Fix: correct the path, or unset it to search the default places.")
        found, _ = _search_folder(path, name, accept_self=True)
        return found or path
    attempts = ["config.dataset.data_dir: not set"]
    repo_root = repo_root or _default_repo_root()
    env = os.environ.get(DATA_ENV)
    keras = os.path.abspath(os.path.expanduser(keras_datasets_dir()))
    keras_label = (f"{keras} (Keras' download cache, "
                   f"{'$' + KERAS_ENV if os.environ.get(KERAS_ENV) else '~/.keras'}/datasets)")
    folders = [(f"${DATA_ENV}={env}" if env else None, env, True),
               (None, os.path.join(repo_root, "data"), False),
               (None, os.path.join(repo_root, os.pardir, "shared", "data"), False),
               (keras_label, keras, False)]
    if not env:
        attempts.append(f"${DATA_ENV}: not set")
        folders = folders[1:]
    for label, folder, accept_self in folders:
        folder = os.path.abspath(os.path.expanduser(folder))
        found, outcome = _search_folder(folder, name, accept_self)
        if found:
            logger.info("Dataset %r found at %s (searched in %s)", name, found, label or folder)
            return found
        attempts.append(f"{label or folder}: {outcome}")
    prepared, outcome = _tfds_status(name)
    if prepared:
        return f"{TFDS_PREFIX}{name}"
    attempts.append(f"{TFDS_PREFIX}{name}: {outcome}")
    raise _not_found_error(name, attempts)
