"""The records stages hand each other: datasets, trained models and evaluations.

Stages import these instead of each other's modules, so reading a record never pulls
in a library that only the stage producing it needs (optuna, XGBoost, TensorFlow).
Arrays travel as `ArrayRef`s (a path and its content hash), never as payloads.
"""

from __future__ import annotations

import json
import math
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from tasks.core.storage import ArrayRef

# Fashion-MNIST's classes: the names of any 10-label data set without its own names.
CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
N_CLASSES = len(CLASS_NAMES)
MIN_CLASSES, MAX_CLASSES = 2, 100
IMAGE_SHAPE = (28, 28)
# Each split's features and labels, as the processed data names them.
SPLIT_ARRAYS: dict[str, tuple[str, str]] = {
    "train": ("x_train", "y_train"),
    "validation": ("x_val", "y_val"),  # early stopping, calibration, tuning
    "selection": ("x_selection", "y_selection"),  # the ensemble's members and weights
    "test": ("x_test", "y_test"),
}
HELD_OUT = ("validation", "selection")  # the splits every model predicts besides the test set
TRAINING_ARRAYS = SPLIT_ARRAYS["train"] + SPLIT_ARRAYS["validation"]
ENSEMBLE_NAME = "ensemble"  # the soft-voting ensemble's name among the models


@dataclass(frozen=True)
class UnreadableFile:
    """An input file ingestion could not turn into an image; validation refuses the data."""

    file: str
    problem: str


def content_hashes(
    arrays: Mapping[str, ArrayRef], names: Iterable[str] | None = None
) -> dict[str, str]:
    """Each array's SHA-256 by name, of all of `arrays` or of those in `names` in that
    order: what cache keys and records hold of the data a stage read."""
    return {name: arrays[name].sha256 for name in (arrays if names is None else names)}


@dataclass(frozen=True)
class RawDataset:
    """The parsed data, by reference, with where it came from.

    Attributes:
        layout: "idx" (four IDX files), "csv" (Kaggle's two CSV files) or "image-folder".
        file_sha256: of each IDX file's decompressed content (the official-checksum gate's
            input); empty for the other layouts.
        arrays: train_images, train_labels, test_images, test_labels (uint8, labels
            0..n-1 indexing `class_names`).
        split_files: per split ("train", "test"), the file its images came from (IDX, CSV);
            under "train_labels" and "test_labels", a file its labels came from, if apart (IDX).
        origins: image folders: a JSON file holding, per split, each row's image file.
        unreadable: image files that could not be read (left out of the arrays).
    """

    source_dir: Path
    file_sha256: dict[str, str]
    arrays: dict[str, ArrayRef]
    class_names: tuple[str, ...] = CLASS_NAMES
    layout: str = "idx"
    split_files: dict[str, str] = field(default_factory=dict)
    origins: Path | None = None
    unreadable: tuple[UnreadableFile, ...] = ()

    def origin(self, split: str, row: int) -> str:
        """Where row `row` (0-based) of a split came from: an image file, or a file's row."""
        if self.origins is not None:
            return _origins(self.origins)[split][row]
        return f"{self.split_files.get(split, split)} row {row + 1}"

    def label_origin(self, split: str, row: int) -> str:
        """Where row `row`'s label came from: its row of a labels file of their own (IDX),
        or else where the image came from."""
        if labels_file := self.split_files.get(f"{split}_labels"):
            return f"{labels_file} row {row + 1}"
        return self.origin(split, row)


@cache
def _origins(path: Path) -> dict[str, list[str]]:
    return json.loads(path.read_text())


@dataclass(frozen=True)
class ValidationSummary:
    rows: dict[str, int]
    class_counts: dict[str, list[int]]
    gates: dict[str, str]  # each gate the data passed, and what it checked
    dataset: str = "Fashion-MNIST"  # "Fashion-MNIST" only when the official files' checksums match
    warning: str = ""  # data named and shaped like Fashion-MNIST that is not (tasks.data.published)


@dataclass(frozen=True)
class ProcessedDataset:
    """Flat float32 features and uint8 labels of each split, by reference.

    `test_index` holds each test row's position in the data's test split.
    """

    directory: Path
    arrays: dict[str, ArrayRef]
    class_names: tuple[str, ...] = CLASS_NAMES

    def load(self, *names: str) -> tuple[np.ndarray, ...]:
        return tuple(self.arrays[name].load() for name in names)


@dataclass(frozen=True)
class LearningCurve:
    """Training and validation error per step, in the same form for every model."""

    step: str  # what one step is: "boosting round", "epoch"
    train_error: list[float]
    validation_error: list[float]


@dataclass(frozen=True)
class TrainedModel:
    name: str
    directory: Path
    fit_seconds: float
    # CPU time of the process during the fit: the model's own where each model trains
    # in its own process (processes and dask runners); with threads it also counts the
    # model trained alongside.
    fit_cpu_seconds: float
    params: dict
    curve: LearningCurve | None = None


def as_stored(probabilities: np.ndarray) -> np.ndarray:
    """float32 rows summing to 1, the form every model's probabilities are stored in: the
    metrics recompute from them, and predictions made later match the run's to the last tie."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    return (probabilities / probabilities.sum(axis=1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class ModelEvaluation:
    """A model's test metrics; per-class lists follow the data's `class_names`."""

    name: str
    test_accuracy: float
    macro_f1: float
    validation_accuracy: float  # the split that stopped, calibrated and tuned the model
    selection_accuracy: float  # the split that chose the ensemble, unseen by the models
    precision: list[float]
    recall: list[float]
    f1: list[float]
    support: list[int]
    confusion: list[list[int]]
    log_loss: float
    calibration_error: float
    fit_seconds: float
    predict_seconds: float
    predict_ms_per_1000: float
    fit_cpu_seconds: float  # as `TrainedModel.fit_cpu_seconds`
    predict_cpu_seconds: float
    model_size_mb: float
    test_predictions: ArrayRef
    test_probabilities: ArrayRef
    validation_probabilities: ArrayRef
    selection_probabilities: ArrayRef
    model_dir: Path
    params: dict
    confusion_figure: Path
    curve: LearningCurve | None


@dataclass(frozen=True)
class TuningSummary:
    """What the search found for one model; accuracies are on the validation split."""

    model: str
    trials: int
    pruned: int
    seconds: float
    default_accuracy: float
    best_accuracy: float
    best_trial: int
    best_params: dict
    train_images: int  # each trial's training set
    trials_file: Path


@dataclass(frozen=True)
class ModelFailure:
    """A model the run could not tune, train or evaluate, or an ensemble it could not
    build; the report names it with its error, the rest of the run goes on."""

    model: str
    stage: str  # "tuning", "measuring", "training", "evaluation" or "ensemble"
    error: str  # one line: the exception's type and the first line of its message
    traceback: str = ""  # the whole of it, for metrics.json

    @classmethod
    def from_exception(cls, model: str, stage: str, error: BaseException) -> ModelFailure:
        return cls(model, stage, one_line(error), "".join(traceback.format_exception(error)))

    def __str__(self) -> str:
        return f"{self.model} ({self.stage}: {self.error})"


def one_line(error: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message`, shortened to `limit` characters."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class Scaling:
    """How a model's work speeds up with threads, by Amdahl's law.

    Attributes:
        parallel: the share of its work that threads split (measured from one thread to
            two by `benchmarks/thread_scaling.py`; beyond two, extrapolated).
        most_threads: the most threads it uses at all (libsvm's SVC: one).
    """

    parallel: float
    most_threads: int | None = None

    def speedup(self, threads: int) -> float:
        """How many times as fast as on one thread its work is on `threads`."""
        used = min(threads, self.most_threads or threads)
        return 1.0 / ((1.0 - self.parallel) + self.parallel / used)

    def useful_threads(self, least_efficiency: float = 0.5) -> int:
        """The most threads on which each still does at least `least_efficiency` of a
        thread's work alone: more would mostly wait."""
        if self.parallel >= 1.0:
            return self.most_threads or 1 << 16
        # speedup(t) / t >= e  <=>  t <= (1/e - p) / (1 - p)
        most = math.floor((1.0 / least_efficiency - self.parallel) / (1.0 - self.parallel))
        return max(1, min(most, self.most_threads or most))


@dataclass(frozen=True)
class Cost:
    """Seconds one model takes on one lane of this machine, scaled to the run's data.

    Attributes:
        fixed: everything but the steps: start-up, setup, predicting the held-out and
            test sets, saving.
        per_step: one epoch or boosting round; 0 for a model fitted in one go.
        per_step_alone: one step with every core, for the model that gets them once the
            others are done (the CNN); None where not measured.
        closing: of `fixed`, what comes after the last step (the CNN's predictions of the
            held-out and test sets): a model that trains up to a deadline stops that much
            before it.
    """

    fixed: float
    per_step: float = 0.0
    per_step_alone: float | None = None
    closing: float = 0.0

    @property
    def speedup(self) -> float:
        """How many times as fast a step is with every core (1 where not measured)."""
        return self.per_step / self.per_step_alone if self.per_step_alone else 1.0

    def seconds(self, steps: int | None, shared_seconds: float | None = None) -> float:
        """The seconds `steps` take: beside the other models for the first
        `shared_seconds`, with every core after (where measured); None: beside them all along."""
        shared_steps = self._shared_steps(shared_seconds)
        if shared_steps is None or not steps or steps <= shared_steps:
            return self.fixed + self.per_step * (steps or 0)
        return max(shared_seconds, self.fixed) + (steps - shared_steps) * self.per_step_alone

    def steps_within(self, seconds: float, most: int, shared_seconds: float | None = None) -> int:
        """The most steps, at most `most`, that fit in `seconds`: beside the other models
        for the first `shared_seconds`, with every core after (where measured)."""
        if self.per_step <= 0:
            return most
        shared_steps = self._shared_steps(shared_seconds)
        if shared_steps is None or shared_seconds >= seconds:
            steps = (seconds - self.fixed) / self.per_step
        else:
            alone = (seconds - max(shared_seconds, self.fixed)) / self.per_step_alone
            steps = shared_steps + alone
        return max(0, min(most, math.floor(steps)))

    def _shared_steps(self, shared_seconds: float | None) -> float | None:
        """The steps done beside the other models in `shared_seconds`; None where every
        core is not counted on or not measured."""
        if shared_seconds is None or not self.per_step_alone or self.per_step <= 0:
            return None
        return max(0.0, shared_seconds - self.fixed) / self.per_step
