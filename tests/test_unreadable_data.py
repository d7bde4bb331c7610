"""The user's data where this process cannot read or name a part of it, or whose folders
break the layout: one line naming the path, before any image is read, never a traceback."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tasks.data.sources
from tasks.core.errors import DatasetFileError
from tasks.data.ingest import check_data_source, ingest_dataset
from tasks.data.sources.kaggle_csv import COLUMNS


def write_png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((28, 28), dtype=np.uint8)
    pixels[4:24, 8:20] = value
    Image.fromarray(pixels).save(path)


def denied(error_path: Path) -> OSError:
    return PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(error_path))


def refused(message: str):
    """The one line the command prints after `error: `, as the whole message."""
    return pytest.raises(DatasetFileError, match=f"^{re.escape(message)}$")


@pytest.mark.parametrize("where", ["file", "class folder"])
def test_a_name_that_is_not_utf8_is_refused_in_one_line_before_reading(tmp_path, where):
    """Linux hands Python such a name with surrogates, which no UTF-8 cache key, log or
    report can carry: hashing the cache key raised UnicodeEncodeError."""
    latin1 = os.fsdecode(b"caf\xe9")
    write_png(tmp_path / "train" / "a" / "0.png", 100)
    if where == "file":
        write_png(tmp_path / "train" / "a" / f"{latin1}.png", 90)
        shown = f"{tmp_path}/train/a/caf\\xe9.png"
    else:
        write_png(tmp_path / "train" / latin1 / "0.png", 90)
        shown = f"{tmp_path}/train/caf\\xe9"
    with refused(f"{shown}: the name is not UTF-8; rename it"):
        ingest_dataset(tmp_path, tmp_path / "cache")


def test_a_class_folder_that_cannot_be_listed_is_named_not_counted_empty(tmp_path, monkeypatch):
    """Root reads everything, so the denial is made up: os.walk skipped such a folder, and
    the class seemed to have no images."""
    for label in ("a", "b"):
        write_png(tmp_path / "train" / label / "0.png", 100)
    unlisted, scandir = tmp_path / "train" / "b", os.scandir

    def listing(path="."):  # shutil.rmtree passes file descriptors
        if isinstance(path, str | os.PathLike) and Path(path) == unlisted:
            raise denied(unlisted)
        return scandir(path)

    monkeypatch.setattr(os, "scandir", listing)
    with refused(f"{unlisted}: cannot be listed (Permission denied)"):
        ingest_dataset(tmp_path, tmp_path / "cache")


def test_a_data_file_that_cannot_be_read_is_named_in_one_line(tmp_path, monkeypatch):
    """Hashing the CSV files for the cache key met the denial first, as a traceback."""
    header = ",".join(COLUMNS)
    for name in ("fashion-mnist_train.csv", "fashion-mnist_test.csv"):
        (tmp_path / name).write_text(f"{header}\n")
    train = tmp_path / "fashion-mnist_train.csv"

    def unreadable(path: Path) -> str:
        raise denied(path)

    monkeypatch.setattr(tasks.data.sources, "sha256_file", unreadable)
    with refused(f"{train}: permission denied; it cannot be read"):
        ingest_dataset(tmp_path, tmp_path / "cache")


def test_a_data_directory_that_cannot_be_searched_is_named_before_the_run(tmp_path, monkeypatch):
    """Python 3.11's Path.is_file raises, rather than answers, for a folder it may not
    search: the pre-flight check let the PermissionError through."""
    search = Path.is_dir

    def guarded(path: Path) -> bool:
        if path == tmp_path:
            raise denied(path)
        return search(path)

    monkeypatch.setattr(Path, "is_dir", guarded)
    with refused(f"{tmp_path}: permission denied; it cannot be read"):
        check_data_source(tmp_path, tmp_path / "cache")


@pytest.mark.parametrize(("loose", "held"), [(2, " (2 images directly in it)"), (0, "")])
def test_a_test_folder_without_class_folders_is_refused_before_the_run(tmp_path, loose, held):
    """Kaggle's competitions ship unlabelled test/*.png: read as a test split of no images,
    every class was then reported missing from it, one line each."""
    write_png(tmp_path / "train" / "a" / "0.png", 100)
    (tmp_path / "test").mkdir()
    for number in range(loose):
        write_png(tmp_path / "test" / f"{number}.png", 90)
    test = tmp_path / "test"
    with refused(
        f"{test}: no class folders{held}; expected test/<class>/<image>, or no test/ to split "
        "a test set off train/"
    ):
        check_data_source(tmp_path, tmp_path / "cache")
