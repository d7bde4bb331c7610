"""What every layout's reader returns, and the class names of layouts without folders."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tasks.core.contracts import CLASS_NAMES, UnreadableFile
from tasks.core.errors import DatasetFileError

CLASSES_FILE = "classes.txt"
SPLITS = ("train", "test")


@dataclass(frozen=True)
class ParsedData:
    """One layout's data, before it is written to the cache.

    Attributes:
        arrays: train_images, train_labels, test_images, test_labels (uint8).
        file_sha256: IDX only: each file's decompressed content, keyed by the published
            file's name (`.gz`), also for an uncompressed copy.
        origins: per split, where each row came from: image folders' paths relative to the
            data dir; a CSV file's rows when some were left out.
    """

    arrays: dict[str, np.ndarray]
    class_names: tuple[str, ...]
    split_files: dict[str, str] = field(default_factory=dict)
    file_sha256: dict[str, str] = field(default_factory=dict)
    unreadable: tuple[UnreadableFile, ...] = ()
    origins: dict[str, list[str]] | None = None


def class_names_for(
    directory: Path, labels: Iterable[np.ndarray], most_labels: int | None = None
) -> tuple[str, ...]:
    """The names in `classes.txt` beside the data; without it Fashion-MNIST's when the
    labels go up to 9, else "0".."n-1" up to the largest label, or up to `most_labels`
    (labels beyond it are out of range, not more classes). Labels beyond the names stay:
    the validation stage refuses them, listing the rows.

    Raises:
        DatasetFileError: `classes.txt` is not UTF-8 text, is empty or repeats a name.
    """
    path = directory / CLASSES_FILE
    if path.is_file():
        return read_classes_file(path)
    largest = max((int(array.max()) for array in labels if array.size), default=0)
    if most_labels is not None:
        largest = min(largest, most_labels - 1)
    if largest == len(CLASS_NAMES) - 1:
        return CLASS_NAMES
    return tuple(str(label) for label in range(largest + 1))


def read_classes_file(path: Path) -> tuple[str, ...]:
    """One class name a line, label 0 first; blank lines and surrounding spaces ignored."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DatasetFileError(f"{path}: not UTF-8 text ({error.reason})") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise DatasetFileError(f"{path}: no class names; expected one name a line")
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise DatasetFileError(f"{path}: class names listed more than once: {', '.join(repeated)}")
    return tuple(names)
