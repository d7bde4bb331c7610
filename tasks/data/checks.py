"""The data gate's checks: pandera schemas per split, plain numpy across the dataset.

No check raises. Each adds `Problem` records, so one pass finds everything wrong with
the data at once: pandera's lazy validation for what a schema expresses (pixel columns,
dtype, range, blank images, labels), numpy for what it does not (images per class,
images shared by train and test, files ingestion could not read).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from tasks.core.contracts import (
    IMAGE_SHAPE,
    MAX_CLASSES,
    MIN_CLASSES,
    RawDataset,
    ValidationSummary,
)

SPLITS = ("train", "test")
N_PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]

# The kinds of problem, in the order a report lists them.
SHAPE = "image shape"
DTYPE = "wrong dtype"
RANGE = "pixel outside 0-255"
BLANK = "blank image"
LABEL = "label outside the classes"
FEW = "too few images of a class"
SHARED = "image in both train and test"
UNREADABLE = "unreadable file"
CLASS_COUNT = "number of classes"
LABELS_FROM_0 = (
    " (no image in train or test has label 0: labels number the classes from 0, "
    "Fashion-MNIST's 0-9)"
)
KINDS = (CLASS_COUNT, UNREADABLE, SHAPE, DTYPE, RANGE, BLANK, LABEL, FEW, SHARED)

# The pixel columns are checked as a whole, by frame-level checks: one pandera Column
# per pixel costs about 0.3 ms per column even on a few rows, and a wrong dtype then
# fails 784 times (two seconds to collect).
IMAGE_SCHEMA = pa.DataFrameSchema(
    columns={
        # The range is checked on each image's extremes, not on every pixel: a failure
        # is then one row per image, not one per pixel (millions, and slow to collect).
        "darkest": pa.Column(checks=pa.Check.in_range(0, 255, error=RANGE)),
        "brightest": pa.Column(
            checks=[pa.Check.in_range(0, 255, error=RANGE), pa.Check.gt(0, error=BLANK)]
        ),
    },
    checks=[
        pa.Check(
            lambda frame: frame.columns.str.startswith("pixel_").sum() == N_PIXELS, error=SHAPE
        ),
        pa.Check(lambda frame: (frame.dtypes == np.uint8).all(), error=DTYPE),
    ],
)


def label_schema(n_classes: int) -> pa.DataFrameSchema:
    return pa.DataFrameSchema(
        columns={"label": pa.Column(np.uint8, pa.Check.isin(range(n_classes), error=LABEL))},
        strict=True,
    )


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data: a row of `validation_errors.csv`.

    Attributes:
        split: "train" or "test"; empty for a file that never became a row.
        file: where it came from: an image file, a file's row, or a split's file.
        row: the image's index in its split's arrays (0-based); None for a whole split.
        check: the kind of problem, one of `KINDS`.
        problem: what was found and what was expected.
    """

    split: str
    file: str
    row: int | None
    check: str
    problem: str


def images_frame(images: np.ndarray) -> pd.DataFrame:
    """One column per pixel, and each image's darkest and brightest pixel."""
    flat = flat_images(images)
    frame = pd.DataFrame(flat, columns=[f"pixel_{i}" for i in range(flat.shape[1])], copy=False)
    if flat.size:
        frame["darkest"], frame["brightest"] = flat.min(axis=1), flat.max(axis=1)
    else:  # no pixels, no extremes: numpy refuses min and max of nothing
        frame["darkest"] = frame["brightest"] = np.zeros(len(flat), flat.dtype)
    return frame


def flat_images(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), int(np.prod(images.shape[1:], dtype=np.int64)))


def schema_problems(
    raw: RawDataset, split: str, images: np.ndarray, labels: np.ndarray
) -> list[Problem]:
    """What the split's images and labels break of their pandera schemas, every failure."""
    n_classes = len(raw.class_names)
    problems = []
    for schema, frame in (
        (IMAGE_SCHEMA, images_frame(images)),
        (label_schema(n_classes), pd.DataFrame({"label": labels})),
    ):
        try:
            schema.validate(frame, lazy=True)
        except SchemaErrors as error:
            problems += _failure_problems(raw, split, error.failure_cases, images, n_classes)
    return problems


def _failure_problems(
    raw: RawDataset, split: str, cases: pd.DataFrame, images: np.ndarray, n_classes: int
) -> list[Problem]:
    """pandera's failure cases as problems: one per failing image or label, one per split
    for a wrong shape or dtype."""
    source = split_source(raw, split)
    problems = []
    for check, group in cases.groupby("check", sort=False):
        if check == DTYPE:
            problems.append(
                Problem(split, source, None, DTYPE, f"pixels are {images.dtype}; expected uint8")
            )
        elif check.startswith("dtype("):  # the label column's
            found = group["failure_case"].iloc[0]
            problems.append(
                Problem(split, source, None, DTYPE, f"labels are {found}; expected uint8")
            )
        elif check == SHAPE:
            found = " x ".join(map(str, images.shape[1:]))
            problems.append(
                Problem(split, source, None, SHAPE, f"images are {found}; expected 28 x 28")
            )
        else:
            rows = group.dropna(subset=["index"]).drop_duplicates("index").sort_values("index")
            problems += [
                Problem(
                    split,
                    (raw.label_origin if check == LABEL else raw.origin)(split, int(row)),
                    int(row),
                    check,
                    describe(check, value, n_classes),
                )
                for row, value in zip(rows["index"], rows["failure_case"], strict=True)
            ]
    return problems


def describe(check: str, value: object, n_classes: int) -> str:
    """What one image or label that failed `check` has, and what was expected."""
    if check == RANGE:
        return f"a pixel of {value}; expected 0-255"
    if check == BLANK:
        return "every pixel is 0"
    if check == LABEL:
        return (
            f"label {value} is out of range: expected one of the {n_classes} classes, "
            f"0-{n_classes - 1}"
        )
    return f"{value} fails {check}"


def split_source(raw: RawDataset, split: str) -> str:
    """The file a split came from, or the split's name when it came from many."""
    return raw.split_files.get(split, split)


def class_counts(labels: np.ndarray, n_classes: int) -> list[int]:
    """Images per class; labels outside the classes are not counted (the schema names them)."""
    inside = labels[np.isin(labels, np.arange(n_classes))]
    return np.bincount(inside.astype(np.int64), minlength=n_classes).tolist()


def shared_images(train: np.ndarray, test: np.ndarray) -> dict[int, int]:
    """Test images whose pixels are exactly a train image's: test row -> first train row.

    Rows are compared by the SHA-256 of their bytes: one pass over each split.
    """
    first_in_train: dict[bytes, int] = {}
    for row, digest in enumerate(_row_digests(train)):
        first_in_train.setdefault(digest, row)
    return {
        row: first_in_train[digest]
        for row, digest in enumerate(_row_digests(test))
        if digest in first_in_train
    }


def _row_digests(images: np.ndarray) -> list[bytes]:
    flat = np.ascontiguousarray(flat_images(images))
    return [hashlib.sha256(row).digest() for row in flat]


def check_data(
    raw: RawDataset,
    arrays: Mapping[str, np.ndarray],
    min_images_per_class: int,
    max_duplicate_fraction: float,
) -> tuple[list[Problem], ValidationSummary]:
    """Every problem of the data, and what it passed (meaningful when there is none)."""
    n_classes = len(raw.class_names)
    problems = [Problem("", item.file, None, UNREADABLE, item.problem) for item in raw.unreadable]
    if not MIN_CLASSES <= n_classes <= MAX_CLASSES:
        expected = f"{n_classes} classes; expected {MIN_CLASSES} to {MAX_CLASSES}"
        problems.append(Problem("", str(raw.source_dir), None, CLASS_COUNT, expected))
    counts = {}
    # Labels 1 to 10 make an eleventh class: say why class 0 is empty, not only that it is.
    no_label_0 = not any((arrays[f"{split}_labels"] == 0).any() for split in SPLITS)
    for split in SPLITS:
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        problems += schema_problems(raw, split, images, labels)
        counts[split] = class_counts(labels, n_classes)
        problems += [
            Problem(
                split,
                split_source(raw, split),
                None,
                FEW,
                f"{raw.class_names[label]} has {count} images in {split}; "
                f"at least {min_images_per_class} needed"
                + (LABELS_FROM_0 if label == 0 and no_label_0 else ""),
            )
            for label, count in enumerate(counts[split])
            if count < min_images_per_class
        ]
    shared = shared_images(arrays["train_images"], arrays["test_images"])
    n_test = len(arrays["test_labels"])
    share = f"{len(shared) / max(n_test, 1):.2%}"
    allowed = f"at most {max_duplicate_fraction:.2%} allowed"
    if len(shared) > max_duplicate_fraction * n_test:
        problems += [
            Problem("test", raw.origin("test", row), row, SHARED,
                    f"same pixels as {raw.origin('train', first)}")
            for row, first in shared.items()
        ]  # fmt: skip
        # The share is said once, with the first example, not on every row.
        first = problems[-len(shared)]
        problems[-len(shared)] = replace(
            first, problem=f"{first.problem} ({share} of test in train, {allowed})"
        )
    summary = ValidationSummary(
        rows={split: len(arrays[f"{split}_labels"]) for split in SPLITS},
        class_counts=counts,
        gates={
            "schema": f"passed: {N_PIXELS} uint8 pixels per image, in 0-255, not blank; labels "
            f"within the {n_classes} classes; at least {min_images_per_class} images of every "
            "class in each split; no unreadable files",
            "duplicates": f"passed: {len(shared)} of {n_test} test images ({share}) also in "
            f"train; {allowed}",
        },
    )
    return problems, summary
