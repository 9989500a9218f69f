"""Integrity of saved checkpoints: a SHA-256 manifest per step, checked before a run resumes.

Orbax writes step N into ``N.orbax-checkpoint-tmp`` and renames it to ``N`` once complete, so a
write cut short is never listed as a step; ``remove_unfinished`` deletes such leftovers.
``seal`` adds ``sha256.json`` to that temporary directory just before the rename (covering every
file but the two Orbax rewrites at the rename, which restoring does not need);
``set_aside_damaged`` moves each step whose files no longer match it (truncated, overwritten,
missing) to ``checkpoints/damaged/N``, leaving the newest intact step as the latest.
"""

from __future__ import annotations

import json
import logging
import os
import shutil

import orbax.checkpoint as ocp

from cv_jax.runtime.paths import file_sha256

log = logging.getLogger("cv_jax")

MANIFEST = "sha256.json"
DAMAGED = "damaged"
WRITTEN_AT_COMMIT = ("_CHECKPOINT_METADATA", "commit_success.txt")  # step-level, by Orbax


def _files(directory: str) -> list[str]:
    """Paths of the files below ``directory``, relative to it, that the manifest covers."""
    found = []
    for root, _, names in os.walk(directory):
        found += [os.path.relpath(os.path.join(root, name), directory) for name in names]
    return sorted(f for f in found if f not in (MANIFEST, *WRITTEN_AT_COMMIT))


def seal(directory: str) -> None:
    """Writes ``directory/sha256.json``: the SHA-256 of every file below ``directory``."""
    files = {rel: file_sha256(os.path.join(directory, rel)) for rel in _files(directory)}
    with open(os.path.join(directory, MANIFEST), "w") as f:
        json.dump({"files": files}, f, indent=0, sort_keys=True)


def problem(directory: str) -> str | None:
    """Why the checkpoint in ``directory`` is damaged, or None when its files match its
    manifest (or it has none: written before manifests existed)."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            files = json.load(f)["files"]
    except (ValueError, KeyError, TypeError) as e:  # JSON and UTF-8 errors are ValueErrors
        return f"its {MANIFEST} is unreadable ({e})"
    for rel, digest in sorted(files.items()):
        if not os.path.isfile(os.path.join(directory, rel)):
            return f"{rel} is missing"
        if file_sha256(os.path.join(directory, rel)) != digest:
            return f"{rel} does not match its SHA-256 in {MANIFEST}"
    return None


def _aside_path(directory: str, step: int) -> str:
    """``directory/damaged/<step>``, or ``<step>.1``, ``.2``... when that is taken."""
    base = os.path.join(directory, DAMAGED, str(step))
    path, n = base, 0
    while os.path.exists(path):
        n += 1
        path = f"{base}.{n}"
    return path


def remove_unfinished(directory: str) -> None:
    """Deletes the temporary directories of writes that never completed (a killed process)."""
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if ocp.path.step.is_tmp_checkpoint(path):
            log.info("Removing %s, a checkpoint write that did not finish.", path)
            shutil.rmtree(path)


def set_aside_damaged(directory: str) -> list[int]:
    """Moves every damaged step of the checkpoint ``directory`` to ``directory/damaged/``,
    with a warning naming it; returns the steps moved."""
    moved = []
    for found in sorted(ocp.path.step.standard_name_format().find_all(directory),
                        key=lambda m: m.step):
        why = problem(str(found.path))
        if why is None:
            continue
        destination = _aside_path(directory, found.step)
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        os.rename(found.path, destination)
        log.warning("Checkpoint %s is damaged: %s. Moved it to %s; the newest intact "
                    "checkpoint, if any, is used instead.", found.path, why, destination)
        moved.append(found.step)
    return moved
