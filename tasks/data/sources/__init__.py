"""The user's own data, in the layouts people have, told apart by what a directory holds.

- `idx`: the four Fashion-MNIST IDX files, gzipped or not (`tasks.data.sources.idx`);
- `csv`: Kaggle's `fashion-mnist_train.csv` and `fashion-mnist_test.csv`
  (`tasks.data.sources.kaggle_csv`);
- `image-folder`: `train/<class>/<image>` and optionally `test/<class>/<image>`
  (`tasks.data.sources.folders`).

Class names come from the folder names, or from a `classes.txt` beside the IDX or CSV
files (`tasks.data.sources.base`). A directory holding none of the layouts, only part of one,
or more than one is refused, naming what it lacks.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from tasks.core.errors import DatasetFileError, UsageError
from tasks.core.storage import code_version, sha256_file
from tasks.data import images
from tasks.data.sources import base, folders, idx, kaggle_csv
from tasks.data.sources.base import CLASSES_FILE, ParsedData
from tasks.data.sources.folders import class_folders, folders_fingerprint, load_folders
from tasks.data.sources.idx import (
    FASHION_MNIST_FILES,
    IdxFile,
    idx_paths,
    load_idx,
    missing_idx_files,
)
from tasks.data.sources.kaggle_csv import CSV_FILES, load_csv, missing_csv_files

LAYOUTS_LOOKED_FOR = (
    "the four IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz, gzipped or not), Kaggle's "
    "fashion-mnist_train.csv and fashion-mnist_test.csv, or image folders "
    "train/<class>/ (and test/<class>/)"
)
LAYOUT_NAMES = {"idx": "IDX files", "csv": "Kaggle CSV files", "image-folder": "image folders"}


def detect_layout(data_dir: Path, files: Mapping[str, IdxFile] = FASHION_MNIST_FILES) -> str:
    """The layout of `data_dir` ("idx", "csv" or "image-folder"), from its file and folder
    names alone; nothing is parsed.

    Raises:
        UsageError: `data_dir` is a file.
        DatasetFileError: it does not exist, holds no layout, part of one, or several;
            or its class folders break the image-folder layout.
    """
    if data_dir.is_file():
        raise UsageError(f"{data_dir}: is a file, not a directory")
    if not data_dir.is_dir():
        raise DatasetFileError(f"{data_dir}: data directory does not exist")
    missing = _missing_parts(data_dir, files)
    complete = [layout for layout, parts in missing.items() if parts == []]
    if len(complete) > 1:
        found = " and ".join(LAYOUT_NAMES[layout] for layout in complete)
        raise DatasetFileError(
            f"{data_dir}: holds both {found}; point --data-dir at a directory with one"
        )
    if complete == ["image-folder"]:
        class_folders(data_dir)
    if complete:
        return complete[0]
    for parts in missing.values():
        if parts:
            raise DatasetFileError(f"{data_dir}: missing {', '.join(parts)}")
    raise DatasetFileError(f"{data_dir}: no data found; expected {LAYOUTS_LOOKED_FOR}")


def _missing_parts(data_dir: Path, files: Mapping[str, IdxFile]) -> dict[str, list[str] | None]:
    """Per layout, the parts `data_dir` lacks; None when it holds no part of it."""
    missing_idx, missing_csv = missing_idx_files(data_dir, files), missing_csv_files(data_dir)
    if (data_dir / "train").is_dir():
        missing_folders = []
    else:
        missing_folders = ["train/"] if (data_dir / "test").is_dir() else None
    return {
        "idx": missing_idx if len(missing_idx) < len(files) else None,
        "csv": missing_csv if len(missing_csv) < len(CSV_FILES) else None,
        "image-folder": missing_folders,
    }


def input_key(
    layout: str,
    data_dir: Path,
    files: Mapping[str, IdxFile],
    test_fraction: float,
    seed: int,
) -> dict:
    """What the parsed data depends on: the input files' bytes, the class names' file, the
    split's parameters when a split is made, and the code that does the work."""
    if layout == "image-folder":
        parts: dict = {"images": folders_fingerprint(data_dir)}
        if not (data_dir / "test").is_dir():
            parts["split"] = {"test_fraction": test_fraction, "seed": seed}
        modules = [folders.__file__, images.__file__]
    else:
        if layout == "idx":
            paths, modules = list(idx_paths(data_dir, files).values()), [idx.__file__]
        else:
            paths, modules = [data_dir / name for name in CSV_FILES.values()], [kaggle_csv.__file__]
        if (data_dir / CLASSES_FILE).is_file():
            paths.append(data_dir / CLASSES_FILE)
        parts = {path.name: sha256_file(path) for path in paths}
    code = [code_version(module) for module in (*modules, base.__file__, __file__)]
    return {"layout": layout, "inputs": parts, "code": code}


def parse_layout(
    layout: str,
    data_dir: Path,
    files: Mapping[str, IdxFile],
    test_fraction: float,
    seed: int,
) -> ParsedData:
    """The data of `data_dir`, read as `layout`."""
    if layout == "idx":
        return load_idx(data_dir, files)
    if layout == "csv":
        return load_csv(data_dir)
    return load_folders(data_dir, test_fraction, seed)
