"""Dataset loading: in-memory splits from ImageFolder trees, CIFAR batches and TFDS."""

from cv_jax.data.cache import cached, fingerprint
from cv_jax.data.locate import find_dataset
from cv_jax.data.sources import ArrayDataset, DataError, check_same_classes, load_split

__all__ = [
    "ArrayDataset",
    "DataError",
    "cached",
    "check_same_classes",
    "find_dataset",
    "fingerprint",
    "load_split",
]
