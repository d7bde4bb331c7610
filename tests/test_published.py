"""Broken copies of Fashion-MNIST: files with its names and shapes whose content is not the
published one get a WARNING naming what differs; a label beyond 9 is refused as out of
range, naming the labels file."""

from __future__ import annotations

import gzip
import logging
import shutil
import struct

import numpy as np
import pytest

from tasks.core.errors import DataValidationError
from tasks.data.ingest import ingest_dataset
from tasks.data.published import near_miss_warning
from tasks.data.sources.idx import FASHION_MNIST_FILES
from tasks.data.validate import validate_raw_dataset
from tests.support.data import REAL_DATA_DIR
from tests.support.idx_files import idx_bytes, write_dataset, write_idx_gz

SIZES = {"train": 300, "test": 100}  # write_dataset's


def changed_copy(source, target, name: str, positions, change) -> None:
    """A copy of the four files in `target` where file `name`'s values at `positions` (of
    its flat array) become `change(values)`, under the same header."""
    shutil.copytree(source, target)
    with gzip.open(source / name) as stream:
        content = stream.read()
    dimensions = content[3]
    header = 4 + 4 * dimensions
    shape = struct.unpack(f">{dimensions}I", content[4:header])
    array = np.frombuffer(content, np.uint8, offset=header).reshape(-1).copy()
    array[positions] = change(array[positions])
    assert array.size == np.prod(shape)
    (target / name).write_bytes(gzip.compress(content[:header] + array.tobytes(), compresslevel=1))


def test_a_copy_with_one_image_changed_is_named_and_counted(tmp_path):
    files, _ = write_dataset(tmp_path / "published")  # stands in for the published files
    pixel = 784 * 41 + 28 * 3 + 3  # image 41 (row 42)
    changed_copy(tmp_path / "published", tmp_path / "copy", files["train_images"].name, pixel,
                 lambda value: value ^ 0xFF)  # fmt: skip
    raw = ingest_dataset(tmp_path / "copy", tmp_path / "cache", files)
    warning = near_miss_warning(raw, files, tmp_path / "published", SIZES)
    assert warning == (
        "named and shaped like Fashion-MNIST, but 1 image of train-images-idx3-ubyte.gz "
        f"differs from the published file (row 42, compared with {tmp_path / 'published'}"
        "/train-images-idx3-ubyte.gz): trained on as your data; its results are not "
        "comparable with published Fashion-MNIST results"
    )
    without_reference = near_miss_warning(raw, files, tmp_path / "nowhere", SIZES)
    assert "but train-images-idx3-ubyte.gz differs from the published file (SHA-256 " in (
        without_reference
    )
    # The published files themselves, and data of other shapes, get no warning.
    published = ingest_dataset(tmp_path / "published", tmp_path / "cache", files)
    assert near_miss_warning(published, files, tmp_path / "published", SIZES) == ""
    assert near_miss_warning(raw, files, tmp_path / "published", {"train": 60_000}) == ""


def test_labels_that_differ_are_counted_as_labels(tmp_path):
    files, _ = write_dataset(tmp_path / "published")
    changed_copy(tmp_path / "published", tmp_path / "copy", files["test_labels"].name,
                 slice(5, 9), lambda labels: (labels + 1) % 10)  # fmt: skip
    raw = ingest_dataset(tmp_path / "copy", tmp_path / "cache", files)
    warning = near_miss_warning(raw, files, tmp_path / "published", SIZES)
    assert "but 4 labels of t10k-labels-idx1-ubyte.gz differ from the published file (rows " \
        "6, 7, 8…" in warning  # fmt: skip


def test_a_label_beyond_nine_is_out_of_range_naming_the_labels_file(tmp_path):
    files, arrays = write_dataset(tmp_path / "data")
    labels = arrays["train_labels"].copy()
    labels[7] = 10
    write_idx_gz(tmp_path / "data" / files["train_labels"].name, idx_bytes(labels))
    raw = ingest_dataset(tmp_path / "data", tmp_path / "cache", FASHION_MNIST_FILES)
    assert len(raw.class_names) == 10  # not an eleventh class
    with pytest.raises(DataValidationError) as refused:
        validate_raw_dataset(raw, tmp_path / "cache", tmp_path / "reports")
    assert "label outside the classes: 1 (train-labels-idx1-ubyte.gz row 8: label 10 is out " \
        "of range: expected one of the 10 classes, 0-9)" in str(refused.value)  # fmt: skip
    assert "too few images" not in str(refused.value)


@pytest.mark.slow
def test_the_real_files_with_one_flipped_byte_get_a_warning(tmp_path, caplog, real_data_dir):
    changed_copy(
        real_data_dir,
        tmp_path / "copy",
        "train-images-idx3-ubyte.gz",
        784 * 1234 + 400,
        lambda value: value ^ 1,
    )  # one bit of image 1234 (row 1235)
    raw = ingest_dataset(tmp_path / "copy", tmp_path / "cache", FASHION_MNIST_FILES)
    with caplog.at_level(logging.WARNING):
        summary = validate_raw_dataset(raw, tmp_path / "cache", tmp_path / "reports")
    expected = (
        "named and shaped like Fashion-MNIST, but 1 image of train-images-idx3-ubyte.gz differs "
        f"from the published file (row 1235, compared with {REAL_DATA_DIR}"
    )
    assert summary.warning.startswith(expected)
    assert summary.dataset.startswith("your data: idx at ")
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        summary.warning
    ]


@pytest.mark.slow
def test_the_real_files_with_a_label_of_ten_are_refused_naming_the_labels_file(
    tmp_path, real_data_dir
):
    changed_copy(real_data_dir, tmp_path / "copy", "train-labels-idx1-ubyte.gz", 500,
                 lambda label: 10)  # fmt: skip
    raw = ingest_dataset(tmp_path / "copy", tmp_path / "cache", FASHION_MNIST_FILES)
    with pytest.raises(DataValidationError) as refused:
        validate_raw_dataset(raw, tmp_path / "cache", tmp_path / "reports")
    assert str(refused.value).startswith(
        f"data validation failed for your data: idx at {tmp_path / 'copy'} (10 classes): "
        "label outside the classes: 1 (train-labels-idx1-ubyte.gz row 501: label 10 is out of "
        "range: expected one of the 10 classes, 0-9)"
    )
