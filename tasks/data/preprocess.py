"""Preprocessing: scale pixels to [0, 1], take the stratified held-out splits, reshape.

Three splits are carved out of the training images and each decides one thing, so no
choice is scored on the data that made it: the models fit on `train`; early stopping,
calibration and tuning use `validation`; the ensemble's members and weights are chosen
on `selection`, which no model has seen. The test images only score the result.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from tasks.core.contracts import ProcessedDataset, RawDataset, content_hashes
from tasks.core.errors import UsageError
from tasks.core.storage import (
    array_refs,
    cached_stage,
    code_version,
    content_key,
    save_arrays,
)

PROCESSED_ARRAYS = (
    "x_train", "y_train", "x_val", "y_val", "x_selection", "y_selection", "x_test", "y_test",
    "test_index",
)  # fmt: skip
CLASS_NAMES_FILE = "class_names.json"
VALIDATION_SHARE = 20  # without a validation_size: a twentieth of the training images


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


def split_held_out(labels: np.ndarray, sizes: tuple[int, ...], seed: int) -> tuple[np.ndarray, ...]:
    """Stratified, seeded, disjoint row indices: the training rows, then one array per
    held-out size in `sizes` (the validation and selection splits)."""
    rest, held_out = np.arange(len(labels)), []
    for size in sizes:
        rest, taken = train_test_split(
            rest, test_size=size, stratify=labels[rest], random_state=seed
        )
        held_out.append(np.sort(taken))
    return np.sort(rest), *held_out


def held_out_sizes(
    training_images: int, validation_size: int | None, selection_size: int | None
) -> tuple[int, int]:
    """The validation and selection splits' sizes: a twentieth of the training images
    each by default (together the tenth that used to be validation alone); the
    selection split is as large as the validation split unless given."""
    validation = validation_size or training_images // VALIDATION_SHARE
    return validation, selection_size or validation


def held_out_problem(training_images: int, sizes: tuple[int, int]) -> str | None:
    """Why the validation and selection splits of `sizes` cannot be taken from
    `training_images`: they must leave at least 10 for training; None when they can."""
    if sum(sizes) <= training_images - 10:
        return None
    return (
        f"validation_size {sizes[0]} and selection_size {sizes[1]} must leave at least 10 of "
        f"the {training_images} training images they are taken from for training"
    )


def preprocess_arrays(
    raw: dict[str, np.ndarray],
    validation_size: int | None,
    seed: int,
    train_subset_size: int | None = None,
    test_subset_size: int | None = None,
    selection_size: int | None = None,
) -> dict[str, np.ndarray]:
    """Model-ready arrays for every split; the inputs are left untouched.

    Raises:
        UsageError: the data cannot be split as asked: the held-out splits would leave
            fewer than 10 training images, or a class is too rare for a stratified split.
    """
    try:
        subset = stratified_subset(raw["train_labels"], train_subset_size, seed)
        sizes = held_out_sizes(len(subset), validation_size, selection_size)
        if problem := held_out_problem(len(subset), sizes):
            raise UsageError(f"{problem}; choose smaller ones")
        rows = split_held_out(raw["train_labels"][subset], sizes, seed)
        test_rows = stratified_subset(raw["test_labels"], test_subset_size, seed)
    except ValueError as error:  # scikit-learn's: a class with too few images to stratify
        raise UsageError(
            f"cannot take the stratified subsets and held-out splits ({error}); give more "
            "images of the rarest classes, or larger train_subset_size, validation_size or "
            "selection_size"
        ) from None
    train_rows, val_rows, selection_rows = (subset[split] for split in rows)
    return {
        "x_train": scale_images(raw["train_images"][train_rows]),
        "y_train": raw["train_labels"][train_rows],
        "x_val": scale_images(raw["train_images"][val_rows]),
        "y_val": raw["train_labels"][val_rows],
        "x_selection": scale_images(raw["train_images"][selection_rows]),
        "y_selection": raw["train_labels"][selection_rows],
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
    selection_size: int | None = None,
    refresh: bool = False,
    logger: logging.Logger | None = None,
) -> ProcessedDataset:
    """Write the processed arrays once under `<cache_dir>/processed/<key>` and refer to them.

    The key covers the raw data's hashes, the parameters and this module's code,
    so runs with other settings never overwrite each other's arrays.
    """
    parameters = (validation_size, seed, train_subset_size, test_subset_size, selection_size)
    raw_hashes = content_hashes(raw.arrays)
    key = content_key(raw_hashes, parameters, list(raw.class_names), code_version(__file__))
    target = cache_dir / "processed" / key

    def write(staging: Path) -> None:
        arrays = {name: ref.load() for name, ref in raw.arrays.items()}
        save_arrays(staging, preprocess_arrays(arrays, *parameters))
        (staging / CLASS_NAMES_FILE).write_text(json.dumps(list(raw.class_names)))

    return cached_stage(target, write, read_processed, "the processed arrays", refresh, logger)


def read_processed(entry: Path) -> ProcessedDataset:
    """The processed arrays of a cache entry (`<cache_dir>/processed/<key>`), by reference."""
    class_names = tuple(json.loads((entry / CLASS_NAMES_FILE).read_text()))
    return ProcessedDataset(entry, array_refs(entry, PROCESSED_ARRAYS), class_names)
