"""Batch prediction: read every input, predict in batches with a model loaded once, and
write one CSV row per image with its top-k classes, next to a provenance record.

Rows keep the inputs' order; an input that could not be read gets a row with the reason
in `error` and no prediction, and every other image is still classified.
"""

from __future__ import annotations

import csv
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import numpy as np

from tasks.core.cpus import usable_cores
from tasks.core.errors import PredictionInputError
from tasks.core.files import check_writable_directory, write_atomically
from tasks.core.storage import sha256_file
from tasks.predict.inputs import InputImages, find_inputs, read_input
from tasks.predict.model import load_run_model, pinned_run, read_run, run_class_names

BATCH_SIZE = 2048
DEFAULT_TOP_K = 3
LISTED_CLASSES = 20  # beyond this many, the summary lists only the classes predicted
# One prediction per image, or the reason it has none: (row name, probabilities, error).
Prediction = tuple[str, np.ndarray | None, str]


@dataclass(frozen=True)
class PredictionSummary:
    """What a batch prediction did; `provenance` names the run, model and model files.

    Attributes:
        per_class: images predicted as each of the run's classes, in label order.
        unreadable: each input that could not be read, and why.
        skipped: files in the folders given that are not named like images or arrays.
        load_seconds: loading the model; `seconds`: reading, predicting and writing.
    """

    output: Path
    provenance_file: Path
    provenance: dict
    images: int
    per_class: dict[str, int]
    unreadable: list[tuple[str, str]]
    skipped: int
    load_seconds: float
    predict_seconds: float
    seconds: float


def provenance_path(output: Path) -> Path:
    """Where the record of the run and model goes: beside the CSV."""
    return output.with_name(f"{output.stem}.provenance.json")


def classify(
    inputs: Iterable[InputImages],
    predict_proba: Callable[[np.ndarray], np.ndarray],
    batch_size: int = BATCH_SIZE,
) -> Iterator[Prediction]:
    """Every image's class probabilities, in input order, predicted `batch_size` at a time."""
    pending: list[tuple[str, str]] = []  # (row name, error) of rows not yet given out
    features: list[np.ndarray] = []

    def flush() -> Iterator[Prediction]:
        rows = iter(predict_proba(np.concatenate(features)) if features else ())
        for name, error in pending:
            yield name, None if error else next(rows), error
        pending.clear()
        features.clear()

    waiting = 0  # images in `features`
    for block in inputs:
        if block.error:
            pending.append((block.path, block.error))
        start = 0
        while start < len(block):
            stop = min(len(block), start + batch_size - waiting)
            features.append(block.features(start, stop))
            pending.extend((block.row_name(row), "") for row in range(start, stop))
            waiting += stop - start
            start = stop
            if waiting == batch_size:
                yield from flush()
                waiting = 0
    yield from flush()


def csv_header(top_k: int) -> list[str]:
    ranked = [f"top{i}_{field}" for i in range(1, top_k + 1) for field in ("class", "probability")]
    return ["path", "predicted_class", "predicted_label", "probability", *ranked, "error"]


def csv_row(prediction: Prediction, top_k: int, class_names: Sequence[str]) -> list[str]:
    name, probabilities, error = prediction
    if probabilities is None:
        return [name, "", "", "", *[""] * (2 * top_k), error]
    best = np.argsort(-probabilities, kind="stable")[:top_k]  # ties: the lower label first
    ranked = [
        cell for label in best for cell in (class_names[label], f"{probabilities[label]:.6f}")
    ]
    label = int(best[0])
    return [name, class_names[label], str(label), f"{probabilities[label]:.6f}", *ranked, ""]


def predict_images(
    paths: Sequence[Path],
    run_dir: Path,
    model: str | None = None,
    output: Path = Path("predictions.csv"),
    top_k: int = DEFAULT_TOP_K,
    threads: int | None = None,
    batch_size: int = BATCH_SIZE,
) -> PredictionSummary:
    """Classify every image in `paths` with a run's model; write `output` and its provenance.

    Args:
        paths: image files, folders of them (searched recursively), IDX images files
            (gzipped or not) and .npy arrays of shape (n, 28, 28) or (n, 784).
        run_dir: a run's report directory, such as `reports/latest` (the run it points at
            when the call starts: the provenance names that directory).
        model: one of the run's models; default: the one the run chose.
        threads: for the model; default: every core.

    Raises:
        PredictionInputError: a path that does not exist, no inputs, no run in `run_dir`,
            `top_k` beyond the run's classes, `output` a directory, a model the run has
            not, or model files failing their manifest check. Unreadable inputs raise
            nothing: their rows say why.
        UsageError, RunEnvironmentError: `output`'s directory cannot be written; both
            checked before the model is loaded.
        StorageError: writing `output` or its provenance failed (a full disk); the files
            there before are as they were.
    """
    files, skipped = find_inputs([Path(p) for p in paths])
    run_dir = pinned_run(Path(run_dir))
    _, metrics = read_run(run_dir)
    classes = len(run_class_names(metrics))
    if not 1 <= top_k <= classes:
        raise PredictionInputError(
            f"top-k {top_k} is out of range: run {metrics.get('run_id', run_dir.name)} "
            f"has {classes} classes; expected 1 to {classes}"
        )
    output = Path(output)
    if output.is_dir():
        raise PredictionInputError(f"{output}: is a directory, not the CSV file to write")
    check_writable_directory(output.parent)
    started = time.perf_counter()
    loaded = load_run_model(run_dir, model, threads or usable_cores())
    load_seconds = time.perf_counter() - started
    predict_seconds = 0.0

    def timed(features: np.ndarray) -> np.ndarray:
        nonlocal predict_seconds
        began = time.perf_counter()
        probabilities = loaded.predict_proba(features)
        predict_seconds += time.perf_counter() - began
        return probabilities

    counts, unreadable = Counter(), []

    def write_rows(stream: TextIO) -> None:
        writer = csv.writer(stream)
        writer.writerow(csv_header(top_k))
        for prediction in classify(map(read_input, files), timed, batch_size):
            row = csv_row(prediction, top_k, loaded.class_names)
            if prediction[1] is None:
                unreadable.append((prediction[0], prediction[2]))
            else:
                counts[row[1]] += 1
            writer.writerow(row)

    write_atomically(output, write_rows)
    summary = PredictionSummary(
        output=output,
        provenance_file=provenance_path(output),
        provenance=loaded.provenance(),
        images=sum(counts.values()),
        per_class={name: counts[name] for name in loaded.class_names},
        unreadable=unreadable,
        skipped=skipped,
        load_seconds=load_seconds,
        predict_seconds=predict_seconds,
        seconds=time.perf_counter() - started - load_seconds,
    )
    record = summary.provenance | {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        # The pair is replaced one file after the other: the hash tells a reader they match.
        "predictions": str(output), "predictions_sha256": sha256_file(output),
        "top_k": top_k, "images": summary.images,
        "per_class": summary.per_class, "skipped": skipped,
        "unreadable": [{"path": path, "error": error} for path, error in unreadable],
    }  # fmt: skip
    write_atomically(summary.provenance_file, lambda s: json.dump(record, s, indent=2))
    return summary


def describe_summary(summary: PredictionSummary, most_unreadable: int = 10) -> str:
    """The few lines the command line prints and the flow logs."""
    p = summary.provenance
    low, high = p["test_accuracy_interval"]
    lines = [
        f"model {p['model']} of run {p['run_id']} (rank {p['rank']}, test accuracy "
        f"{p['test_accuracy']:.4f}, {p['confidence']:.0%} CI [{low:.4f}, {high:.4f}])",
        *(f"  {path}  sha256 {digest}" for path, digest in p["model_files_sha256"].items()),
        f"classified {summary.images:,} images in {summary.seconds:.2f} s "
        f"({summary.images / max(summary.seconds, 1e-9):,.0f} images/s; the model itself "
        f"{summary.predict_seconds:.2f} s, loading it {summary.load_seconds:.2f} s)",
        *(
            f"  {name:<12} {count:>7,}"
            for name, count in summary.per_class.items()
            if count or len(summary.per_class) <= LISTED_CLASSES
        ),
        f"  {'unreadable':<12} {len(summary.unreadable):>7,}",
    ]
    for path, reason in summary.unreadable[:most_unreadable]:
        lines.append(f"  unreadable: {path}: {reason}")
    if len(summary.unreadable) > most_unreadable:
        lines.append(f"  ... and {len(summary.unreadable) - most_unreadable} more (see the CSV)")
    if summary.skipped:
        lines.append(f"skipped {summary.skipped} files in the folders not named like images")
    lines.append(f"wrote {summary.output} and {summary.provenance_file}")
    return "\n".join(lines)
