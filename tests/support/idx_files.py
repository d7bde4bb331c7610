"""Tiny real IDX files for tests: a struct-packed header and a few 28x28 images."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np

from tasks.data.sources.idx import FASHION_MNIST_FILES, IMAGES_MAGIC, LABELS_MAGIC, IdxFile


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: magic (0x08 type, ndim), one uint32 per dimension."""
    magic = IMAGES_MAGIC if array.ndim == 3 else LABELS_MAGIC
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx_gz(path: Path, content: bytes) -> str:
    """Write gzip-compressed `content`; return the SHA-256 of the decompressed bytes."""
    path.write_bytes(gzip.compress(content))
    return hashlib.sha256(content).hexdigest()


def make_images(labels: np.ndarray, seed: int) -> np.ndarray:
    """Learnable 28x28 images: class k lights up band k of the image, plus noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(len(labels), 28, 28), dtype=np.uint8)
    for row, label in enumerate(labels):
        images[row, 2 * label + 4 : 2 * label + 7, 4:24] = 255
    return images


def write_dataset(directory: Path, n_train: int = 300, n_test: int = 100, seed: int = 0):
    """The four Fashion-MNIST files with synthetic content; returns their IdxFile specs."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, size in (("train", n_train), ("test", n_test)):
        labels = rng.permutation(np.arange(size) % 10).astype(np.uint8)
        arrays[f"{split}_images"] = make_images(labels, seed + size)
        arrays[f"{split}_labels"] = labels
    files = {}
    for key, spec in FASHION_MNIST_FILES.items():
        digest = write_idx_gz(directory / spec.name, idx_bytes(arrays[key]))
        files[key] = IdxFile(spec.name, spec.magic, digest)
    return files, arrays
