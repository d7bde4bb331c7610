"""Evaluation: predict the held-out splits and the test set with a saved model, and
measure it on the test set."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
)

from tasks.core.contracts import (
    HELD_OUT,
    SPLIT_ARRAYS,
    ModelEvaluation,
    ProcessedDataset,
    TrainedModel,
    as_stored,
    content_hashes,
)
from tasks.core.stopping import run_until_stopped
from tasks.core.storage import (
    array_refs,
    cached_stage,
    code_version,
    content_key,
    manifest_digest,
    save_arrays,
)
from tasks.evaluation.report.figures import MOST_LABELLED_CLASSES, class_font_size, grown
from tasks.training.models.registry import load_model

PROBABILITY_ARRAYS = (
    "test_predictions", "test_probabilities", "validation_probabilities",
    "selection_probabilities",
)  # fmt: skip
CALIBRATION_BINS = 15
METRICS_FILE = "metrics.json"
FIGURE_FILE = "confusion_matrix.png"


def expected_calibration_error(
    y_true: np.ndarray, probabilities: np.ndarray, bins: int = CALIBRATION_BINS
) -> float:
    """Gap between confidence and accuracy, averaged over equal-width confidence bins.

    Each image falls in the bin of its top probability; a bin contributes the absolute
    difference between its accuracy and its mean confidence, weighted by its share of
    the images.
    """
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == y_true
    # Bins are (lower, upper]; a confidence of exactly 0 joins the first.
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    error = 0.0
    for b in np.unique(which):
        members = which == b
        error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: int) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix,
    over the labels 0..classes-1 (a class no image has or is given still gets its row)."""
    labels = list(range(classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    return {
        "test_accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
        ),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": support.tolist(),
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def plot_confusion_matrix(
    confusion: list[list[int]], class_names: Sequence[str], title: str
) -> Figure:
    """Counts per true (rows) and predicted (columns) class, with class names on the axes.

    The figure grows with the classes; up to `MOST_LABELLED_CLASSES` each cell shows its count.
    """
    counts = np.asarray(confusion)
    classes = len(class_names)
    labelled = classes <= MOST_LABELLED_CLASSES
    side = grown(8, classes, 0.1, 16)
    figure = Figure(figsize=(side, side - 1), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(counts, cmap="Blues")
    figure.colorbar(image, ax=axes, shrink=0.8, label="test images")
    ticks, size = range(classes), class_font_size(classes, side - 3, 10)
    axes.set_xticks(ticks, class_names, rotation=45 if labelled else 90, ha="right",
                    rotation_mode="anchor", fontsize=size)  # fmt: skip
    axes.set_yticks(ticks, class_names, fontsize=size)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(title)
    if labelled:
        threshold = counts.max() / 2
        for (row, column), value in np.ndenumerate(counts):
            color = "white" if value > threshold else "black"
            axes.text(column, row, str(value), ha="center", va="center", fontsize=7, color=color)
    return figure


def write_evaluation(
    staging: Path,
    title: str,
    class_names: Sequence[str],
    held_out: dict[str, tuple[np.ndarray, np.ndarray]],
    y_test: np.ndarray,
    test_probabilities: np.ndarray,
    cost: dict[str, float],
) -> None:
    """Store a model's probabilities and every metric computed from the stored values.

    Args:
        title: the model's name, shown on its confusion-matrix figure.
        class_names: the data's classes, one probability column each.
        held_out: per held-out split (`HELD_OUT`), its labels and the probabilities.
        cost: `predict_seconds`, `predict_cpu_seconds` and `model_size_mb`.

    Raises:
        ValueError: when the probabilities have another number of columns than classes.
    """
    given = {split: probabilities for split, (_, probabilities) in held_out.items()}
    for split, array in (given | {"test": test_probabilities}).items():
        if np.shape(array)[1] != len(class_names):
            raise ValueError(
                f"{title} gave {np.shape(array)[1]} {split} probabilities per image; "
                f"expected one per class, {len(class_names)}"
            )
    labels = list(range(len(class_names)))
    stored = {split: as_stored(probabilities) for split, probabilities in given.items()}
    probabilities = as_stored(test_probabilities)
    predicted = probabilities.argmax(axis=1).astype(np.uint8)
    save_arrays(
        staging,
        {"test_predictions": predicted, "test_probabilities": probabilities}
        | {f"{split}_probabilities": array for split, array in stored.items()},
    )
    metrics = (
        {
            f"{split}_accuracy": float(accuracy_score(held_out[split][0], array.argmax(1)))
            for split, array in stored.items()
        }
        | {
            "predict_seconds": cost["predict_seconds"],
            "predict_ms_per_1000": 1e6 * cost["predict_seconds"] / len(y_test),
            "predict_cpu_seconds": cost["predict_cpu_seconds"],
            "model_size_mb": cost["model_size_mb"],
            "log_loss": float(log_loss(y_test, probabilities, labels=labels)),
            "calibration_error": expected_calibration_error(y_test, probabilities),
        }
        | classification_metrics(y_test, predicted, len(class_names))
    )
    (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    # Drawn here, as each model finishes, rather than all at once in the report.
    figure = plot_confusion_matrix(
        metrics["confusion"], class_names, f"{title}: accuracy {metrics['test_accuracy']:.4f}"
    )
    figure.savefig(staging / FIGURE_FILE, dpi=100)


def read_evaluation(entry: Path, fit: TrainedModel) -> ModelEvaluation:
    """The evaluation stored in a cache entry by `write_evaluation`, with the model's
    name, directory, parameters, fit times and learning curve from `fit`."""
    return ModelEvaluation(
        name=fit.name,
        fit_seconds=fit.fit_seconds,
        fit_cpu_seconds=fit.fit_cpu_seconds,
        **array_refs(entry, PROBABILITY_ARRAYS),
        model_dir=fit.directory,
        params=fit.params,
        confusion_figure=entry / FIGURE_FILE,
        curve=fit.curve,
        **json.loads((entry / METRICS_FILE).read_text()),
    )


def evaluate_model(
    trained: TrainedModel,
    data: ProcessedDataset,
    cache_dir: Path,
    threads: int,
    refresh: bool = False,
    logger: logging.Logger | None = None,
) -> ModelEvaluation:
    """Class probabilities and metrics on the held-out and test splits, timing the test
    prediction; cached per model content, evaluation data, class names and code version."""
    evaluated = (name for split in (*HELD_OUT, "test") for name in SPLIT_ARRAYS[split])
    inputs = content_hashes(data.arrays, evaluated)
    key = content_key(
        manifest_digest(trained.directory), inputs, list(data.class_names), code_version(__file__)
    )
    target = cache_dir / "evaluations" / trained.name / key

    def predict_and_measure(staging: Path) -> None:
        classifier = load_model(trained.directory, threads)
        held_out = {}
        for split in HELD_OUT:
            x, y = data.load(*SPLIT_ARRAYS[split])
            held_out[split] = (y, run_until_stopped(classifier.predict_proba, x))
        x_test, y_test = data.load(*SPLIT_ARRAYS["test"])
        started, cpu_started = time.perf_counter(), time.process_time()
        probabilities = run_until_stopped(classifier.predict_proba, x_test)
        cost = {
            "predict_seconds": time.perf_counter() - started,
            "predict_cpu_seconds": time.process_time() - cpu_started,
            "model_size_mb": sum(p.stat().st_size for p in trained.directory.glob("model.*")) / 1e6,
        }
        write_evaluation(
            staging, trained.name, data.class_names, held_out, y_test, probabilities, cost,
        )  # fmt: skip

    return cached_stage(
        target,
        predict_and_measure,
        lambda entry: read_evaluation(entry, trained),
        f"the evaluation of {trained.name}",
        refresh,
        logger,
    )
