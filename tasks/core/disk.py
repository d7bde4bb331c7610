"""Writing to the disk now, not when the kernel gets round to it: what is published under
a name (a cache entry, a report, a model) is whole on the disk before it gets the name."""

from __future__ import annotations

import os
from pathlib import Path


def flush_to_disk(path: Path) -> None:
    """Write `path` (a file, or a directory with everything in it) to the disk now,
    before it is renamed into place, so a crash leaves whole files under a published
    name. It also keeps the kernel from writing it back seconds later, on the CPU a
    measurement or a training step is timed on: on a 2-core AMD EPYC VM, 165 MB of just
    written arrays made the CNN's measured epoch 40 to 44 s instead of 22 to 26 s in three
    tries of four. A symlink needs only its directory's sync.

    Raises:
        OSError: the disk refused the data (full, failing): the caller's write failed.
    """
    if path.is_symlink():
        return
    if path.is_dir():
        for child in sorted(path.iterdir()):
            flush_to_disk(child)
        sync_directory(path)
    else:
        _fsync(path)


def sync_directory(directory: Path) -> None:
    """Write a directory's entries (its names, a rename into it) to the disk, where the
    system can: POSIX systems only."""
    if os.name == "posix":
        _fsync(directory)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
