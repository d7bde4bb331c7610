"""Sample evaluations for the report's tests: three models scored on 100 test images
(ten of each class), with their arrays and confusion-matrix figures written to disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.core.contracts import CLASS_NAMES, ModelEvaluation, ProcessedDataset
from tasks.core.storage import array_refs, save_arrays
from tasks.evaluation.evaluate import classification_metrics, plot_confusion_matrix

Y_TEST = np.repeat(np.arange(10), 10).astype(np.uint8)
TEST_INDEX = np.arange(100) * 7  # positions in the original test set
IMAGES = np.random.default_rng(0).random((100, 784), dtype=np.float32)


def evaluation(name: str, predicted: np.ndarray, directory: Path) -> ModelEvaluation:
    directory = directory / name
    directory.mkdir(parents=True)
    probabilities = np.eye(10, dtype=np.float32)[predicted]
    arrays = {
        "test_predictions": predicted,
        "test_probabilities": probabilities,
        "validation_probabilities": probabilities,
        "selection_probabilities": probabilities,
    }
    save_arrays(directory, arrays)
    metrics = classification_metrics(Y_TEST, predicted, classes=10)
    figure = directory / "confusion_matrix.png"
    plot_confusion_matrix(metrics["confusion"], CLASS_NAMES, name).savefig(figure)
    return ModelEvaluation(
        name=name,
        validation_accuracy=0.5,
        selection_accuracy=metrics["test_accuracy"],  # the choice agrees with the ranking
        log_loss=0.3,
        calibration_error=0.02,
        fit_seconds=12.0,
        predict_seconds=0.5,
        predict_ms_per_1000=5.0,
        fit_cpu_seconds=11.0,
        predict_cpu_seconds=0.4,
        model_size_mb=1.5,
        model_dir=directory,
        params={"depth": 3},
        confusion_figure=figure,
        curve=None,
        **array_refs(directory, list(arrays)),
        **metrics,
    )


def sample_split(directory: Path) -> ProcessedDataset:
    """The split the evaluations were scored on: the test arrays the report reads, and
    labels of the other splits, which it counts."""
    directory = directory / "processed"
    directory.mkdir()
    held_out = np.repeat(np.arange(10), 5).astype(np.uint8)
    arrays = {
        "y_test": Y_TEST, "test_index": TEST_INDEX, "x_test": IMAGES,
        "y_train": np.repeat(np.arange(10), 40).astype(np.uint8), "y_val": held_out,
        "y_selection": held_out,
    }  # fmt: skip
    save_arrays(directory, arrays)
    return ProcessedDataset(directory, array_refs(directory, list(arrays)))


def sample_evaluations(directory: Path) -> list[ModelEvaluation]:
    """Three models: one perfect, one taking every Shirt for a T-shirt, one worse still."""
    perfect = Y_TEST.copy()
    shirt_as_tshirt = Y_TEST.copy()
    shirt_as_tshirt[Y_TEST == 6] = 0  # every Shirt taken for a T-shirt/top
    mixed = shirt_as_tshirt.copy()
    mixed[np.flatnonzero(Y_TEST == 0)[:3]] = 6  # and 3 T-shirts taken for Shirts
    mixed[np.flatnonzero(Y_TEST == 4)[:2]] = 2  # 2 Coats taken for Pullovers
    return [
        evaluation("mixed", mixed, directory),
        evaluation("perfect", perfect, directory),
        evaluation("shirtless", shirt_as_tshirt, directory),
    ]
