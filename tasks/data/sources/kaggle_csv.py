"""Kaggle's CSV layout: `fashion-mnist_train.csv` and `fashion-mnist_test.csv`, each with
the header `label,pixel1,…,pixel784` and one image a row.

A file without that header is refused, naming it. A malformed row (too many or too few
pixels, a value that is not an integer, a pixel or label outside 0-255) is left out of
the arrays and recorded as unreadable with its row number (the header is not counted),
for the validation stage to refuse and list; blank lines at the end are ignored. Rows of
only digits and commas, nearly all of them, are parsed in bulk by pandas' C parser; the
others one by one, to say what is wrong with them.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.core.contracts import IMAGE_SHAPE, UnreadableFile
from tasks.core.errors import DatasetFileError
from tasks.data.sources.base import SPLITS, ParsedData, class_names_for

CSV_FILES = {"train": "fashion-mnist_train.csv", "test": "fashion-mnist_test.csv"}
N_PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
COLUMNS = ("label", *(f"pixel{i}" for i in range(1, N_PIXELS + 1)))
EXPECTED_HEADER = f"label,pixel1,…,pixel{N_PIXELS}"
BULK_ROWS = 10_000  # rows parsed at once: 60 MB of int64 values


def missing_csv_files(directory: Path) -> list[str]:
    return [name for name in CSV_FILES.values() if not (directory / name).is_file()]


def load_csv(directory: Path) -> ParsedData:
    """Both files' readable rows, and the rows left out with what is wrong with each.

    Raises:
        DatasetFileError: a file cannot be read or its header is not Kaggle's.
    """
    arrays, kept, unreadable = {}, {}, []
    for split in SPLITS:
        rows, kept[split], problems = read_csv_rows(directory / CSV_FILES[split])
        arrays[f"{split}_images"] = rows[:, 1:].reshape(-1, *IMAGE_SHAPE)
        arrays[f"{split}_labels"] = rows[:, 0].copy()
        unreadable += problems
    # With rows left out, an array's row is no longer the file's: name each one.
    origins = None
    if unreadable:
        origins = {split: [f"{CSV_FILES[split]} row {row + 1}" for row in kept[split].tolist()]
                   for split in SPLITS}  # fmt: skip
    return ParsedData(
        arrays,
        class_names_for(directory, [arrays["train_labels"], arrays["test_labels"]]),
        split_files=dict(CSV_FILES),
        unreadable=tuple(unreadable),
        origins=origins,
    )


def read_csv_rows(path: Path) -> tuple[np.ndarray, np.ndarray, list[UnreadableFile]]:
    """(uint8 rows of label and pixels, their 0-based rows in the file, the rows left
    out), all in the file's order."""
    try:
        content = path.read_bytes()
    except OSError as error:
        raise DatasetFileError(f"{path}: cannot be read ({error.strerror})") from None
    header, _, body = content.partition(b"\n")
    check_header(path, header)
    lines = [line.rstrip(b"\r") for line in body.split(b"\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    values = np.zeros((len(lines), len(COLUMNS)), dtype=np.uint8)
    parsed = np.zeros(len(lines), dtype=bool)
    plain = [row for row, line in enumerate(lines) if _is_plain(line)]
    for start in range(0, len(plain), BULK_ROWS):
        rows = np.array(plain[start : start + BULK_ROWS])
        bulk = _parse_bulk([lines[row] for row in rows])
        if bulk is not None:  # else a number beyond int64: one by one below
            in_range = (bulk <= 255).all(axis=1)
            values[rows[in_range]] = bulk[in_range]
            parsed[rows[in_range]] = True
    problems = []
    for row in np.flatnonzero(~parsed):
        fields = lines[row].split(b",")
        if problem := row_problem(fields):
            problems.append(UnreadableFile(f"{path.name} row {row + 1}", problem))
        else:  # spaces around a number, say: readable after all
            values[row] = [int(field) for field in fields]
            parsed[row] = True
    return values[parsed], np.flatnonzero(parsed), problems


def check_header(path: Path, header: bytes) -> None:
    """The first line names Kaggle's columns; quotes and spaces around names are allowed."""
    names = [
        name.strip().strip('"').strip()
        for name in header.decode("utf-8", errors="replace").lstrip("\ufeff").split(",")
    ]
    if not header.strip():
        raise DatasetFileError(f"{path}: no header line; expected {EXPECTED_HEADER}")
    if names[0].isdigit():
        raise DatasetFileError(
            f"{path}: no header line (the first line is data); expected {EXPECTED_HEADER}"
        )
    if len(names) != len(COLUMNS):
        raise DatasetFileError(
            f"{path}: header has {len(names)} columns; expected {len(COLUMNS)} ({EXPECTED_HEADER})"
        )
    for position, (found, expected) in enumerate(zip(names, COLUMNS, strict=True), start=1):
        if found != expected:
            raise DatasetFileError(
                f"{path}: header column {position} is {found!r}; expected {expected!r} "
                f"({EXPECTED_HEADER})"
            )


def _is_plain(line: bytes) -> bool:
    """Only digits and commas, 785 fields, none empty: the rows the bulk parser reads."""
    return (
        line.count(b",") == len(COLUMNS) - 1
        and not line.translate(None, b"0123456789,")
        and b",," not in line
        and line[:1] != b","
        and line[-1:] != b","
    )


def _parse_bulk(lines: list[bytes]) -> np.ndarray | None:
    try:
        frame = pd.read_csv(io.BytesIO(b"\n".join(lines)), header=None, dtype=np.int64)
    except (ValueError, OverflowError):
        return None
    return frame.to_numpy()


def row_problem(fields: list[bytes]) -> str | None:
    """What keeps a row from being an image, or None when it is one."""
    if fields == [b""]:
        return "empty row"
    if len(fields) != len(COLUMNS):
        return f"{len(fields) - 1} pixel values; expected {N_PIXELS}"
    for column, field in zip(COLUMNS, fields, strict=True):
        try:
            value = int(field)
        except ValueError:
            shown = field.decode("utf-8", errors="replace")[:20]
            return f"{column} is {shown!r}, not an integer"
        if not 0 <= value <= 255:
            return f"{column} is {value}; expected 0-255"
    return None
