"""Preprocessing: scale pixels to [0, 1], take the stratified validation split, reshape.

The test images are kept apart for the final evaluation only: early stopping
and model selection use the validation split carved out of the training images.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from tasks.core.contracts import ProcessedDataset, RawDataset
from tasks.core.errors import UsageError
from tasks.core.storage import (
    array_refs,
    cached_stage,
    code_version,
    content_key,
    save_arrays,
)

PROCESSED_ARRAYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test", "test_index")
CLASS_NAMES_FILE = "class_names.json"
VALIDATION_SHARE = 10  # without a validation_size: a tenth of the training images


def scale_images(images: np.ndarray) -> np.ndarray:
    """(N, 28, 28) uint8 -> (N, 784) float32 in [0, 1], the layout scikit-learn and XGBoost take."""
    return (images.reshape(len(images), -1) / np.float32(255)).astype(np.float32)


def stratified_subset(labels: np.ndarray, size: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a stratified sample of `size` rows (all rows when size is None)."""
    everything = np.arange(len(labels))
    if size is None or size >= len(labels):
        return everything
    chosen, _ = train_test_split(everything, train_size=size, stratify=labels, random_state=seed)
    return np.sort(chosen)


def split_train_validation(
    labels: np.ndarray, validation_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded train and validation row indices."""
    train, validation = train_test_split(
        np.arange(len(labels)), test_size=validation_size, stratify=labels, random_state=seed
    )
    return np.sort(train), np.sort(validation)


def preprocess_arrays(
    raw: dict[str, np.ndarray],
    validation_size: int | None,
    seed: int,
    train_subset_size: int | None = None,
    test_subset_size: int | None = None,
) -> dict[str, np.ndarray]:
    """Model-ready arrays for every split; the inputs are left untouched.

    Raises:
        UsageError: the data cannot be split as asked: the validation split would leave
            fewer than 10 training images, or a class is too rare for a stratified split.
    """
    try:
        subset = stratified_subset(raw["train_labels"], train_subset_size, seed)
        validation_size = validation_size or len(subset) // VALIDATION_SHARE
        if validation_size > len(subset) - 10:
            raise UsageError(
                f"validation_size {validation_size} must leave at least 10 of the "
                f"{len(subset)} training images it is taken from for training; choose a "
                "smaller one"
            )
        train_rows, val_rows = split_train_validation(
            raw["train_labels"][subset], validation_size, seed
        )
        test_rows = stratified_subset(raw["test_labels"], test_subset_size, seed)
    except ValueError as error:  # scikit-learn's: a class with too few images to stratify
        raise UsageError(
            f"cannot take the stratified subsets and validation split ({error}); give more "
            "images of the rarest classes, or larger train_subset_size / validation_size"
        ) from None
    train_rows, val_rows = subset[train_rows], subset[val_rows]
    return {
        "x_train": scale_images(raw["train_images"][train_rows]),
        "y_train": raw["train_labels"][train_rows],
        "x_val": scale_images(raw["train_images"][val_rows]),
        "y_val": raw["train_labels"][val_rows],
        "x_test": scale_images(raw["test_images"][test_rows]),
        "y_test": raw["test_labels"][test_rows],
        "test_index": test_rows,
    }


def preprocess_dataset(
    raw: RawDataset,
    cache_dir: Path,
    validation_size: int | None,
    seed: int,
    train_subset_size: int | None = None,
    test_subset_size: int | None = None,
    refresh: bool = False,
    logger: logging.Logger | None = None,
) -> ProcessedDataset:
    """Write the processed arrays once under `<cache_dir>/processed/<key>` and refer to them.

    The key covers the raw data's hashes, the parameters and this module's code,
    so runs with other settings never overwrite each other's arrays.
    """
    parameters = (validation_size, seed, train_subset_size, test_subset_size)
    raw_hashes = {name: ref.sha256 for name, ref in raw.arrays.items()}
    key = content_key(raw_hashes, parameters, list(raw.class_names), code_version(__file__))
    target = cache_dir / "processed" / key

    def write(staging: Path) -> None:
        arrays = {name: ref.load() for name, ref in raw.arrays.items()}
        save_arrays(staging, preprocess_arrays(arrays, *parameters))
        (staging / CLASS_NAMES_FILE).write_text(json.dumps(list(raw.class_names)))

    def read(entry: Path) -> ProcessedDataset:
        class_names = tuple(json.loads((entry / CLASS_NAMES_FILE).read_text()))
        return ProcessedDataset(entry, array_refs(entry, PROCESSED_ARRAYS), class_names)

    return cached_stage(target, write, read, "the processed arrays", refresh, logger)
