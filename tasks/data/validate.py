"""Validation of the parsed data before anything is trained: the data gate, and its name.

Every dataset, the official one too, passes the same gate (`tasks.data.checks`): its
problems are all collected, summarised in one error line, one line per kind with
three examples, and listed in full in `<output_dir>/validation_errors.csv`. Nothing is
trained on data that fails. The published Fashion-MNIST checksums refuse nothing:
they decide only whether the data is called Fashion-MNIST or is the user's own.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, astuple, fields, replace
from pathlib import Path
from typing import TextIO

from tasks.core.contracts import RawDataset, ValidationSummary, content_hashes
from tasks.core.errors import DataValidationError, StorageError
from tasks.core.files import write_atomically
from tasks.core.storage import cached_stage, content_key, project_code_version
from tasks.data.checks import KINDS, Problem, check_data
from tasks.data.ingest import SYSTEM_DATA_DIR
from tasks.data.published import OFFICIAL_NAME, near_miss_warning
from tasks.data.sources.idx import FASHION_MNIST_FILES, IdxFile, checksum_mismatch

ERRORS_FILE = "validation_errors.csv"
SUMMARY_FILE = "summary.json"
EXAMPLES_SHOWN = 3


def name_dataset(
    raw: RawDataset, published: Mapping[str, IdxFile] = FASHION_MNIST_FILES
) -> tuple[str, str]:
    """The data's name and the checksum gate's line saying why.

    Only the published IDX files, byte for byte, are called Fashion-MNIST: results on
    anything else, however similar, are not comparable with published ones.
    """
    yours = f"your data: {raw.layout} at {raw.source_dir} ({len(raw.class_names)} classes)"
    if raw.layout != "idx":
        return yours, f"not {OFFICIAL_NAME}: {raw.layout} data, not the published IDX files"
    differ = [
        problem
        for spec in published.values()
        if (
            problem := checksum_mismatch(
                raw.source_dir / spec.name, raw.file_sha256.get(spec.name, ""), spec
            )
        )
    ]
    if not differ:
        return OFFICIAL_NAME, (
            f"passed: the {len(published)} files match the published {OFFICIAL_NAME} "
            f"SHA-256, so the data is called {OFFICIAL_NAME}"
        )
    more = f" (and {len(differ) - 1} more files differ)" if len(differ) > 1 else ""
    return yours, f"not {OFFICIAL_NAME}: {differ[0]}{more}"


def summarise_problems(problems: list[Problem]) -> list[str]:
    """One line per kind of problem: how many, and the first few with where they are."""
    order = {kind: position for position, kind in enumerate(KINDS)}
    by_kind: dict[str, list[Problem]] = {}
    for problem in sorted(problems, key=lambda problem: order.get(problem.check, len(KINDS))):
        by_kind.setdefault(problem.check, []).append(problem)
    lines = []
    for kind, group in by_kind.items():
        examples = ", ".join(
            " ".join(f"{item.file or item.split}: {item.problem}".split())  # one line each
            for item in group[:EXAMPLES_SHOWN]
        )
        lines.append(
            f"{kind}: {len(group)} ({'e.g. ' if len(group) > EXAMPLES_SHOWN else ''}{examples})"
        )
    return lines


def write_problems(problems: list[Problem], path: Path) -> None:
    """Write every problem to a CSV file, atomically: a reader sees the whole list or the
    previous one, never a part.

    Raises:
        StorageError: the file could not be written.
    """

    def write_rows(stream: TextIO) -> None:
        writer = csv.writer(stream)
        writer.writerow(field.name for field in fields(Problem))
        writer.writerows(astuple(problem) for problem in problems)

    write_atomically(path, write_rows)


def refuse(
    dataset: str, problems: list[Problem], errors_file: Path, logger: logging.Logger
) -> DataValidationError:
    """The error refusing the data, once its full list of problems is written.

    Raises:
        StorageError: the list could not be written; the summary is logged first.
    """
    summary = f"data validation failed for {dataset}: " + "; ".join(summarise_problems(problems))
    try:
        write_problems(problems, errors_file)
    except StorageError:
        logger.error("%s", summary)
        raise
    where = "it is" if len(problems) == 1 else f"all {len(problems)} are"
    return DataValidationError(f"{summary}; {where} listed in {errors_file}")


def validate_raw_dataset(
    raw: RawDataset,
    cache_dir: Path,
    output_dir: Path,
    min_images_per_class: int = 10,
    max_duplicate_fraction: float = 0.01,
    published: Mapping[str, IdxFile] = FASHION_MNIST_FILES,
    refresh: bool = False,
    logger: logging.Logger | None = None,
    reference_dir: Path = SYSTEM_DATA_DIR,
) -> ValidationSummary:
    """Pass the data through the gate and name it; warn about files named and shaped like
    the published ones whose content is not theirs (a published copy in `reference_dir`
    counts the images that differ).

    A pass is cached per content, class names, thresholds and code version; a failure is
    not cached, so the next run checks the data again.

    Raises:
        DataValidationError: one line per kind of problem; the full list is written to
            `<output_dir>/validation_errors.csv`.
        StorageError: that list could not be written.
    """
    logger = logger or logging.getLogger(__name__)
    dataset, checksum_gate = name_dataset(raw, published)
    if warning := near_miss_warning(raw, published, reference_dir):
        logger.warning("%s", warning)
    errors_file = output_dir / ERRORS_FILE
    key = content_key(
        content_hashes(raw.arrays),
        raw.class_names,
        min_images_per_class,
        max_duplicate_fraction,
        [asdict(item) for item in raw.unreadable],
        project_code_version("tasks.data.validate"),
    )

    def check(staging: Path) -> None:
        arrays = {name: ref.load() for name, ref in raw.arrays.items()}
        problems, summary = check_data(raw, arrays, min_images_per_class, max_duplicate_fraction)
        if problems:
            raise refuse(dataset, problems, errors_file, logger)
        (staging / SUMMARY_FILE).write_text(json.dumps(asdict(summary)))

    def read(entry: Path) -> ValidationSummary:
        return ValidationSummary(**json.loads((entry / SUMMARY_FILE).read_text()))

    target = cache_dir / "validated" / key
    summary = cached_stage(target, check, read, "the data gate", refresh, logger)
    # An earlier run's list beside this run's report would read as this data's problems.
    try:
        errors_file.unlink()
        logger.info("removed %s of an earlier run: this data passed", errors_file)
    except FileNotFoundError:
        pass
    except OSError as error:
        logger.warning("%s of an earlier run stays: %s", errors_file, error.strerror)
    gates = {"checksums": checksum_gate} | summary.gates
    for gate, outcome in gates.items():
        logger.info("%s gate %s", gate, outcome)
    return replace(summary, gates=gates, dataset=dataset, warning=warning)
