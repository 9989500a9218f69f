"""Walk a directory tree, following directory symlinks but never round a symlink loop."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator

logger = logging.getLogger(__name__)


def _dir_id(st: os.stat_result) -> tuple[int, int]:
    """(device, inode): the identity of a folder, whichever symlinks lead to it."""
    return st.st_dev, st.st_ino


def walk(root: str, skip: Callable[[str], bool] = lambda name: False,
         on_loop: Callable[[str], None] | None = None) -> Iterator[tuple[str, bool, os.DirEntry]]:
    """Yield ``(relative '/'-path, is_dir, entry)`` for everything below folder ``root``.

    Entries come sorted by name, each folder before its contents. Names for which ``skip`` is
    true are neither yielded nor entered. A folder symlink that leads back to one of its own
    ancestors (a loop) is not yielded; ``on_loop`` gets its path. An entry whose type cannot
    be read (a symlink to itself) is yielded as a file; a folder that cannot be listed is
    logged and left out.
    """
    yield from _walk(root, "", frozenset({_dir_id(os.stat(root))}), skip, on_loop)


def _walk(root: str, rel: str, ancestors: frozenset[tuple[int, int]],
          skip: Callable[[str], bool],
          on_loop: Callable[[str], None] | None) -> Iterator[tuple[str, bool, os.DirEntry]]:
    """Entries below ``root/rel``; ``ancestors`` are the folders on the path down to it."""
    try:
        with os.scandir(os.path.join(root, rel) if rel else root) as it:
            entries = sorted((e for e in it if not skip(e.name)), key=lambda e: e.name)
    except OSError as e:
        logger.warning("Cannot list folder %s (%s); leaving it out.", e.filename, e.strerror)
        return
    for entry in entries:
        child = f"{rel}/{entry.name}" if rel else entry.name
        try:
            is_dir = entry.is_dir()  # follows symlinks
        except OSError:  # e.g. a symlink to itself: left for the reader to report
            is_dir = False
        if not is_dir:
            yield child, False, entry
            continue
        ident = _dir_id(entry.stat())  # cached by is_dir()
        if ident in ancestors:
            if on_loop is not None:
                on_loop(entry.path)
            continue
        yield child, True, entry
        yield from _walk(root, child, ancestors | {ident}, skip, on_loop)
