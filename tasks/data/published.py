"""Data named and shaped like Fashion-MNIST whose content differs from the published files.

A corrupt download or copy keeps the files' names and shapes, so it passes every gate and
is trained on as the user's own data. That deserves a WARNING rather than the checksum
gate's INFO line: it is named here, and counted image by image (or label by label)
against a published copy when one is on this machine (Debian's `dataset-fashion-mnist`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from tasks.core.contracts import IMAGE_SHAPE, RawDataset
from tasks.core.errors import DatasetFileError
from tasks.data.ingest import SYSTEM_DATA_DIR
from tasks.data.sources.idx import FASHION_MNIST_FILES, IdxFile, read_idx

OFFICIAL_NAME = "Fashion-MNIST"
PUBLISHED_ROWS = {"train": 60_000, "test": 10_000}
ROWS_SHOWN = 3


def near_miss_warning(
    raw: RawDataset,
    published: Mapping[str, IdxFile] = FASHION_MNIST_FILES,
    reference_dir: Path = SYSTEM_DATA_DIR,
    published_rows: Mapping[str, int] = PUBLISHED_ROWS,
) -> str:
    """Why IDX files named and shaped like the published ones are not them, in one
    sentence; "" for the published files themselves and for data shaped otherwise."""
    if raw.layout != "idx" or set(raw.file_sha256) != {s.name for s in published.values()}:
        return ""
    if any(
        tuple(raw.arrays[f"{split}_images"].shape) != (rows, *IMAGE_SHAPE)
        for split, rows in published_rows.items()
    ):
        return ""
    differing = [
        (key, spec) for key, spec in published.items() if raw.file_sha256[spec.name] != spec.sha256
    ]
    if not differing:
        return ""
    details = "; ".join(difference(raw, key, spec, reference_dir) for key, spec in differing)
    return (
        f"named and shaped like {OFFICIAL_NAME}, but {details}: trained on as your data; "
        f"its results are not comparable with published {OFFICIAL_NAME} results"
    )


def difference(raw: RawDataset, key: str, spec: IdxFile, reference_dir: Path) -> str:
    """How one file differs from its published version: the rows that differ, when a
    published copy is in `reference_dir`; else its checksum."""
    checksum = (
        f"{spec.name} differs from the published file (SHA-256 "
        f"{raw.file_sha256[spec.name][:16]}…, expected {spec.sha256[:16]}…)"
    )
    reference = reference_dir / spec.name
    try:
        content = read_idx(reference, spec.magic)
    except (OSError, DatasetFileError):
        return checksum
    if content.sha256 != spec.sha256:
        return checksum  # the copy here is not the published file either
    expected = content.array
    found = raw.arrays[key].load()
    if found.shape != expected.shape:
        return checksum
    rows = np.flatnonzero((found != expected).reshape(len(found), -1).any(axis=1))
    if not len(rows):
        return checksum
    kind = "image" if key.endswith("images") else "label"
    shown = ", ".join(str(row + 1) for row in rows[:ROWS_SHOWN])
    more = "…" if len(rows) > ROWS_SHOWN else ""
    counted = f"{len(rows):,} {kind}{'s' if len(rows) > 1 else ''} of {spec.name}"
    return (
        f"{counted} differ{'' if len(rows) > 1 else 's'} from the published file "
        f"(row{'s' if len(rows) > 1 else ''} {shown}{more}, compared with {reference})"
    )
