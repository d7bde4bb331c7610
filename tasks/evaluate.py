"""Evaluation: predict the held-out test set with a saved model and measure it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prefect import task
from prefect.logging import get_run_logger
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from tasks.ingest import CLASS_NAMES
from tasks.preprocess import ProcessedDataset
from tasks.storage import ArrayRef, array_refs, save_arrays
from tasks.train import TrainedModel, load_model

LABELS = list(range(len(CLASS_NAMES)))


@dataclass(frozen=True)
class ModelEvaluation:
    """A model's test metrics; per-class lists follow `CLASS_NAMES`."""

    name: str
    test_accuracy: float
    macro_f1: float
    validation_accuracy: float
    precision: list[float]
    recall: list[float]
    f1: list[float]
    support: list[int]
    confusion: list[list[int]]
    fit_seconds: float
    predict_seconds: float
    test_predictions: ArrayRef
    model_dir: Path
    params: dict


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix."""
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=LABELS, zero_division=0
    )
    return {
        "test_accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=LABELS, average="macro", zero_division=0)
        ),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": support.tolist(),
        "confusion": confusion_matrix(y_true, y_pred, labels=LABELS).tolist(),
    }


def evaluate_model(
    trained: TrainedModel, data: ProcessedDataset, predictions_dir: Path, threads: int
) -> ModelEvaluation:
    """Predict the validation and test splits; time the test prediction; save test labels."""
    classifier = load_model(trained.directory, threads)
    x_val, y_val, x_test, y_test = data.load("x_val", "y_val", "x_test", "y_test")
    validation_accuracy = float(accuracy_score(y_val, classifier.predict(x_val)))
    started = time.perf_counter()
    predicted = classifier.predict(x_test).astype(np.uint8)
    predict_seconds = time.perf_counter() - started

    directory = predictions_dir / trained.name
    directory.mkdir(parents=True, exist_ok=True)
    save_arrays(directory, {"test_predictions": predicted})
    (reference,) = array_refs(directory, ["test_predictions"]).values()
    return ModelEvaluation(
        name=trained.name,
        validation_accuracy=validation_accuracy,
        fit_seconds=trained.fit_seconds,
        predict_seconds=predict_seconds,
        test_predictions=reference,
        model_dir=trained.directory,
        params=trained.params,
        **classification_metrics(y_test, predicted),
    )


@task(name="evaluate-model", task_run_name="evaluate-{trained.name}")
def evaluate_task(
    trained: TrainedModel, data: ProcessedDataset, predictions_dir: Path, threads: int
) -> ModelEvaluation:
    evaluation = evaluate_model(trained, data, predictions_dir, threads)
    get_run_logger().info(
        "%s: test accuracy %.4f, macro-F1 %.4f (predicted in %.1f s)",
        evaluation.name, evaluation.test_accuracy, evaluation.macro_f1, evaluation.predict_seconds,
    )  # fmt: skip
    return evaluation
