"""Writing one file so that readers never see half of it: written beside its target under
a scratch name, written to the disk, then renamed over it, so a failure or a crash leaves
the previous file as it was."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from tasks.core.disk import flush_to_disk, sync_directory
from tasks.core.errors import RunEnvironmentError, StorageError, UsageError
from tasks.core.storage import scratch_name


@contextlib.contextmanager
def replacing(target: Path, suffix: str = "") -> Iterator[Path]:
    """A scratch path beside `target` (ending in `suffix`) for the block to write; written
    to the disk and renamed over `target` when the block ends without error, and removed
    when it fails. Errors pass through as they are: a download tells a network error from
    a disk's."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.parent / (scratch_name(target) + suffix)
    try:
        yield partial
        flush_to_disk(partial)
        os.replace(partial, target)
        sync_directory(target.parent)
    finally:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)


def write_atomically(target: Path, write: Callable[[TextIO], None]) -> None:
    """`write(stream)` into `target` through `replacing`.

    Raises:
        StorageError: the file could not be written (a full disk, no permission).
    """
    try:
        with replacing(target) as partial, open(partial, "w", newline="") as stream:
            write(stream)
    except OSError as error:
        raise StorageError.from_os_error(target, error) from error


def existing_ancestor(path: Path) -> Path:
    """`path` itself if it exists, else its nearest parent that does."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_directory(directory: Path) -> None:
    """`directory` is one, or can be created, and this process may write in it."""
    found = existing_ancestor(directory)
    if not found.is_dir():
        where = "" if found == Path(os.path.abspath(directory)) else f"{found} "
        raise UsageError(f"{directory}: {where}is a file, not a directory")
    if not os.access(found, os.W_OK | os.X_OK):
        read_only = os.statvfs(found).f_flag & os.ST_RDONLY
        reason = "read-only file system" if read_only else "permission denied"
        raise RunEnvironmentError(f"{directory}: cannot be written ({reason})")
