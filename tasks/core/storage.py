"""Arrays passed between tasks by reference: a `.npy` path plus the SHA-256 of its bytes.

Prefect hashes task inputs and holds results in memory, so stages hand each other
these small references instead of arrays. Stage outputs are cache entries: directories
named after their inputs' hashes, parameters and code version, published atomically
with a manifest of their files' hashes, and reused only while every file matches it.
"""

from __future__ import annotations

import ast
import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from tasks.core.disk import flush_to_disk, sync_directory
from tasks.core.errors import StorageError

_CHUNK = 1 << 20
MANIFEST_FILE = "manifest.json"
T = TypeVar("T")
PROJECT_PACKAGE = Path(__file__).parents[1]
_AST_PARSE = threading.Lock()


class CorruptArrayError(RuntimeError):
    """A stored array's bytes no longer match the hash it was saved with."""


@dataclass(frozen=True)
class ArrayRef:
    path: Path
    sha256: str
    shape: tuple[int, ...]
    dtype: str

    def load(self) -> np.ndarray:
        """The array, memory-mapped read-only after its bytes are checked against `sha256`.

        Stages running side by side share one mapping of a file while any of them holds
        it: every mapping's pages count toward the process's resident memory again.
        """
        actual = sha256_file(self.path)
        if actual != self.sha256:
            raise CorruptArrayError(
                f"{self.path}: content hash {actual[:12]} does not match the recorded "
                f"{self.sha256[:12]}; the file changed after it was written"
            )
        key = (self.path.resolve(), self.sha256)
        with _OPEN_MAPPINGS_LOCK:
            array = _OPEN_MAPPINGS.get(key)
            if array is None:
                array = _OPEN_MAPPINGS[key] = np.load(self.path, mmap_mode="r")
        return array


_OPEN_MAPPINGS: weakref.WeakValueDictionary[tuple[Path, str], np.ndarray] = (
    weakref.WeakValueDictionary()
)
_OPEN_MAPPINGS_LOCK = threading.Lock()


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


def project_code_version(module: str, package_dir: Path = PROJECT_PACKAGE) -> str:
    """Hash of `module`'s source and of every module of the package it imports, directly
    or through others: the code a result keyed with it was computed by, and no more."""
    digest = hashlib.sha256()
    for path in sorted(_project_imports(module, package_dir)):
        digest.update(path.relative_to(package_dir).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _module_file(name: str, package_dir: Path) -> Path | None:
    """The source file of a module of the package, found without importing anything."""
    package, _, rest = name.partition(".")
    if package != package_dir.name:
        return None
    base = package_dir.joinpath(*rest.split(".")) if rest else package_dir
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None  # a name imported from a module, or another package


def _project_imports(module: str, package_dir: Path) -> set[Path]:
    found, pending = set(), [module]
    while pending:
        path = _module_file(pending.pop(), package_dir)
        if path is None or path in found:
            continue
        found.add(path)
        with _AST_PARSE:  # CPython 3.11's parser is not thread-safe: models key in threads
            tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                pending += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                # `from tasks.training.models import cnn` may import a module, not a name.
                pending += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
    return found


def cached_stage(
    target: Path,
    build: Callable[[Path], None],
    read: Callable[[Path], T],
    label: str,
    refresh: bool = False,
    logger: logging.Logger | None = None,
) -> T:
    """A stage's result: the cache entry `target` reused, or built by `build(staging)`,
    then read back by `read(target)`, so a rebuilt and a reused result are the same."""
    logger = logger or logging.getLogger(__name__)
    reused = cached_directory(target, build, refresh, logger)
    logger.info("%s %s: %s", "reused" if reused else "built", label, target)
    return read(target)


def write_new_directory(target: Path, write: Callable[[Path], None]) -> Path:
    """Run `write(staging)` and rename the result to `target`, which must not exist yet.

    Readers never see a half-written directory: it gets its name only when complete.

    Raises:
        StorageError: writing failed (a full disk, no permission); nothing is left behind.
    """
    if target.exists():
        raise FileExistsError(f"{target}: already exists")
    _build_and_swap(target, write, keep_existing=None)
    return target


def cached_directory(
    target: Path,
    write: Callable[[Path], None],
    refresh: bool = False,
    logger: logging.Logger | None = None,
) -> bool:
    """Reuse `target` if every file matches its manifest; otherwise (re)build it.

    Cache entries are named after a key of their inputs' hashes, their parameters and
    their code version, so a verified entry holds the same result as a rebuild. When
    another run sharing the cache publishes the same entry first, theirs is kept.

    Returns:
        True when an existing entry was reused.

    Raises:
        StorageError: writing failed (a full disk, no permission); nothing is left behind.
    """
    logger = logger or logging.getLogger(__name__)
    if target.exists() and not refresh:
        problem = entry_problem(target)
        if problem is None:
            return True
        logger.warning("%s: cache entry is not usable (%s); rebuilding it", target, problem)

    def write_with_manifest(staging: Path) -> None:
        write(staging)
        digests = {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()}
        (staging / MANIFEST_FILE).write_text(json.dumps(digests, indent=2))

    def keep_existing(entry: Path) -> bool:  # one another run published meanwhile
        return not refresh and entry_problem(entry) is None

    _build_and_swap(target, write_with_manifest, keep_existing)
    return False


def entry_problem(directory: Path) -> str | None:
    """Why a cache entry can't be trusted, or None when every file matches its hash."""
    try:
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
    except (OSError, ValueError) as exc:
        return f"manifest unreadable: {exc.__class__.__name__}"
    for name, digest in manifest.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if sha256_file(path) != digest:
            return f"{name} does not match its recorded hash"
    return None


def manifest_digest(directory: Path) -> str:
    """One hash standing for a whole cache entry's content."""
    return sha256_file(directory / MANIFEST_FILE)


def _machine() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def scratch_name(target: Path, kind: str = "staging") -> str:
    """A hidden name beside `target` for a directory being written (`staging`) or one
    being replaced (`stale`), which says which process on which machine owns it."""
    return f".{target.name}.{kind}-{_machine()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


# A scratch file may end in its target's suffix (`replacing`: a download's .gz).
_SCRATCH = re.compile(
    r"^\..+\.(staging|stale)-(?P<machine>[A-Za-z0-9]+)-(?P<pid>\d+)-[0-9a-f]+(\.\w+)?$"
)


def _process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process
        return False
    return False


def sweep_scratch(roots: Iterable[Path], logger: logging.Logger | None = None) -> list[Path]:
    """Remove the staging and stale directories that killed runs on this machine left
    under `roots` (two levels deep, where entries live). Those of live processes, and
    of other machines sharing the directory, stay: another run may be writing them.

    Returns:
        The directories removed.
    """
    removed = []
    for root in roots:
        parents = [root, *_subdirectories(root)]
        parents += [grandchild for parent in parents[1:] for grandchild in _subdirectories(parent)]
        for parent in parents:
            for path in parent.glob(".*"):
                match = _SCRATCH.match(path.name)
                if match and match["machine"] == _machine() and _process_is_gone(int(match["pid"])):
                    _remove(path)
                    removed.append(path)
    if removed:
        (logger or logging.getLogger(__name__)).info(
            "removed %d unfinished cache or report directories of stopped runs", len(removed)
        )
    return removed


def _subdirectories(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return [p for p in directory.iterdir() if p.is_dir() and not p.is_symlink()]


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _build_and_swap(
    target: Path, write: Callable[[Path], None], keep_existing: Callable[[Path], bool] | None
) -> None:
    """Write into a staging directory beside `target`, then publish it in one rename.

    `keep_existing(target)` says whether an entry found at `target` when publishing
    stays (another run's) or is replaced; None means `target` must not exist. On any
    error the staging directory is removed and the previous entry put back.
    """
    staging = target.parent / scratch_name(target)
    stale = target.parent / scratch_name(target, "stale")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
        staging.chmod(0o755)  # a umask of 077 would hide published results from other users
        write(staging)
        flush_to_disk(staging)
        if target.exists() and keep_existing is not None:
            if keep_existing(target):
                return
            os.rename(target, stale)
        _publish(staging, target, keep_existing)
    except OSError as error:
        raise StorageError.from_os_error(target, error) from error
    finally:
        if stale.exists() and not target.exists():
            with contextlib.suppress(OSError):  # the new entry never made it: keep the old
                os.rename(stale, target)
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(stale, ignore_errors=True)


def _publish(staging: Path, target: Path, keep_existing: Callable[[Path], bool] | None) -> None:
    try:
        os.rename(staging, target)
    except OSError as error:
        # Another run published `target` between the check and the rename.
        if error.errno not in (errno.ENOTEMPTY, errno.EEXIST) or keep_existing is None:
            raise
        if not keep_existing(target):
            raise
    sync_directory(target.parent)  # the rename itself


def save_arrays(directory: Path, arrays: Mapping[str, np.ndarray]) -> None:
    for name, array in arrays.items():
        np.save(directory / f"{name}.npy", np.ascontiguousarray(array))


def array_refs(directory: Path, names: list[str] | tuple[str, ...]) -> dict[str, ArrayRef]:
    """References to arrays in a directory; hashes come from its manifest when it has one."""
    manifest_path = directory / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    refs = {}
    for name in names:
        path = directory / f"{name}.npy"
        header = np.load(path, mmap_mode="r")
        digest = manifest.get(path.name) or sha256_file(path)
        refs[name] = ArrayRef(path, digest, tuple(header.shape), str(header.dtype))
    return refs
