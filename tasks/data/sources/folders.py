"""The image-folder layout of Keras' `image_dataset_from_directory` and torchvision's
`ImageFolder`: `train/<class>/<image>`, and optionally `test/<class>/<image>`.

- **Classes** are the sorted folder names in `train/`. `test/` may lack a class (it then
  has no test images) but not add one. An empty class folder is a class with no images,
  which the validation stage refuses by its minimum count.
- **Images** are the files with an image suffix (`IMAGE_SUFFIXES`, any case), also in
  sub-folders of a class folder; hidden and other files are ignored. Each goes through
  `tasks.data.images.to_fashion_mnist`, the conversion prediction uses, so a 28x28 grayscale
  image comes back exactly as it is. An image that cannot be read, is truncated or is
  blank is left out and recorded as unreadable by its path relative to the data
  directory, for the validation stage to refuse and list.
- **Row order**: by file name, numbers by their value (`2.png` before `10.png`), then by
  class folder. An export that numbers its files by their position in the dataset
  (`train/Coat/012345.png`) therefore comes back in exactly its original order.
- **Without `test/`**, a seeded stratified split of `train/` makes one
  (`test_fraction`); both parts keep the original order.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.model_selection import train_test_split

from tasks.core.contracts import IMAGE_SHAPE, UnreadableFile
from tasks.core.errors import DatasetFileError
from tasks.data.images import BlankImageError, to_fashion_mnist
from tasks.data.sources.base import SPLITS, ParsedData

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
MAX_CLASSES = 256  # labels are uint8
_NUMBERS = re.compile(r"(\d+)")


def class_folders(directory: Path) -> tuple[str, ...]:
    """The class names: `train/`'s folders, sorted; `test/`'s must be among them.

    Raises:
        DatasetFileError: `train/` has no class folder or more than 256, or `test/`
            has none, or a class `train/` lacks.
    """
    train = _subfolders(directory / "train")
    if not train:
        raise DatasetFileError(
            f"{directory / 'train'}: no class folders; expected train/<class>/<image>"
        )
    if len(train) > MAX_CLASSES:
        raise DatasetFileError(
            f"{directory / 'train'}: {len(train)} class folders; at most {MAX_CLASSES}"
        )
    test = directory / "test"
    if test.is_dir() and not _subfolders(test):  # Kaggle's unlabelled test/*.png, say
        loose = sum(p.suffix.lower() in IMAGE_SUFFIXES for p in test.iterdir() if p.is_file())
        held = f" ({loose} images directly in it)" if loose else ""
        raise DatasetFileError(
            f"{test}: no class folders{held}; expected test/<class>/<image>, or no test/ "
            "to split a test set off train/"
        )
    if extra := sorted(set(_subfolders(test)) - set(train)):
        raise DatasetFileError(f"{test}: class folders not in train/: {', '.join(extra)}")
    return train


def _subfolders(directory: Path) -> tuple[str, ...]:
    if not directory.is_dir():
        return ()
    found = [p for p in directory.iterdir() if p.is_dir() and _visible(p.name)]
    return tuple(sorted(_named_in_utf8(p).name for p in found))


def _named_in_utf8(path: Path) -> Path:
    """`path`, whose name goes into the cache key, the logs and the report, all UTF-8; one
    that is not (a Latin-1 name from an old archive) is refused before any image is read."""
    try:
        str(path).encode()
    except UnicodeEncodeError:
        shown = os.fsencode(path).decode(errors="backslashreplace")
        raise DatasetFileError(f"{shown}: the name is not UTF-8; rename it") from None
    return path


def _visible(name: str) -> bool:
    return not name.startswith(".")


def image_files(directory: Path, classes: tuple[str, ...]) -> dict[str, list[tuple[str, int]]]:
    """Per split present, (path relative to `directory`, label) of each image, in row order."""
    found = {}
    for split in SPLITS:
        if not (directory / split).is_dir():
            continue
        entries = []
        for label, name in enumerate(classes):
            folder = directory / split / name
            for inner in _images_under(folder):
                entries.append((_name_order(inner), inner, name, label))
        entries.sort(key=lambda entry: entry[:3])
        found[split] = [(f"{split}/{name}/{inner}", label) for _, inner, name, label in entries]
    return found


def _images_under(folder: Path) -> list[str]:
    """Image files under `folder`, as posix paths relative to it, hidden ones left out.
    Links to folders are followed, each real folder once: a link back up (a loop) would
    repeat the images above it until the path grew too long to open."""
    found, listed = [], set()
    for root, folders, files in os.walk(folder, onerror=_unlisted, followlinks=True):
        if (real := os.path.realpath(root)) in listed:
            folders[:] = []
            continue
        listed.add(real)
        folders[:] = sorted(name for name in folders if _visible(name))  # the same link wins
        inner = Path(root).relative_to(folder).as_posix()
        prefix = "" if inner == "." else f"{inner}/"
        found += [
            prefix + _named_in_utf8(Path(root) / name).name
            for name in files
            if _visible(name) and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES
        ]
    return found


def _unlisted(error: OSError) -> None:
    """A folder that cannot be listed (no permission) would lose its images unsaid; one a
    split lacks (`test/` without a class) is no error."""
    if not isinstance(error, FileNotFoundError):
        raise DatasetFileError(f"{error.filename}: cannot be listed ({error.strerror})")


def _name_order(name: str) -> tuple[str | int, ...]:
    """Sorts numbers by value: `2.png` before `10.png`."""
    parts = _NUMBERS.split(name)  # text, number, text, ...: each place holds one type
    return tuple(int(part) if index % 2 else part for index, part in enumerate(parts))


def folders_fingerprint(directory: Path) -> str:
    """A hash of the class folders, each image's path and each image's SHA-256."""
    classes = class_folders(directory)
    digest = hashlib.sha256("\n".join(classes).encode())
    for split, files in image_files(directory, classes).items():
        digest.update(f"\0{split}\0".encode())
        for relative, _ in files:
            try:
                content = hashlib.sha256((directory / relative).read_bytes()).hexdigest()
            except OSError as error:  # reading it again will say what is wrong with it
                content = f"unreadable {error.errno}"
            digest.update(f"{relative}\0{content}\n".encode())
    return digest.hexdigest()


def load_folders(directory: Path, test_fraction: float, seed: int) -> ParsedData:
    """Every image read and converted, labelled by its class folder; a test split made
    when there is no `test/`.

    Raises:
        DatasetFileError: the folders break the layout, or `train/` is too small for a
            stratified split.
    """
    classes = class_folders(directory)
    listing = image_files(directory, classes)
    every_image, every_problem = read_images(
        [directory / relative for files in listing.values() for relative, _ in files]
    )
    arrays, origins, unreadable, start = {}, {}, [], 0
    for split, files in listing.items():
        end = start + len(files)
        images, problems = every_image[start:end], every_problem[start:end]
        start = end
        readable = [problem is None for problem in problems]
        kept = [entry for entry, ok in zip(files, readable, strict=True) if ok]
        unreadable += [
            UnreadableFile(relative, problem)
            for (relative, _), problem in zip(files, problems, strict=True)
            if problem is not None
        ]
        arrays[f"{split}_images"] = images[readable]
        arrays[f"{split}_labels"] = np.array([label for _, label in kept], dtype=np.uint8)
        origins[split] = [relative for relative, _ in kept]
    if "test" not in origins:
        arrays, origins = split_off_test(arrays, origins, test_fraction, seed, directory)
    return ParsedData(arrays, classes, origins=origins, unreadable=tuple(unreadable))


def split_off_test(
    arrays: dict[str, np.ndarray],
    origins: dict[str, list[str]],
    test_fraction: float,
    seed: int,
    directory: Path,
) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """A stratified, seeded test split of the training images, both in their order."""
    images, labels, files = arrays["train_images"], arrays["train_labels"], origins["train"]
    try:
        train, test = train_test_split(
            np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels
        )
    except ValueError as error:
        raise DatasetFileError(
            f"{directory / 'train'}: cannot split off a stratified test set of "
            f"{test_fraction:.0%} ({error}); add images, or a test/ folder"
        ) from None
    parts = {"train": np.sort(train), "test": np.sort(test)}
    return (
        {
            f"{split}_{kind}": array[rows]
            for split, rows in parts.items()
            for kind, array in (("images", images), ("labels", labels))
        },
        {split: [files[row] for row in rows] for split, rows in parts.items()},
    )


def read_images(paths: list[Path]) -> tuple[np.ndarray, list[str | None]]:
    """The images in Fashion-MNIST's form, and per image why it could not be read (None
    when it could). Read in this process: on two cores a process pool measured no faster
    for 70,000 PNGs, and would need the caller's main module to be importable."""
    images = np.zeros((len(paths), *IMAGE_SHAPE), dtype=np.uint8)
    problems: list[str | None] = []
    for row, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                images[row] = to_fashion_mnist(image)
        except Exception as error:  # a decoder's own too: Pillow's DDS plugin, NotImplementedError
            problems.append(image_problem(error))
        else:
            problems.append(None)
    return images, problems


def image_problem(error: Exception) -> str:
    """One line on why an image file could not be used."""
    if isinstance(error, BlankImageError):
        return str(error)
    if isinstance(error, Image.UnidentifiedImageError):
        return "not an image file Pillow can read"
    lines = str(error).strip().splitlines()
    return f"cannot be read: {lines[0] if lines else type(error).__name__}"
