"""Ingestion: the user's own data in any of its layouts, or else Fashion-MNIST.

A `data_dir` the user names is used alone, in whichever layout it holds: four IDX files,
Kaggle's CSV files or image folders (`tasks.data.sources`). Without one, Fashion-MNIST's four
IDX files come from the project's cache `<cache_dir>/raw`, Debian's
`dataset-fashion-mnist` package, or a download from the dataset's mirror into the cache.
When none of these has them the run stops at once, in one line saying what was tried and
how to get data; only a transient network error (a reset, a timeout) is worth a retry.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import shutil
import socket
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

from tasks.core.contracts import RawDataset, UnreadableFile
from tasks.core.errors import DatasetFileError, StorageError
from tasks.core.files import replacing
from tasks.core.storage import (
    array_refs,
    cached_stage,
    content_key,
    project_code_version,
    save_arrays,
)
from tasks.data.sources import LAYOUT_NAMES, detect_layout, input_key, parse_layout
from tasks.data.sources.idx import (
    FASHION_MNIST_FILES,
    IdxFile,
    checksum_mismatch,
    missing_idx_files,
    read_idx,
)

MIRROR_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
SYSTEM_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
DNS_SECONDS = 3
DOWNLOAD_TIMEOUT_SECONDS = 60
RAW_ARRAYS = tuple(FASHION_MNIST_FILES)
CHECKSUMS_FILE = "decompressed_sha256.json"
DATASET_FILE = "dataset.json"
ORIGINS_FILE = "origins.json"
# What a download can fail with on the way; a full disk is not among them.
NETWORK_ERRORS = (
    urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, ssl.SSLError
)  # fmt: skip


class NoDataSourceError(DatasetFileError):
    """No source had the data. `transient`: the download failed on an error that may be
    gone a minute later. Both travel in `args`, so they survive pickling."""

    def __init__(self, message: str, transient: bool):
        super().__init__(message, transient)
        self.transient = transient

    def __str__(self) -> str:
        return str(self.args[0])


def download_file(url: str, target: Path, spec: IdxFile) -> None:
    """Download `url` to `target` atomically: verified first, then renamed into place.
    Nothing is created before the mirror answers.

    Raises:
        StorageError: writing it failed (a full disk); the network's errors pass as they
            are, for the task to retry.
    """
    try:
        with (
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response,
            replacing(target, suffix=target.suffix) as partial,  # the suffix: gzip or not
        ):
            with open(partial, "wb") as sink:
                shutil.copyfileobj(response, sink)
            if problem := download_problem(partial, spec):
                raise DatasetFileError(f"{url}: downloaded file is bad: {problem}")
    except NETWORK_ERRORS:
        raise
    except OSError as error:
        raise StorageError.from_os_error(target, error) from error


def download_problem(partial: Path, spec: IdxFile) -> str | None:
    """What makes a downloaded file not the published one, or None."""
    try:
        return checksum_mismatch(partial, read_idx(partial, spec.magic).sha256, spec)
    except DatasetFileError as exc:
        return str(exc)


def fashion_mnist_dir(
    cache_dir: Path,
    files: Mapping[str, IdxFile] = FASHION_MNIST_FILES,
    system_dir: Path = SYSTEM_DATA_DIR,
    mirror_url: str = MIRROR_URL,
) -> Path:
    """The directory holding Fashion-MNIST's files: the cache's, Debian's, or the cache's
    after downloading what it lacks.

    Raises:
        NoDataSourceError: no source has the files and the download failed.
    """
    raw_dir = cache_dir / "raw"
    if local := _local_source(raw_dir, system_dir, files):
        return local
    specs = {spec.name: spec for spec in files.values()}
    try:
        for name in missing_idx_files(raw_dir, files):
            download_file(mirror_url + name, raw_dir / name, specs[name])
    except NETWORK_ERRORS as error:
        raise no_data_error(raw_dir, system_dir, mirror_url, files, error) from error
    return raw_dir


def check_data_source(data_dir: Path | None, cache_dir: Path) -> None:
    """Before the run, from names alone: the data directory holds one layout, or without
    one a source has Fashion-MNIST or the mirror's name resolves. A machine without data
    hears it at once, before a temporary Prefect server starts.

    Raises:
        UsageError: `data_dir` is a file.
        DatasetFileError: `data_dir` holds no layout of data (NoDataSourceError: no
            data at all).
    """
    if data_dir is not None:
        with denied_in_one_line():
            detect_layout(data_dir)  # from names alone: no parsing before the run
        return
    raw_dir = cache_dir / "raw"
    if _local_source(raw_dir, SYSTEM_DATA_DIR, FASHION_MNIST_FILES):
        return
    host = urllib.parse.urlsplit(MIRROR_URL).hostname
    # A resolver that does not answer can take 5 s per attempt and server: ask in a
    # thread and give up after DNS_SECONDS, as for a name that does not resolve.
    if error := resolve_error(host, DNS_SECONDS):
        raise no_data_error(raw_dir, SYSTEM_DATA_DIR, MIRROR_URL, FASHION_MNIST_FILES, error)


@contextlib.contextmanager
def denied_in_one_line() -> Iterator[None]:
    """A file or folder of the user's data this process may not read, named in one line
    (pathlib's `is_file` and `is_dir` raise it too, for a folder it may not search)."""
    try:
        yield
    except PermissionError as error:
        raise DatasetFileError(f"{error.filename}: permission denied; it cannot be read") from None


def resolve_error(host: str | None, seconds: float) -> OSError | None:
    """Why `host` does not resolve within `seconds`, or None when it does. The lookup runs
    in a daemon thread, so one that hangs keeps neither the caller nor the exit waiting."""
    outcome: list[OSError | None] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, None)
        except OSError as error:
            outcome.append(error)
        else:
            outcome.append(None)

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(seconds)
    return outcome[0] if outcome else TimeoutError(f"no answer in {seconds:g} s")


def _local_source(raw_dir: Path, system_dir: Path, files: Mapping[str, IdxFile]) -> Path | None:
    for candidate in (raw_dir, system_dir):
        if candidate.is_dir() and not missing_idx_files(candidate, files):
            return candidate
    return None


def no_data_error(
    raw_dir: Path,
    system_dir: Path,
    mirror_url: str,
    files: Mapping[str, IdxFile],
    error: BaseException,
) -> NoDataSourceError:
    """One line: each source tried and why it had no data, and the two fixes."""
    tried = (
        f"{raw_dir} ({_local_state(raw_dir, files)}), "
        f"{system_dir} ({_local_state(system_dir, files)}) "
        f"and {mirror_url} ({network_cause(error)})"
    )
    return NoDataSourceError(
        f"no data found: tried {tried}; install Debian's dataset-fashion-mnist "
        "(apt-get install dataset-fashion-mnist), or give your own data with --data-dir PATH",
        is_transient(error),
    )


def _local_state(directory: Path, files: Mapping[str, IdxFile]) -> str:
    if not directory.is_dir():
        return "no such directory"
    missing = len(missing_idx_files(directory, files))
    return "no data files" if missing == len(files) else f"{missing} of {len(files)} files missing"


def network_cause(error: BaseException) -> str:
    """Why the mirror could not be reached, in a few words: "name does not resolve"."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    reason = error.reason if isinstance(error, urllib.error.URLError) else error
    if isinstance(reason, socket.gaierror):
        return "name does not resolve"
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror[:1].lower() + reason.strerror[1:]
    return str(reason) or type(reason).__name__


def is_transient(error: BaseException) -> bool:
    """A connection reset, refused or timed out, or a server error: worth a retry. A name
    that does not resolve is not: a minute later it still won't."""
    if isinstance(error, urllib.error.HTTPError):
        return error.code >= 500 or error.code == 429
    reason = error.reason if isinstance(error, urllib.error.URLError) else error
    return isinstance(reason, ConnectionError | TimeoutError | http.client.HTTPException)


def ingest_dataset(
    data_dir: Path | None,
    cache_dir: Path,
    files: Mapping[str, IdxFile] = FASHION_MNIST_FILES,
    test_fraction: float = 0.15,
    seed: int = 42,
    system_dir: Path = SYSTEM_DATA_DIR,
    mirror_url: str = MIRROR_URL,
    refresh: bool = False,
    logger: logging.Logger | None = None,
) -> RawDataset:
    """Find and parse the data into a cache entry under `<cache_dir>/interim/`.

    The entry is keyed by the input files' own bytes, the layout, the class names' file,
    the split's parameters (image folders without `test/`) and the code's version, so
    unchanged data is not parsed again.

    Raises:
        DatasetFileError: the data is missing or malformed as a whole (a bad header, a
            truncated IDX file); a bad CSV row or image file is recorded in `unreadable`.
    """
    if data_dir is not None:
        with denied_in_one_line():
            layout, source = detect_layout(data_dir, files), data_dir
    else:
        layout, source = "idx", fashion_mnist_dir(cache_dir, files, system_dir, mirror_url)
    with denied_in_one_line():
        key = input_key(layout, source, files, test_fraction, seed)
    # Keyed by the parsers' code too: a changed parser (class names, say) parses again.
    target = cache_dir / "interim" / content_key(key, project_code_version("tasks.data.ingest"))

    def parse(staging: Path) -> None:
        with denied_in_one_line():  # not the cache's: its writing errors name the cache
            parsed = parse_layout(layout, source, files, test_fraction, seed)
        save_arrays(staging, parsed.arrays)
        (staging / CHECKSUMS_FILE).write_text(json.dumps(parsed.file_sha256, indent=2))
        description = {
            "layout": layout,
            "class_names": list(parsed.class_names),
            "split_files": parsed.split_files,
            "unreadable": [[entry.file, entry.problem] for entry in parsed.unreadable],
        }
        (staging / DATASET_FILE).write_text(json.dumps(description, indent=2))
        if parsed.origins is not None:
            (staging / ORIGINS_FILE).write_text(json.dumps(parsed.origins))

    def read(entry: Path) -> RawDataset:
        description = json.loads((entry / DATASET_FILE).read_text())
        return RawDataset(
            source,
            json.loads((entry / CHECKSUMS_FILE).read_text()),
            array_refs(entry, RAW_ARRAYS),
            class_names=tuple(description["class_names"]),
            layout=layout,
            split_files=description["split_files"],
            origins=entry / ORIGINS_FILE if (entry / ORIGINS_FILE).is_file() else None,
            unreadable=tuple(UnreadableFile(*pair) for pair in description["unreadable"]),
        )

    label = f"the {LAYOUT_NAMES[layout]} parsed from {source}"
    return cached_stage(target, parse, read, label, refresh, logger)


def is_network_error(exc: BaseException) -> bool:
    """Worth a retry: the download failed on a transient network error, not on a name
    that does not resolve and not on the data."""
    return isinstance(exc, NoDataSourceError) and exc.transient
