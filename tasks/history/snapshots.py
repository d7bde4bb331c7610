"""What the run history keeps of a run, built from its data and evaluations: per image a
content hash, the label and the mean intensity; per model the test accuracy and which
test images it got right; fingerprints of the data and of the evaluated test set."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from tasks.core.contracts import ModelEvaluation, ProcessedDataset, RawDataset, content_hashes

SPLITS = {"train": ("train_images", "train_labels"), "test": ("test_images", "test_labels")}


@dataclass(frozen=True)
class SplitImages:
    """One split's images as the comparison sees them; arrays are aligned by image."""

    hashes: np.ndarray  # uint64
    labels: np.ndarray  # uint8, indexing the run's class names
    mean_intensity: np.ndarray  # float32


@dataclass(frozen=True)
class ModelOutcome:
    accuracy: float
    correct: np.ndarray  # bool per test image, in the processed test set's order


@dataclass(frozen=True)
class RunSnapshot:
    """What the history keeps of one run."""

    run_id: str
    finished_at: str
    profile: str
    class_names: tuple[str, ...]
    data_fingerprint: str
    test_set_fingerprint: str
    splits: dict[str, SplitImages]
    models: dict[str, ModelOutcome]


def data_fingerprint(raw: RawDataset) -> str:
    """A hash of the data's content and class names: equal exactly when nothing changed."""
    hashes = content_hashes(raw.arrays, sorted(raw.arrays))
    text = json.dumps([hashes, list(raw.class_names)])
    return hashlib.sha256(text.encode()).hexdigest()


def evaluated_set_fingerprint(data: ProcessedDataset) -> str:
    """A hash of the evaluated test images and labels: equal when the two runs' models
    can be compared image by image."""
    text = json.dumps([data.arrays["x_test"].sha256, data.arrays["y_test"].sha256])
    return hashlib.sha256(text.encode()).hexdigest()


def image_hashes(images: np.ndarray) -> np.ndarray:
    """An 8-byte BLAKE2b hash of each image's pixels: collisions among 70,000 images have
    a chance of about 1 in 10^10."""
    rows = np.ascontiguousarray(images).reshape(len(images), -1)
    digests = b"".join(hashlib.blake2b(row.tobytes(), digest_size=8).digest() for row in rows)
    return np.frombuffer(digests, dtype="<u8").copy()


def split_images(images: np.ndarray, labels: np.ndarray) -> SplitImages:
    flat = np.asarray(images).reshape(len(images), -1)
    return SplitImages(
        image_hashes(flat), np.asarray(labels, np.uint8), flat.mean(axis=1, dtype=np.float32)
    )


def snapshot_run(
    run_id: str,
    profile: str,
    raw: RawDataset,
    data: ProcessedDataset,
    evaluations: list[ModelEvaluation],
) -> RunSnapshot:
    """This run as the history records it, its arrays loaded from their references."""
    splits = {
        split: split_images(raw.arrays[images].load(), raw.arrays[labels].load())
        for split, (images, labels) in SPLITS.items()
    }
    (y_test,) = data.load("y_test")
    models = {
        evaluation.name: ModelOutcome(
            float(evaluation.test_accuracy),
            np.asarray(evaluation.test_predictions.load()) == y_test,
        )
        for evaluation in evaluations
    }
    return RunSnapshot(
        run_id=run_id,
        finished_at=datetime.now(UTC).isoformat(timespec="microseconds"),
        profile=profile,
        class_names=tuple(raw.class_names),
        data_fingerprint=data_fingerprint(raw),
        test_set_fingerprint=evaluated_set_fingerprint(data),
        splits=splits,
        models=models,
    )
