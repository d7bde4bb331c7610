from __future__ import annotations

import csv
import json
import logging
import re
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from tasks.core.contracts import RawDataset, UnreadableFile
from tasks.core.errors import DataValidationError, StorageError
from tasks.core.storage import array_refs, save_arrays
from tasks.data.checks import check_data
from tasks.data.sources.idx import FASHION_MNIST_FILES
from tasks.data.validate import validate_raw_dataset
from tests.support.idx_files import make_images

NAMES = ("train_images", "train_labels", "test_images", "test_labels")
THREE = ("sandal", "sneaker", "boot")
CSV_FILES = {"train": "fashion-mnist_train.csv", "test": "fashion-mnist_test.csv"}
OFFICIAL_SHA256 = {spec.name: spec.sha256 for spec in FASHION_MNIST_FILES.values()}


def make_arrays(n_train: int = 60, n_test: int = 30, n_classes: int = 3) -> dict:
    """Distinct learnable images, every class equally often."""
    arrays = {}
    for seed, (split, size) in enumerate((("train", n_train), ("test", n_test))):
        labels = (np.arange(size) % n_classes).astype(np.uint8)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = make_images(labels, seed), labels
    return arrays


def make_raw(tmp_path, arrays: dict, name: str = "arrays", **fields) -> RawDataset:
    """The arrays saved under `tmp_path/name`, as Kaggle-CSV data of three classes unless
    `fields` say otherwise."""
    directory = tmp_path / name
    directory.mkdir()
    save_arrays(directory, arrays)
    defaults = {"class_names": THREE, "layout": "csv", "split_files": CSV_FILES, "file_sha256": {}}
    return RawDataset(tmp_path / "mine", arrays=array_refs(directory, NAMES), **defaults | fields)


def validate(tmp_path, raw: RawDataset, **thresholds):
    return validate_raw_dataset(raw, tmp_path / "cache", tmp_path / "reports", **thresholds)


def refusal(tmp_path, raw: RawDataset, **thresholds) -> str:
    with pytest.raises(DataValidationError) as raised:
        validate(tmp_path, raw, **thresholds)
    return str(raised.value)


def error_rows(tmp_path) -> list[dict]:
    with open(tmp_path / "reports" / "validation_errors.csv", newline="") as stream:
        return list(csv.DictReader(stream))


def cache_entries(tmp_path) -> list:
    validated = tmp_path / "cache" / "validated"
    return sorted(validated.iterdir()) if validated.exists() else []


def test_valid_data_gives_counts(tmp_path):
    problems, summary = check_data(make_raw(tmp_path, make_arrays()), make_arrays(), 10, 0.01)
    assert problems == []
    assert summary.rows == {"train": 60, "test": 30}
    assert summary.class_counts == {"train": [20, 20, 20], "test": [10, 10, 10]}


def test_official_checksums_name_the_data_fashion_mnist(tmp_path):
    raw = make_raw(
        tmp_path, make_arrays(100, 100, 10), layout="idx", file_sha256=OFFICIAL_SHA256,
        class_names=tuple("0123456789"), split_files={},
    )  # fmt: skip
    summary = validate(tmp_path, raw)
    assert summary.dataset == "Fashion-MNIST"
    assert list(summary.gates) == ["checksums", "schema", "duplicates"]
    assert summary.gates["checksums"] == (
        "passed: the 4 files match the published Fashion-MNIST SHA-256, "
        "so the data is called Fashion-MNIST"
    )
    assert summary.gates["schema"].startswith("passed: 784 uint8 pixels per image")
    assert validate(tmp_path, raw) == summary  # reused from the cache


def test_idx_files_with_other_checksums_are_the_users_data(tmp_path):
    checksums = OFFICIAL_SHA256 | {"t10k-images-idx3-ubyte.gz": "ab" * 32}
    raw = make_raw(tmp_path, make_arrays(), layout="idx", file_sha256=checksums, split_files={})
    summary = validate(tmp_path, raw)
    assert summary.dataset == f"your data: idx at {tmp_path / 'mine'} (3 classes)"
    assert summary.gates["checksums"] == (
        f"not Fashion-MNIST: {tmp_path / 'mine'}/t10k-images-idx3-ubyte.gz: checksum mismatch: "
        "decompressed content has SHA-256 abababababababab…, expected 5b4141f0afbad91e… "
        "(not the published Fashion-MNIST file)"
    )


def test_three_class_image_folders_pass_under_the_users_name(tmp_path):
    origins = tmp_path / "origins.json"  # each row's image file, as ingestion writes it
    files = {
        split: [f"{split}/{THREE[i % 3]}/{i}.png" for i in range(n)]
        for split, n in [("train", 60), ("test", 30)]
    }
    origins.write_text(json.dumps(files))
    raw = make_raw(tmp_path, make_arrays(), layout="image-folder", split_files={}, origins=origins)
    summary = validate(tmp_path, raw)
    assert summary.dataset == f"your data: image-folder at {tmp_path / 'mine'} (3 classes)"
    assert summary.class_counts == {"train": [20, 20, 20], "test": [10, 10, 10]}
    assert summary.gates == {
        "checksums": "not Fashion-MNIST: image-folder data, not the published IDX files",
        "schema": "passed: 784 uint8 pixels per image, in 0-255, not blank; labels within the "
        "3 classes; at least 10 images of every class in each split; no unreadable files",
        "duplicates": "passed: 0 of 30 test images (0.00%) also in train; at most 1.00% allowed",
    }


def test_every_problem_is_collected_into_one_line_and_the_csv(tmp_path):
    arrays = make_arrays()
    for split in ("train", "test"):  # 28 x 27 int16 images: wrong shape and dtype
        arrays[f"{split}_images"] = arrays[f"{split}_images"][:, :, :27].astype(np.int16)
    arrays["test_images"][:3] = arrays["train_images"][20:23]  # 10% of test is in train
    arrays["train_images"][[3, 6, 9, 12]] = 0
    arrays["train_images"][4, 5, 5] = 300
    arrays["train_labels"][[1, 2]] = 7
    arrays["test_labels"][arrays["test_labels"] == 2] = 0  # no boot left in test
    arrays["test_labels"] = arrays["test_labels"].astype(np.int64)
    unreadable = (
        UnreadableFile("train/sandal/broken.png", "truncated PNG file"),
        UnreadableFile("fashion-mnist_train.csv row 8", "783 pixels;\nexpected 784"),
    )
    message = refusal(tmp_path, make_raw(tmp_path, arrays, unreadable=unreadable))
    train, test = "fashion-mnist_train.csv", "fashion-mnist_test.csv"
    shared = "10.00% of test in train, at most 1.00% allowed"
    assert message == (
        f"data validation failed for your data: csv at {tmp_path / 'mine'} (3 classes): "
        "unreadable file: 2 (train/sandal/broken.png: truncated PNG file, "
        "fashion-mnist_train.csv row 8: 783 pixels; expected 784); "
        f"image shape: 2 ({train}: images are 28 x 27; expected 28 x 28, "
        f"{test}: images are 28 x 27; expected 28 x 28); "
        f"wrong dtype: 3 ({train}: pixels are int16; expected uint8, "
        f"{test}: pixels are int16; expected uint8, {test}: labels are int64; expected uint8); "
        f"pixel outside 0-255: 1 ({train} row 5: a pixel of 300; expected 0-255); "
        f"blank image: 4 (e.g. {train} row 4: every pixel is 0, {train} row 7: every pixel "
        f"is 0, {train} row 10: every pixel is 0); "
        f"label outside the classes: 2 ({train} row 2: label 7 is out of range: expected one "
        f"of the 3 classes, 0-2, {train} row 3: label 7 is out of range: expected one of the "
        "3 classes, 0-2); "
        f"too few images of a class: 1 ({test}: boot has 0 images in test; at least 10 "
        "needed); "
        f"image in both train and test: 3 ({test} row 1: same pixels as {train} row 21 "
        f"({shared}), {test} row 2: same pixels as {train} row 22, {test} row 3: same "
        f"pixels as {train} row 23); "
        f"all 18 are listed in {tmp_path / 'reports' / 'validation_errors.csv'}"
    )
    rows = error_rows(tmp_path)
    assert Counter(row["check"] for row in rows) == {
        "unreadable file": 2, "image shape": 2, "wrong dtype": 3, "pixel outside 0-255": 1,
        "blank image": 4, "label outside the classes": 2, "too few images of a class": 1,
        "image in both train and test": 3,
    }  # fmt: skip
    assert rows[0] == {
        "split": "", "file": "train/sandal/broken.png", "row": "",
        "check": "unreadable file", "problem": "truncated PNG file",
    }  # fmt: skip
    assert {"split": "train", "file": f"{train} row 13", "row": "12", "check": "blank image",
            "problem": "every pixel is 0"} in rows  # fmt: skip
    assert cache_entries(tmp_path) == []  # a refusal is never cached as a pass
    assert list((tmp_path / "reports").iterdir()) == [tmp_path / "reports/validation_errors.csv"]


def test_label_outside_the_classes_is_refused(tmp_path):
    arrays = make_arrays()
    arrays["train_labels"][[4, 9]] = 3  # a fourth class of three
    assert refusal(tmp_path, make_raw(tmp_path, arrays)).endswith(
        "(3 classes): label outside the classes: 2 (fashion-mnist_train.csv row 5: "
        "label 3 is out of range: expected one of the 3 classes, 0-2, fashion-mnist_train.csv "
        "row 10: label 3 is out of range: expected one of the 3 classes, 0-2); all 2 are "
        "listed in "
        f"{tmp_path / 'reports' / 'validation_errors.csv'}"
    )


def test_class_below_the_minimum_is_refused(tmp_path):
    arrays = make_arrays(n_test=27)  # 9 images of each class in test
    raw = make_raw(tmp_path, arrays)
    message = refusal(tmp_path, raw)
    assert (
        "too few images of a class: 3 (fashion-mnist_test.csv: sandal has 9 images in " in message
    )
    assert [row["problem"] for row in error_rows(tmp_path)][2] == (
        "boot has 9 images in test; at least 10 needed"
    )
    assert validate(tmp_path, raw, min_images_per_class=9).class_counts["test"] == [9, 9, 9]


def test_an_empty_class_folder_is_a_class_without_images(tmp_path):
    arrays = make_arrays()
    arrays["train_labels"][arrays["train_labels"] == 1] = 0  # train/sneaker/ is empty
    raw = make_raw(tmp_path, arrays, layout="image-folder", split_files={})
    assert (
        "too few images of a class: 1 (train: sneaker has 0 images in train; at least 10 needed)"
        in refusal(tmp_path, raw)
    )


def test_labels_numbered_from_1_are_said_to_be_so(tmp_path):
    arrays = make_arrays()
    for split in ("train", "test"):
        arrays[f"{split}_labels"] += 1  # 1-3, read as four classes "0"-"3" with "0" empty
    refused = refusal(tmp_path, make_raw(tmp_path, arrays, class_names=("0", "1", "2", "3")))
    hint = (
        "0 has 0 images in train; at least 10 needed (no image in train or test has label 0: "
        "labels number the classes from 0, Fashion-MNIST's 0-9)"
    )
    assert f"too few images of a class: 2 (fashion-mnist_train.csv: {hint}" in refused
    in_test = hint.replace("images in train", "images in test")
    assert [row["problem"] for row in error_rows(tmp_path)] == [hint, in_test]


def test_class_0_empty_in_one_split_only_gets_no_numbering_hint(tmp_path):
    arrays = make_arrays()
    arrays["train_labels"][arrays["train_labels"] == 0] = 1
    refusal(tmp_path, make_raw(tmp_path, arrays))
    assert [row["problem"] for row in error_rows(tmp_path)] == [
        "sandal has 0 images in train; at least 10 needed"
    ]


@pytest.mark.parametrize(("shared", "refused"), [(1, False), (2, True)])
def test_images_in_train_and_test_are_refused_above_the_threshold(tmp_path, shared, refused):
    arrays = make_arrays(n_train=90, n_test=100)
    arrays["test_images"][50 : 50 + shared] = arrays["train_images"][:shared]
    raw = make_raw(tmp_path, arrays)
    if refused:
        assert (
            "image in both train and test: 2 (fashion-mnist_test.csv row 51: same pixels as "
            "fashion-mnist_train.csv row 1 (2.00% of test in train, at most 1.00% "
            "allowed), fashion-mnist_test.csv row 52: " in refusal(tmp_path, raw)
        )
        rows = [(row["split"], row["row"]) for row in error_rows(tmp_path)]
        assert rows == [("test", "50"), ("test", "51")]
    else:
        gate = validate(tmp_path, raw).gates["duplicates"]
        assert gate == "passed: 1 of 100 test images (1.00%) also in train; at most 1.00% allowed"


def test_unreadable_files_are_refused(tmp_path):
    unreadable = (UnreadableFile("test/boot/1.png", "cannot identify image file"),)
    raw = make_raw(tmp_path, make_arrays(), unreadable=unreadable)
    assert (
        ": unreadable file: 1 (test/boot/1.png: cannot identify image file); it is listed"
        in refusal(tmp_path, raw)
    )


def test_an_earlier_runs_errors_file_is_removed_when_the_data_passes(tmp_path, caplog):
    bad = make_arrays()
    bad["test_images"][0] = 0
    refusal(tmp_path, make_raw(tmp_path, bad, "bad"))
    errors_file = tmp_path / "reports" / "validation_errors.csv"
    assert errors_file.is_file()
    with caplog.at_level(logging.INFO):
        validate(tmp_path, make_raw(tmp_path, make_arrays(), "good"))
    assert not errors_file.exists()
    assert f"removed {errors_file} of an earlier run: this data passed" in caplog.messages


def test_the_cache_key_covers_thresholds_and_class_names(tmp_path):
    raw = make_raw(tmp_path, make_arrays())
    validate(tmp_path, raw)
    validate(tmp_path, raw)
    assert len(cache_entries(tmp_path)) == 1
    validate(tmp_path, raw, min_images_per_class=5)
    validate(tmp_path, raw, max_duplicate_fraction=0.5)
    validate(tmp_path, replace(raw, class_names=("a", "b", "c")))
    assert len(cache_entries(tmp_path)) == 4


def test_an_errors_file_that_cannot_be_written_is_a_storage_error(tmp_path, caplog):
    (tmp_path / "reports").write_text("a file where the output directory should be")
    arrays = make_arrays()
    arrays["train_images"][0] = 0
    errors_file = tmp_path / "reports" / "validation_errors.csv"
    with pytest.raises(StorageError, match=f"^{re.escape(str(errors_file))}: file exists$"):
        validate(tmp_path, make_raw(tmp_path, arrays))
    assert "blank image: 1 (fashion-mnist_train.csv row 1: every pixel is 0)" in caplog.text


def test_one_class_is_refused_as_too_few_classes(tmp_path):
    arrays = make_arrays(n_classes=1)
    message = refusal(tmp_path, make_raw(tmp_path, arrays, class_names=("only",)))
    assert f"number of classes: 1 ({tmp_path / 'mine'}: 1 classes; expected 2 to 100)" in message
