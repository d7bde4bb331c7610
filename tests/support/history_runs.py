"""Runs for the run-history tests: tiny synthetic data sets and evaluations that get a
chosen number of test images wrong, written to a directory of their own."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.core.contracts import CLASS_NAMES, ModelEvaluation, ProcessedDataset, RawDataset
from tasks.core.storage import array_refs, save_arrays
from tasks.history.db import history_path
from tasks.history.runs import compare_with_previous, record_run

TRAIN_PER_CLASS, TEST_PER_CLASS = 100, 30
TROUSER, PULLOVER = CLASS_NAMES.index("Trouser"), CLASS_NAMES.index("Pullover")
UNUSED_NUMBERS = ("macro_f1", "validation_accuracy", "selection_accuracy", "log_loss",
                  "calibration_error",
                  "fit_seconds", "predict_seconds", "predict_ms_per_1000", "fit_cpu_seconds",
                  "predict_cpu_seconds", "model_size_mb")  # fmt: skip
UNUSED_LISTS = ("precision", "recall", "f1", "support", "confusion")


def make_arrays(seed: int = 0, n_classes: int = 10) -> dict[str, np.ndarray]:
    """Random images whose brightness depends on the class, so a class's images drift
    when other images join it."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        labels = np.repeat(np.arange(n_classes), per_class).astype(np.uint8)
        ceiling = 60 + 19 * labels[:, None, None]
        arrays[f"{split}_images"] = (rng.random((len(labels), 28, 28)) * ceiling).astype(np.uint8)
        arrays[f"{split}_labels"] = labels
    return arrays


class Run:
    """One run's data and evaluations, written into its own directory."""

    def __init__(self, directory: Path, arrays: dict, class_names=CLASS_NAMES):
        directory.mkdir(parents=True)
        save_arrays(directory, arrays)
        self.raw = RawDataset(directory, {}, array_refs(directory, list(arrays)), class_names)
        processed = {
            "x_test": arrays["test_images"].reshape(len(arrays["test_images"]), -1) / 255,
            "y_test": arrays["test_labels"],
            "test_index": np.arange(len(arrays["test_labels"])),
        }
        save_arrays(directory, processed)
        self.data = ProcessedDataset(directory, array_refs(directory, list(processed)), class_names)
        self.directory = directory
        self.evaluations: list[ModelEvaluation] = []

    def evaluate(self, name: str, wrong: int) -> Run:
        """Add a model that gets the first `wrong` test images wrong."""
        (y_test,) = self.data.load("y_test")
        predicted = np.array(y_test)
        predicted[:wrong] = (predicted[:wrong] + 1) % len(self.data.class_names)
        save_arrays(self.directory, {f"{name}_predictions": predicted})
        ref = array_refs(self.directory, [f"{name}_predictions"])[f"{name}_predictions"]
        # The history reads a model's name, test accuracy and predictions only.
        fields = dict.fromkeys(UNUSED_NUMBERS, 0.0) | {key: [] for key in UNUSED_LISTS}
        fields |= dict.fromkeys(("test_predictions", "test_probabilities"), ref)
        fields |= dict.fromkeys(("validation_probabilities", "selection_probabilities"), ref)
        fields |= {"params": {}, "curve": None}
        fields |= dict.fromkeys(("model_dir", "confusion_figure"), self.directory)
        accuracy = float(np.mean(predicted == y_test))
        self.evaluations.append(ModelEvaluation(name, accuracy, **fields))
        return self

    def record(
        self, output: Path, run_id: str, profile: str = "quick", regressed: bool = False
    ) -> None:
        record_run(history_path(output), run_id, profile, self.raw, self.data,
                   self.evaluations, regressed)  # fmt: skip

    def since(
        self, output: Path, run_id: str = "now", tolerance: float = 0.01, baseline=None
    ) -> dict | None:
        return compare_with_previous(history_path(output), "quick", run_id, self.raw, self.data,
                                     self.evaluations, tolerance, baseline)  # fmt: skip
