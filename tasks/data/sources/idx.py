"""The IDX layout: Fashion-MNIST's four files, gzipped as published or uncompressed.

Every file is parsed strictly: magic number, dimensions, payload length, 28x28 images,
as many labels as images; a problem names the file, what was expected and what was
found. Whether the files are the published ones is not decided here: each file's SHA-256
is taken of its *decompressed* content (distributions recompress the `.gz` files), and
the validation stage compares it with the published checksums.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from tasks.core.contracts import CLASS_NAMES, IMAGE_SHAPE
from tasks.core.errors import DatasetFileError
from tasks.data.sources.base import ParsedData, class_names_for

IMAGES_MAGIC = 0x0803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x0801  # unsigned bytes, 1 dimension


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


def idx_paths(directory: Path, files: Mapping[str, IdxFile]) -> dict[str, Path]:
    """Each file's path: the `.gz` one, or else an uncompressed copy of that name without
    `.gz` when only that exists."""
    paths = {}
    for key, spec in files.items():
        plain = directory / spec.name.removesuffix(".gz")
        gzipped = directory / spec.name
        paths[key] = plain if plain.is_file() and not gzipped.is_file() else gzipped
    return paths


def missing_idx_files(directory: Path, files: Mapping[str, IdxFile]) -> list[str]:
    """The published names of the files found in neither form."""
    paths = idx_paths(directory, files)
    return [spec.name for key, spec in files.items() if not paths[key].is_file()]


# Bytes decompressed at a time: a payload grows only as far as the file really holds.
READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class IdxContent:
    """An IDX file's array, and the checksum the validation stage compares."""

    array: np.ndarray
    sha256: str  # of the decompressed bytes


def read_idx(path: Path, expected_magic: int, compressed: bool | None = None) -> IdxContent:
    """The array of an IDX file, gzip-compressed when `compressed` (by default when its
    name ends in `.gz`), with the SHA-256 of its decompressed content; or an error naming
    the file and the problem.

    The header is checked before the payload is read, and the payload read only as far
    as the header announces: a file that is not what its name says fails after its first
    bytes instead of being inflated whole, and a header promising more than the file
    holds allocates only what it holds."""
    compressed = path.suffix == ".gz" if compressed is None else compressed
    try:
        with gzip.open(path, "rb") if compressed else path.open("rb") as stream:
            return _read_idx_stream(stream, expected_magic, path)
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


def _read_idx_stream(stream: BinaryIO, expected_magic: int, source: Path) -> IdxContent:
    """Header, sizes and payload length checked, in that order, as they are read."""
    digest = hashlib.sha256()

    def take(size: int) -> bytearray:
        data = bytearray()
        while len(data) < size and (chunk := stream.read(min(READ_CHUNK, size - len(data)))):
            data += chunk
        digest.update(data)
        return data

    magic_bytes = take(4)
    if len(magic_bytes) < 4:
        raise DatasetFileError(f"{source}: {len(magic_bytes)} bytes is too short for an IDX header")
    (magic,) = struct.unpack(">I", magic_bytes)
    if magic != expected_magic:
        kind = "images" if expected_magic == IMAGES_MAGIC else "labels"
        raise DatasetFileError(
            f"{source}: bad magic number {magic}; expected {expected_magic} ({kind})"
        )
    ndim = magic & 0xFF
    dimensions = take(4 * ndim)
    if len(dimensions) < 4 * ndim:
        raise DatasetFileError(
            f"{source}: header is cut short: {4 + len(dimensions)} bytes, expected {4 + 4 * ndim}"
        )
    shape = struct.unpack(f">{ndim}I", dimensions)
    expected_payload = int(np.prod(shape, dtype=np.int64))
    payload = take(expected_payload)
    dims = " x ".join(map(str, shape))
    if len(payload) < expected_payload:
        raise DatasetFileError(
            f"{source}: payload has {len(payload)} bytes; the header's {dims} needs "
            f"{expected_payload}"
        )
    if stream.read(1):
        raise DatasetFileError(
            f"{source}: payload is longer than the {expected_payload} bytes the header's "
            f"{dims} needs"
        )
    return IdxContent(np.frombuffer(payload, dtype=np.uint8).reshape(shape), digest.hexdigest())


def checksum_mismatch(path: Path, actual: str, spec: IdxFile) -> str | None:
    """Why a file's decompressed SHA-256 is not the published one, or None if it is."""
    if actual == spec.sha256:
        return None
    return (
        f"{path}: checksum mismatch: decompressed content has SHA-256 {actual[:16]}…, "
        f"expected {spec.sha256[:16]}… (not the published Fashion-MNIST file)"
    )


def check_split(
    images: np.ndarray, labels: np.ndarray, images_path: Path, labels_path: Path
) -> None:
    """One split's images are 28x28 and as many as its labels."""
    if images.shape[1:] != IMAGE_SHAPE:
        found = " x ".join(map(str, images.shape[1:]))
        raise DatasetFileError(f"{images_path}: images are {found} pixels; expected 28 x 28")
    if len(images) != len(labels):
        raise DatasetFileError(
            f"{images_path.parent}: {images_path.name} has {len(images)} images but "
            f"{labels_path.name} has {len(labels)} labels"
        )


def load_idx(directory: Path, files: Mapping[str, IdxFile]) -> ParsedData:
    """The four files parsed, with the SHA-256 of each one's decompressed content.

    Raises:
        DatasetFileError: naming the first file that is missing or malformed.
    """
    paths = idx_paths(directory, files)
    arrays, checksums = {}, {}
    for key, spec in files.items():
        content = read_idx(paths[key], spec.magic)
        checksums[spec.name], arrays[key] = content.sha256, content.array
    for split in ("train", "test"):
        check_split(
            arrays[f"{split}_images"],
            arrays[f"{split}_labels"],
            paths[f"{split}_images"],
            paths[f"{split}_labels"],
        )
    # Files named like Fashion-MNIST's: a label beyond 9 is out of range, not an 11th class.
    labels = [arrays["train_labels"], arrays["test_labels"]]
    names = class_names_for(directory, labels, most_labels=len(CLASS_NAMES))
    return ParsedData(
        arrays,
        names,
        split_files={split: paths[f"{split}_images"].name for split in ("train", "test")}
        | {f"{split}_labels": paths[f"{split}_labels"].name for split in ("train", "test")},
        file_sha256=checksums,
    )
