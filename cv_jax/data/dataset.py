"""A decoded split in memory (:class:`ArrayDataset`), and the error bad dataset input raises
(:class:`DataError`)."""

from __future__ import annotations

import dataclasses

import numpy as np


class DataError(ValueError):
    """Bad dataset input; the message names the offending file or path and how to fix it."""

    def __init__(self, message: str) -> None:
        super().__init__(printable(message))


def printable(text: str) -> str:
    """``text`` with the undecodable bytes of non-UTF-8 file names (``os.fsdecode``'s surrogate
    escapes) shown as ``\\xNN``, so that it can be logged, printed and written as UTF-8."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
    """A fully decoded split: ``images`` uint8 [N, H, W, C], C = 3 (RGB) or 1 (grey: IDX files,
    cv_jax/data/idx.py), ``labels`` int32 [N]."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()  # (file, reason) left out under bad_files='skip'

    def __post_init__(self) -> None:
        """Check dtypes and shapes so that malformed data fails here, not in training."""
        if self.images.dtype != np.uint8 or self.images.ndim != 4 \
                or self.images.shape[-1] not in (1, 3):
            raise ValueError(f"images must be uint8 [N, H, W, 3] or [N, H, W, 1], got "
                             f"{self.images.dtype} {self.images.shape}")
        if self.labels.dtype != np.int32 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(f"labels must be int32 [{self.images.shape[0]}], got "
                             f"{self.labels.dtype} {self.labels.shape}")

    def __len__(self) -> int:
        """Number of examples."""
        return int(self.labels.shape[0])
