from __future__ import annotations

import numpy as np
import pytest

from tasks.core.errors import UsageError
from tasks.data.ingest import ingest_dataset
from tasks.data.preprocess import (
    held_out_sizes,
    preprocess_arrays,
    preprocess_dataset,
    scale_images,
    split_held_out,
    stratified_subset,
)
from tasks.training.models.cnn import to_image_tensor


def test_scale_images_to_unit_float32():
    images = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    scaled = scale_images(images)
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, [[0.0, 1.0, 0.2, 0.4]], rtol=1e-6)
    assert to_image_tensor(np.zeros((3, 784), np.float32)).shape == (3, 28, 28, 1)


def test_splits_are_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(10), 100)
    train, val, selection = split_held_out(labels, (200, 100), seed=7)
    assert (len(train), len(val), len(selection)) == (700, 200, 100)
    assert not set(train) & set(val) | set(train) & set(selection) | set(val) & set(selection)
    assert sorted([*train, *val, *selection]) == list(range(1000))
    assert np.bincount(labels[val]).tolist() == [20] * 10
    assert np.bincount(labels[selection]).tolist() == [10] * 10
    again = split_held_out(labels, (200, 100), seed=7)
    other = split_held_out(labels, (200, 100), seed=8)
    for split, same in zip((train, val, selection), again, strict=True):
        np.testing.assert_array_equal(split, same)
    assert not np.array_equal(selection, other[2])


def test_held_out_sizes_default_to_a_twentieth_each_and_selection_follows_validation():
    assert held_out_sizes(60000, None, None) == (3000, 3000)
    assert held_out_sizes(60000, 1000, None) == (1000, 1000)
    assert held_out_sizes(60000, None, 500) == (3000, 500)


def test_subset_keeps_class_balance():
    labels = np.repeat(np.arange(10), 50)
    chosen = stratified_subset(labels, 100, seed=0)
    assert np.bincount(labels[chosen]).tolist() == [10] * 10
    assert len(stratified_subset(labels, None, seed=0)) == 500


def test_preprocess_arrays_leaves_inputs_untouched(synthetic_dir):
    raw = synthetic_dir[2]
    before = {key: value.copy() for key, value in raw.items()}
    out = preprocess_arrays(raw, validation_size=50, seed=0, test_subset_size=40, selection_size=30)
    for key in raw:
        np.testing.assert_array_equal(raw[key], before[key])
    assert out["x_train"].shape == (220, 784)
    assert out["x_val"].shape == (50, 784)
    assert out["x_selection"].shape == (30, 784)
    assert out["x_test"].shape == (40, 784)
    assert out["x_train"].max() <= 1.0
    np.testing.assert_array_equal(out["y_test"], raw["test_labels"][out["test_index"]])
    np.testing.assert_allclose(
        out["x_test"][0], raw["test_images"][out["test_index"][0]].ravel() / 255
    )


@pytest.mark.parametrize("changed", [{"seed": 1}, {"validation_size": 60}, {"selection_size": 40}])
def test_processed_directory_is_keyed_by_parameters(tmp_path, synthetic_dir, changed):
    directory, files, _ = synthetic_dir
    raw = ingest_dataset(directory, tmp_path, files)
    settings = {"validation_size": 50, "seed": 0}
    first = preprocess_dataset(raw, tmp_path, **settings)
    assert preprocess_dataset(raw, tmp_path, **settings).arrays == first.arrays
    other = preprocess_dataset(raw, tmp_path, **(settings | changed))
    assert other.directory != first.directory
    assert first.arrays["x_val"].load().shape == (50, 784)


def blank_images(train_labels: np.ndarray, classes: int) -> dict[str, np.ndarray]:
    """Raw arrays of blank images with these training labels, one test image a class."""
    return {
        "train_images": np.zeros((len(train_labels), 28, 28), np.uint8),
        "train_labels": train_labels,
        "test_images": np.zeros((classes, 28, 28), np.uint8),
        "test_labels": np.arange(classes, dtype=np.uint8),
    }


def test_a_class_too_rare_to_stratify_is_one_line():
    labels = np.array([0] * 50 + [1] * 50 + [2], dtype=np.uint8)
    with pytest.raises(UsageError, match=r"^cannot take the stratified subsets and held-out"):
        preprocess_arrays(blank_images(labels, 3), validation_size=20, seed=0)
    two_classes = preprocess_arrays(blank_images(labels % 2, 2), None, 0)
    assert len(two_classes["y_val"]) == len(two_classes["y_selection"]) == 5


def test_held_out_splits_that_leave_no_training_images_are_refused():
    raw = blank_images(np.repeat(np.arange(2, dtype=np.uint8), 30), 2)
    with pytest.raises(UsageError, match=r"^validation_size 30 and selection_size 30 must leave"):
        preprocess_arrays(raw, validation_size=30, seed=0)
