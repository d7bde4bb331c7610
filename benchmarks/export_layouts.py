"""The same Fashion-MNIST images in every layout ingestion reads, for the acceptance runs.

    python benchmarks/export_layouts.py --output /tmp/layouts [--source DIR]
        [--layouts csv,png] [--classes "Sandal,Sneaker,Ankle boot" --rename "sandal,sneaker,boot"]

Reads the four IDX files of `--source` (default: Debian's dataset-fashion-mnist) and writes

- `csv/`: Kaggle's `fashion-mnist_train.csv` and `fashion-mnist_test.csv`;
- `png/`: `train/<class>/<row>.png` and `test/<class>/<row>.png`, 28x28 grayscale PNGs
  named by their row (`00042.png`), so ingestion reads them back in the IDX order. The
  class folders are `<label>-<name>`, "/" replaced by "-" (`0-T-shirt-top`, ...,
  `9-Ankle boot`): sorted, they give each class its IDX label, so all three layouts
  give identical arrays. Their class names differ from the IDX run's by that prefix;
- `subset/` with `--classes`: only those classes, in folders named by `--rename` (or
  their own names), labelled in the sorted order of those names.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from tasks.data.ingest import FASHION_MNIST_FILES, SYSTEM_DATA_DIR
from tasks.data.sources.idx import load_idx
from tasks.data.sources.kaggle_csv import COLUMNS, CSV_FILES

SPLITS = ("train", "test")
_DECIMAL = [str(value) for value in range(256)]


def export_csv(arrays: dict[str, np.ndarray], output: Path) -> None:
    """Kaggle's two CSV files: a header, then label and 784 pixels a row."""
    output.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        images = arrays[f"{split}_images"].reshape(len(arrays[f"{split}_images"]), -1)
        with open(output / CSV_FILES[split], "w") as stream:
            stream.write(",".join(COLUMNS) + "\n")
            for label, pixels in zip(arrays[f"{split}_labels"].tolist(), images, strict=True):
                stream.write(f"{label},{','.join(map(_DECIMAL.__getitem__, pixels.tolist()))}\n")


def folder_name(name: str) -> str:
    """A class name as a folder name: "/" is the one character a folder name cannot hold."""
    return name.replace("/", "-")


def numbered_folders(class_names: Sequence[str]) -> list[str]:
    """`<label>-<name>`, zero-padded, so the folders sort in label order."""
    width = len(str(len(class_names) - 1))
    return [f"{label:0{width}d}-{folder_name(name)}" for label, name in enumerate(class_names)]


def export_image_folders(
    arrays: dict[str, np.ndarray], folders: Sequence[str], output: Path
) -> None:
    """`<split>/<folder of the label>/<row>.png`, rows numbered from 0 in each split."""
    for split in SPLITS:
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        for folder in folders:
            (output / split / folder).mkdir(parents=True, exist_ok=True)
        width = len(str(max(len(labels) - 1, 0)))
        for row, (image, label) in enumerate(zip(images, labels, strict=True)):
            path = output / split / folders[label] / f"{row:0{width}d}.png"
            Image.fromarray(np.ascontiguousarray(image)).save(path)


def subset(
    arrays: dict[str, np.ndarray], class_names: Sequence[str], classes: Sequence[str]
) -> dict[str, np.ndarray]:
    """The rows of `classes` only, relabelled 0.. in the order given."""
    unknown = [name for name in classes if name not in class_names]
    if unknown:
        raise SystemExit(f"error: unknown classes {unknown}; the data has {list(class_names)}")
    old = [class_names.index(name) for name in classes]
    relabel = np.zeros(256, dtype=np.uint8)
    relabel[old] = np.arange(len(old))
    chosen = {}
    for split in SPLITS:
        labels = arrays[f"{split}_labels"]
        rows = np.isin(labels, old)
        chosen[f"{split}_images"] = arrays[f"{split}_images"][rows]
        chosen[f"{split}_labels"] = relabel[labels[rows]]
    return chosen


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=SYSTEM_DATA_DIR, help="the IDX files")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--layouts", default="csv,png", help="comma-separated: csv, png")
    parser.add_argument("--classes", help="comma-separated class names for subset/")
    parser.add_argument("--rename", help="comma-separated folder names for --classes")
    args = parser.parse_args(argv)
    if args.rename and len(args.rename.split(",")) != len((args.classes or "").split(",")):
        parser.error("--rename needs one name for each of --classes")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    parsed = load_idx(args.source, FASHION_MNIST_FILES)
    arrays, names = parsed.arrays, parsed.class_names
    layouts = set(args.layouts.split(","))
    if "csv" in layouts:
        started = time.perf_counter()
        export_csv(arrays, args.output / "csv")
        print(f"csv: {args.output / 'csv'} ({time.perf_counter() - started:.1f} s)")
    if "png" in layouts:
        started = time.perf_counter()
        export_image_folders(arrays, numbered_folders(names), args.output / "png")
        print(f"png: {args.output / 'png'} ({time.perf_counter() - started:.1f} s)")
    if args.classes:
        classes = args.classes.split(",")
        folders = [folder_name(name) for name in (args.rename or args.classes).split(",")]
        # Ingestion labels folders in sorted order: write them in that order too.
        order = sorted(range(len(classes)), key=folders.__getitem__)
        chosen = subset(arrays, names, [classes[i] for i in order])
        export_image_folders(chosen, [folders[i] for i in order], args.output / "subset")
        print(f"subset: {args.output / 'subset'} ({', '.join(sorted(folders))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
