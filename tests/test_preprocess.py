from __future__ import annotations

import numpy as np
import pytest

from tasks.core.errors import UsageError
from tasks.data.ingest import ingest_dataset
from tasks.data.preprocess import (
    preprocess_arrays,
    preprocess_dataset,
    scale_images,
    split_train_validation,
    stratified_subset,
)
from tasks.training.models.cnn import to_image_tensor


def test_scale_images_to_unit_float32():
    images = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    scaled = scale_images(images)
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, [[0.0, 1.0, 0.2, 0.4]], rtol=1e-6)
    assert to_image_tensor(np.zeros((3, 784), np.float32)).shape == (3, 28, 28, 1)


def test_split_is_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(10), 100)
    train, val = split_train_validation(labels, 200, seed=7)
    assert len(train) == 800
    assert len(val) == 200
    assert not set(train) & set(val)
    assert np.bincount(labels[val]).tolist() == [20] * 10
    again, _ = split_train_validation(labels, 200, seed=7)
    other, _ = split_train_validation(labels, 200, seed=8)
    np.testing.assert_array_equal(train, again)
    assert not np.array_equal(train, other)


def test_subset_keeps_class_balance():
    labels = np.repeat(np.arange(10), 50)
    chosen = stratified_subset(labels, 100, seed=0)
    assert np.bincount(labels[chosen]).tolist() == [10] * 10
    assert len(stratified_subset(labels, None, seed=0)) == 500


def test_preprocess_arrays_leaves_inputs_untouched(synthetic_dir):
    raw = synthetic_dir[2]
    before = {key: value.copy() for key, value in raw.items()}
    out = preprocess_arrays(raw, validation_size=50, seed=0, test_subset_size=40)
    for key in raw:
        np.testing.assert_array_equal(raw[key], before[key])
    assert out["x_train"].shape == (250, 784)
    assert out["x_val"].shape == (50, 784)
    assert out["x_test"].shape == (40, 784)
    assert out["x_train"].max() <= 1.0
    np.testing.assert_array_equal(out["y_test"], raw["test_labels"][out["test_index"]])
    np.testing.assert_allclose(
        out["x_test"][0], raw["test_images"][out["test_index"][0]].ravel() / 255
    )


@pytest.mark.parametrize("changed", [{"seed": 1}, {"validation_size": 60}])
def test_processed_directory_is_keyed_by_parameters(tmp_path, synthetic_dir, changed):
    directory, files, _ = synthetic_dir
    raw = ingest_dataset(directory, tmp_path, files)
    settings = {"validation_size": 50, "seed": 0}
    first = preprocess_dataset(raw, tmp_path, **settings)
    assert preprocess_dataset(raw, tmp_path, **settings).arrays == first.arrays
    other = preprocess_dataset(raw, tmp_path, **(settings | changed))
    assert other.directory != first.directory
    assert first.arrays["x_val"].load().shape == (50, 784)


def test_a_class_too_rare_to_stratify_is_one_line():
    labels = np.array([0] * 50 + [1] * 50 + [2], dtype=np.uint8)
    raw = {
        "train_images": np.zeros((101, 28, 28), np.uint8),
        "train_labels": labels,
        "test_images": np.zeros((3, 28, 28), np.uint8),
        "test_labels": np.arange(3, dtype=np.uint8),
    }
    with pytest.raises(UsageError, match=r"^cannot take the stratified subsets and validation"):
        preprocess_arrays(raw, validation_size=20, seed=0)
    assert len(preprocess_arrays({**raw, "train_labels": labels % 2}, None, 0)["y_val"]) == 10
