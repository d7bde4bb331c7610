"""Validation of the parsed data before anything is trained: two gates, both reported.

The schema gate (pandera) checks images as a wide frame (one uint8 column per pixel),
labels as one column, and each split as a whole (every class present in a fair
share); its failures are collected lazily and reported together as one readable
error. The checksum gate then compares each file's decompressed SHA-256 with the
published Fashion-MNIST files'. Schema first: it explains more than a hash does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors
from prefect import task

from tasks.contracts import CLASS_NAMES, IMAGE_SHAPE, RawDataset, ValidationSummary
from tasks.errors import DatasetFileError, DataValidationError
from tasks.ingest import FASHION_MNIST_FILES, IdxFile, checksum_mismatch
from tasks.runtime import stage_logger
from tasks.storage import cached_stage, code_version, content_key

N_PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
N_CLASSES = len(CLASS_NAMES)
# A class with less than half of its even share would make a stratified split and
# per-class metrics unreliable.
MIN_CLASS_SHARE = 0.5 / N_CLASSES
EXAMPLES_SHOWN = 3
SUMMARY_FILE = "summary.json"

IMAGE_SCHEMA = pa.DataFrameSchema(
    columns={r"^pixel_\d+$": pa.Column(np.uint8, regex=True)},
    checks=[
        pa.Check(
            lambda frame: frame.shape[1] == N_PIXELS,
            name=f"has_{N_PIXELS}_pixel_columns",
        ),
        pa.Check(lambda frame: frame.max(axis=1) > 0, name="image_not_blank"),
    ],
    strict=True,
)

LABEL_SCHEMA = pa.DataFrameSchema(
    columns={"label": pa.Column(np.uint8, pa.Check.isin(range(N_CLASSES)))},
    strict=True,
)


def images_frame(images: np.ndarray) -> pd.DataFrame:
    flat = np.asarray(images).reshape(len(images), -1)
    return pd.DataFrame(flat, columns=[f"pixel_{i}" for i in range(flat.shape[1])], copy=False)


def labels_frame(labels: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"label": np.asarray(labels)})


def summarise_failures(subject: str, error: SchemaErrors) -> list[str]:
    """One line per failed check: what failed, on how many rows, and a few examples."""
    lines = []
    for check, group in error.failure_cases.groupby("check", sort=False, dropna=False):
        columns = group.loc[group["schema_context"] == "Column", "column"].dropna().unique()
        where = f" on column {columns[0]}" if len(columns) == 1 else ""
        if len(columns) > 1:
            where = f" on {len(columns)} columns ({', '.join(map(str, columns[:3]))}, ...)"
        first_per_row = group.dropna(subset=["index"]).drop_duplicates("index").sort_values("index")
        if len(first_per_row):
            examples = ", ".join(
                f"row {int(row.index)}: {row.failure_case}"
                for row in first_per_row.head(EXAMPLES_SHOWN).itertuples()
            )
            lines.append(
                f"{subject}: {check}{where} failed for {len(first_per_row)} rows (e.g. {examples})"
            )
        else:
            found = ", ".join(map(str, group["failure_case"].unique()[:EXAMPLES_SHOWN]))
            lines.append(f"{subject}: {check}{where} failed (found {found})")
    return lines


def check_class_balance(subject: str, labels: np.ndarray) -> list[str]:
    """Every class must hold a fair share of the split, or stratification and per-class
    metrics become unreliable."""
    counts = np.bincount(labels, minlength=N_CLASSES)[:N_CLASSES]
    scarce = np.flatnonzero(counts < MIN_CLASS_SHARE * len(labels))
    if not len(scarce):
        return []
    found = ", ".join(f"{CLASS_NAMES[label]} {counts[label]}" for label in scarce)
    return [
        f"{subject}: classes with fewer than {MIN_CLASS_SHARE:.0%} of {len(labels)} rows: {found}"
    ]


def validate_dataset(arrays: Mapping[str, np.ndarray]) -> ValidationSummary:
    """Validate both splits; raise one `DataValidationError` listing every failure."""
    failures = []
    for split in ("train", "test"):
        for subject, schema, frame in (
            (f"{split} images", IMAGE_SCHEMA, images_frame(arrays[f"{split}_images"])),
            (f"{split} labels", LABEL_SCHEMA, labels_frame(arrays[f"{split}_labels"])),
        ):
            try:
                schema.validate(frame, lazy=True)
            except SchemaErrors as error:
                failures += summarise_failures(subject, error)
        if not any(failure.startswith(f"{split} labels") for failure in failures):
            failures += check_class_balance(f"{split} labels", arrays[f"{split}_labels"])
    if failures:
        raise DataValidationError("data validation failed: " + "; ".join(failures))
    return ValidationSummary(
        rows={split: len(arrays[f"{split}_labels"]) for split in ("train", "test")},
        class_counts={
            split: np.bincount(arrays[f"{split}_labels"], minlength=N_CLASSES).tolist()
            for split in ("train", "test")
        },
        gates={
            "schema": f"passed: {N_PIXELS} uint8 pixels per image, not blank; labels in "
            f"0-{N_CLASSES - 1}; every class at least {MIN_CLASS_SHARE:.0%} of each split"
        },
    )


def verify_checksums(raw: RawDataset, published: Mapping[str, IdxFile]) -> str:
    """The checksum gate: what it found when every file is the published one.

    Raises:
        DatasetFileError: naming the first file that differs.
    """
    files = {spec.name: spec for spec in published.values()}
    problems = [
        problem
        for name, spec in files.items()
        if (problem := checksum_mismatch(raw.source_dir / name, raw.file_sha256[name], spec))
    ]
    if problems:
        more = f" (and {len(problems) - 1} more files differ)" if len(problems) > 1 else ""
        raise DatasetFileError(problems[0] + more)
    return f"passed: the {len(published)} files match the published Fashion-MNIST SHA-256"


def validate_raw_dataset(
    raw: RawDataset,
    cache_dir: Path,
    published: Mapping[str, IdxFile] = FASHION_MNIST_FILES,
    refresh: bool = False,
    logger: logging.Logger | None = None,
) -> ValidationSummary:
    """Pass the data through both gates; the schema gate's result is cached per content
    and code version, the checksum gate is a comparison of hashes ingestion took."""
    logger = logger or logging.getLogger(__name__)
    raw_hashes = {name: ref.sha256 for name, ref in raw.arrays.items()}
    target = cache_dir / "validated" / content_key(raw_hashes, code_version(__file__))

    def validate_schema(staging: Path) -> None:
        summary = validate_dataset({name: ref.load() for name, ref in raw.arrays.items()})
        (staging / SUMMARY_FILE).write_text(json.dumps(asdict(summary)))

    def read(entry: Path) -> ValidationSummary:
        return ValidationSummary(**json.loads((entry / SUMMARY_FILE).read_text()))

    summary = cached_stage(target, validate_schema, read, "the schema gate", refresh, logger)
    gates = summary.gates | {"checksums": verify_checksums(raw, published)}
    for gate, outcome in gates.items():
        logger.info("%s gate %s", gate, outcome)
    return replace(summary, gates=gates)


@task(name="validate-data")
def validate_task(raw: RawDataset, cache_dir: Path, refresh: bool) -> ValidationSummary:
    return validate_raw_dataset(raw, cache_dir, refresh=refresh, logger=stage_logger())
