"""Arrays passed between tasks by reference: a `.npy` path plus the SHA-256 of its bytes.

Prefect hashes task inputs and holds results in memory, so stages hand each other
these small references instead of arrays. Directories of arrays are published
atomically under a content-derived name, so concurrent runs never see half a write.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_CHUNK = 1 << 20


class CorruptArrayError(RuntimeError):
    """A stored array's bytes no longer match the hash it was saved with."""


@dataclass(frozen=True)
class ArrayRef:
    path: Path
    sha256: str
    shape: tuple[int, ...]
    dtype: str

    def load(self) -> np.ndarray:
        """The array, memory-mapped read-only after its bytes are checked against `sha256`."""
        actual = sha256_file(self.path)
        if actual != self.sha256:
            raise CorruptArrayError(
                f"{self.path}: content hash {actual[:12]} does not match the recorded "
                f"{self.sha256[:12]}; the file changed after it was written"
            )
        return np.load(self.path, mmap_mode="r")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def content_key(*parts: object) -> str:
    """A short stable key for directories named after their inputs."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def code_version(module_file: str) -> str:
    """Hash of a stage's source, so outputs keyed with it are rebuilt when the code changes."""
    return hashlib.sha256(Path(module_file).read_bytes()).hexdigest()[:16]


def publish_directory(target: Path, write: Callable[[Path], None]) -> Path:
    """Run `write(tmp_dir)` and rename the result to `target`; keep `target` if it exists.

    Directories published here are named after their content, so an existing one
    holds the same result (another run got there first).
    """
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide published results from other users
    try:
        write(staging)
        os.rename(staging, target)
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def save_arrays(directory: Path, arrays: Mapping[str, np.ndarray]) -> None:
    for name, array in arrays.items():
        np.save(directory / f"{name}.npy", np.ascontiguousarray(array))


def array_refs(directory: Path, names: list[str] | tuple[str, ...]) -> dict[str, ArrayRef]:
    refs = {}
    for name in names:
        path = directory / f"{name}.npy"
        header = np.load(path, mmap_mode="r")
        refs[name] = ArrayRef(path, sha256_file(path), tuple(header.shape), str(header.dtype))
    return refs
