"""Ingestion: find the four Fashion-MNIST IDX files and parse them strictly.

Sources, in order: the directory the user names (used alone), the project's cache
`<cache_dir>/raw`, Debian's `dataset-fashion-mnist` package, and a download from the
dataset's official mirror into the cache. Each file's SHA-256 is taken of its
*decompressed* content, because distributions recompress the gzip files; whether
those match the published checksums is the validation stage's gate, not this one's.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
import struct
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prefect import task
from prefect.tasks import exponential_backoff

from tasks.contracts import IMAGE_SHAPE, RawDataset
from tasks.errors import DatasetFileError, UsageError
from tasks.runtime import stage_logger
from tasks.storage import (
    array_refs,
    cached_stage,
    code_version,
    content_key,
    save_arrays,
    sha256_file,
)

IMAGES_MAGIC = 0x0803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x0801  # unsigned bytes, 1 dimension

MIRROR_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
SYSTEM_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class IdxFile:
    name: str
    magic: int
    sha256: str  # of the decompressed bytes


FASHION_MNIST_FILES: dict[str, IdxFile] = {
    "train_images": IdxFile(
        "train-images-idx3-ubyte.gz",
        IMAGES_MAGIC,
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    ),
    "train_labels": IdxFile(
        "train-labels-idx1-ubyte.gz",
        LABELS_MAGIC,
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    ),
    "test_images": IdxFile(
        "t10k-images-idx3-ubyte.gz",
        IMAGES_MAGIC,
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    ),
    "test_labels": IdxFile(
        "t10k-labels-idx1-ubyte.gz",
        LABELS_MAGIC,
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    ),
}
RAW_ARRAYS = tuple(FASHION_MNIST_FILES)
CHECKSUMS_FILE = "decompressed_sha256.json"


def read_gzip(path: Path) -> bytes:
    """The decompressed bytes of `path`, or an error naming the file and the problem."""
    try:
        with gzip.open(path, "rb") as stream:
            return stream.read()
    except FileNotFoundError:
        raise DatasetFileError(f"{path}: file not found") from None
    except gzip.BadGzipFile as exc:
        raise DatasetFileError(f"{path}: not a gzip file ({exc})") from None
    except EOFError:
        raise DatasetFileError(
            f"{path}: truncated gzip file (the compressed stream ends early)"
        ) from None
    except zlib.error as exc:
        raise DatasetFileError(f"{path}: corrupt gzip data ({exc})") from None


def parse_idx(content: bytes, expected_magic: int, source: Path | str) -> np.ndarray:
    """Parse an IDX byte string of unsigned bytes, checking header, sizes and payload length."""
    if len(content) < 4:
        raise DatasetFileError(f"{source}: {len(content)} bytes is too short for an IDX header")
    (magic,) = struct.unpack(">I", content[:4])
    if magic != expected_magic:
        kind = "images" if expected_magic == IMAGES_MAGIC else "labels"
        raise DatasetFileError(
            f"{source}: bad magic number {magic}; expected {expected_magic} ({kind})"
        )
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    if len(content) < header_size:
        raise DatasetFileError(
            f"{source}: header is cut short: {len(content)} bytes, expected {header_size}"
        )
    shape = struct.unpack(f">{ndim}I", content[4:header_size])
    payload = len(content) - header_size
    expected_payload = int(np.prod(shape, dtype=np.int64))
    if payload != expected_payload:
        dims = " x ".join(map(str, shape))
        raise DatasetFileError(
            f"{source}: payload has {payload} bytes; the header's {dims} needs {expected_payload}"
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header_size).reshape(shape)


def read_idx_file(path: Path, spec: IdxFile) -> np.ndarray:
    """Decompress and parse one file, checking its structure."""
    return parse_idx(read_gzip(path), spec.magic, path)


def checksum_mismatch(path: Path, actual: str, spec: IdxFile) -> str | None:
    """Why a file's decompressed SHA-256 is not the published one, or None if it is."""
    if actual == spec.sha256:
        return None
    return (
        f"{path}: checksum mismatch: decompressed content has SHA-256 {actual[:16]}…, "
        f"expected {spec.sha256[:16]}… (not the published Fashion-MNIST file)"
    )


def decompressed_sha256(path: Path) -> str:
    return hashlib.sha256(read_gzip(path)).hexdigest()


def load_split(directory: Path, images: IdxFile, labels: IdxFile) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one split, checked for image size and matching counts."""
    image_array = read_idx_file(directory / images.name, images)
    label_array = read_idx_file(directory / labels.name, labels)
    if image_array.shape[1:] != IMAGE_SHAPE:
        found = " x ".join(map(str, image_array.shape[1:]))
        raise DatasetFileError(
            f"{directory / images.name}: images are {found} pixels; expected 28 x 28"
        )
    if len(image_array) != len(label_array):
        raise DatasetFileError(
            f"{directory}: {images.name} has {len(image_array)} images but "
            f"{labels.name} has {len(label_array)} labels"
        )
    return image_array, label_array


def load_fashion_mnist(
    directory: Path, files: Mapping[str, IdxFile] = FASHION_MNIST_FILES
) -> dict[str, np.ndarray]:
    train_images, train_labels = load_split(directory, files["train_images"], files["train_labels"])
    test_images, test_labels = load_split(directory, files["test_images"], files["test_labels"])
    return {
        "train_images": train_images,
        "train_labels": train_labels,
        "test_images": test_images,
        "test_labels": test_labels,
    }


def _missing(directory: Path, files: Mapping[str, IdxFile]) -> list[str]:
    return [spec.name for spec in files.values() if not (directory / spec.name).is_file()]


def download_file(url: str, target: Path, spec: IdxFile) -> None:
    """Download `url` to `target` atomically: verified first, then renamed into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, partial_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    partial = Path(partial_name)
    try:
        with (
            os.fdopen(descriptor, "wb") as sink,
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response,
        ):
            shutil.copyfileobj(response, sink)
        try:
            read_idx_file(partial, spec)
            problem = checksum_mismatch(partial, decompressed_sha256(partial), spec)
        except DatasetFileError as exc:
            problem = str(exc)
        if problem:
            raise DatasetFileError(f"{url}: downloaded file is bad: {problem}")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def check_data_dir(data_dir: Path, files: Mapping[str, IdxFile] = FASHION_MNIST_FILES) -> None:
    """A directory the user named holds the files, or the error says what it lacks.

    Raises:
        UsageError: `data_dir` is a file.
        DatasetFileError: it does not exist or lacks files.
    """
    if data_dir.is_file():
        raise UsageError(f"{data_dir}: is a file, not a directory")
    if not data_dir.is_dir():
        raise DatasetFileError(f"{data_dir}: data directory does not exist")
    if missing := _missing(data_dir, files):
        raise DatasetFileError(f"{data_dir}: missing {', '.join(missing)}")


def resolve_source(
    data_dir: Path | None,
    cache_dir: Path,
    files: Mapping[str, IdxFile] = FASHION_MNIST_FILES,
    system_dir: Path = SYSTEM_DATA_DIR,
    mirror_url: str = MIRROR_URL,
) -> Path:
    """The directory to read; downloads into `<cache_dir>/raw` only when no source has the files."""
    if data_dir is not None:
        check_data_dir(data_dir, files)
        return data_dir
    raw_dir = cache_dir / "raw"
    for candidate in (raw_dir, system_dir):
        if candidate.is_dir() and not _missing(candidate, files):
            return candidate
    for name in _missing(raw_dir, files):
        spec = next(spec for spec in files.values() if spec.name == name)
        download_file(mirror_url + name, raw_dir / name, spec)
    return raw_dir


def ingest_dataset(
    data_dir: Path | None,
    cache_dir: Path,
    files: Mapping[str, IdxFile] = FASHION_MNIST_FILES,
    system_dir: Path = SYSTEM_DATA_DIR,
    mirror_url: str = MIRROR_URL,
    refresh: bool = False,
    logger: logging.Logger | None = None,
) -> RawDataset:
    """Resolve and parse the files into a cache entry under `<cache_dir>/interim/`.

    The entry is keyed by the `.gz` files' own bytes, so unchanged files are not
    decompressed or parsed again; other bytes make another key and get parsed in full.
    """
    source = resolve_source(data_dir, cache_dir, files, system_dir, mirror_url)
    gz_sha256 = {spec.name: sha256_file(source / spec.name) for spec in files.values()}
    target = cache_dir / "interim" / content_key(gz_sha256, code_version(__file__))

    def parse(staging: Path) -> None:
        save_arrays(staging, load_fashion_mnist(source, files))
        checksums = {spec.name: decompressed_sha256(source / spec.name) for spec in files.values()}
        (staging / CHECKSUMS_FILE).write_text(json.dumps(checksums, indent=2))

    def read(entry: Path) -> RawDataset:
        checksums = json.loads((entry / CHECKSUMS_FILE).read_text())
        return RawDataset(source, checksums, array_refs(entry, RAW_ARRAYS))

    return cached_stage(target, parse, read, f"the arrays parsed from {source}", refresh, logger)


def is_network_error(exc: BaseException) -> bool:
    """Worth a retry: the mirror or the network failed, not the data."""
    return isinstance(exc, urllib.error.URLError | TimeoutError | ConnectionError)


def _retry_on_network_error(task, task_run, state) -> bool:
    return is_network_error(state.result(raise_on_failure=False))


# Retried: a download is the one step whose failure may be gone a minute later.
@task(
    name="ingest-fashion-mnist",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=10),
    retry_condition_fn=_retry_on_network_error,
)
def ingest_task(data_dir: Path | None, cache_dir: Path, refresh: bool) -> RawDataset:
    return ingest_dataset(data_dir, cache_dir, refresh=refresh, logger=stage_logger())
