from __future__ import annotations

import numpy as np
import pytest

from tasks.errors import DatasetFileError, DataValidationError
from tasks.ingest import FASHION_MNIST_FILES, ingest_dataset
from tasks.validate import validate_dataset, validate_raw_dataset
from tests.idx_files import idx_bytes, write_idx_gz


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


def test_both_gates_pass_and_are_reported(tmp_path, synthetic_dir):
    directory, files, _ = synthetic_dir
    raw = ingest_dataset(directory, tmp_path / "data", files)
    summary = validate_raw_dataset(raw, tmp_path / "data", published=files)
    assert list(summary.gates) == ["schema", "checksums"]
    assert summary.gates["checksums"] == (
        "passed: the 4 files match the published Fashion-MNIST SHA-256"
    )
    assert summary.gates["schema"].startswith("passed: 784 uint8 pixels per image")
    cached = validate_raw_dataset(raw, tmp_path / "data", published=files)
    assert cached == summary


def test_files_that_parse_but_break_the_schema_fail_the_schema_gate(tmp_path, synthetic_dir):
    directory, files, arrays = synthetic_dir
    labels = arrays["train_labels"].copy()
    labels[[4, 9]] = 12  # a valid IDX labels file, with labels outside the 10 classes
    write_idx_gz(directory / FASHION_MNIST_FILES["train_labels"].name, idx_bytes(labels))
    raw = ingest_dataset(directory, tmp_path / "data", files)  # parsing accepts it
    with pytest.raises(
        DataValidationError,
        match=r"^data validation failed: train labels: isin\(range\(0, 10\)\) on column label "
        r"failed for 2 rows \(e.g. row 4: 12, row 9: 12\)$",
    ):
        validate_raw_dataset(raw, tmp_path / "data", published=files)
    validated = tmp_path / "data" / "validated"  # nothing cached, not even a staging dir
    assert not validated.exists() or list(validated.iterdir()) == []


def test_checksum_gate_refuses_files_that_are_not_the_published_ones(tmp_path, synthetic_dir):
    directory, files, _ = synthetic_dir
    raw = ingest_dataset(directory, tmp_path / "data", files)
    with pytest.raises(
        DatasetFileError,
        match=rf"^{directory}/train-images-idx3-ubyte.gz: checksum mismatch: .*"
        r"\(not the published Fashion-MNIST file\) \(and 3 more files differ\)$",
    ):
        validate_raw_dataset(raw, tmp_path / "data")  # the published Fashion-MNIST checksums
