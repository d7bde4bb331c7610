from __future__ import annotations

import numpy as np
import pytest

from tasks.errors import DataValidationError
from tasks.validate import validate_dataset


@pytest.fixture
def arrays(synthetic_dir):
    return {key: value.copy() for key, value in synthetic_dir[2].items()}


def test_valid_data_gives_counts(arrays):
    summary = validate_dataset(arrays)
    assert summary.rows == {"train": 300, "test": 100}
    assert summary.class_counts["train"] == [30] * 10
    assert summary.class_counts["test"] == [10] * 10


def test_label_out_of_range_names_rows_and_values(arrays):
    arrays["train_labels"][[4, 9]] = 12
    with pytest.raises(
        DataValidationError,
        match=r"train labels: isin\(range\(0, 10\)\) on column label failed for 2 rows "
        r"\(e.g. row 4: 12, row 9: 12\)",
    ):
        validate_dataset(arrays)


def test_wrong_image_size_fails_the_pixel_count(arrays):
    arrays["test_images"] = np.ones((100, 32, 32), dtype=np.uint8)
    with pytest.raises(DataValidationError, match=r"test images: has_784_pixel_columns failed"):
        validate_dataset(arrays)


def test_wrong_dtype_is_reported(arrays):
    arrays["test_images"] = arrays["test_images"].astype(np.float32)
    with pytest.raises(
        DataValidationError, match=r"test images: dtype\('uint8'\).* \(found float32\)"
    ):
        validate_dataset(arrays)


def test_blank_images_are_counted_once_per_image(arrays):
    arrays["train_images"][[5, 17, 40, 41]] = 0
    with pytest.raises(
        DataValidationError,
        match=r"train images: image_not_blank failed for 4 rows "
        r"\(e.g. row 5: 0, row 17: 0, row 40: 0\)",
    ):
        validate_dataset(arrays)


def test_missing_class_is_named(arrays):
    arrays["test_labels"][arrays["test_labels"] == 6] = 0
    with pytest.raises(
        DataValidationError, match=r"test labels: classes with fewer than 5% of 100 rows: Shirt 0"
    ):
        validate_dataset(arrays)


def test_all_failures_are_reported_together(arrays):
    arrays["train_labels"][0] = 99
    arrays["test_images"][3] = 0
    with pytest.raises(DataValidationError) as raised:
        validate_dataset(arrays)
    message = str(raised.value)
    assert "train labels: isin" in message
    assert "test images: image_not_blank failed for 1 rows (e.g. row 3: 0)" in message
    assert "\n" not in message
