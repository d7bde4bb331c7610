"""The images to classify: image files, folders of them, IDX images files and .npy arrays.

Each input file becomes an `InputImages` block holding its images, or the reason it could
not be read, so that one bad file never stops the others. A file is recognised by its
first bytes, not its name: gzip (an IDX file, compressed), an IDX header, a NumPy header,
or else whatever Pillow can open. Folders are searched recursively for files whose name
says image or array; files named on the command line are always tried.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from tasks.core.contracts import IMAGE_SHAPE
from tasks.core.errors import DatasetFileError, PredictionInputError
from tasks.data.images import to_fashion_mnist
from tasks.data.preprocess import scale_images
from tasks.data.sources.idx import IMAGES_MAGIC, read_idx

GZIP_MAGIC = b"\x1f\x8b"
IDX_UNSIGNED_BYTES = b"\x00\x00\x08"  # the first three bytes of an IDX file of uint8
NPY_MAGIC = b"\x93NUMPY"
ARRAY_SUFFIXES = (".npy", ".gz", ".idx", ".idx3", "-ubyte")
PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]


class UnreadableInputError(ValueError):
    """An input file that holds no image this pipeline can read; its message says why."""


@dataclass(frozen=True)
class InputImages:
    """The images one input file holds, or why it could not be read.

    Attributes:
        path: the file, as named on the command line or found in a folder named there.
        pixels: (n, 28, 28) or (n, 784) uint8 pixels, or (n, 784) float32 features already
            scaled to [0, 1] (a .npy of the pipeline's features); possibly memory-mapped.
        indexed: rows are named `path[i]` (an array file) rather than `path` (one image).
        error: why nothing could be read; empty when `pixels` is set.
    """

    path: str
    pixels: np.ndarray | None = None
    indexed: bool = False
    error: str = ""

    def __len__(self) -> int:
        return 0 if self.pixels is None else len(self.pixels)

    def row_name(self, row: int) -> str:
        return f"{self.path}[{row}]" if self.indexed else self.path

    def features(self, start: int, stop: int) -> np.ndarray:
        """Rows `start:stop` as the models' features: flat float32 in [0, 1]."""
        rows = np.asarray(self.pixels[start:stop])
        if rows.dtype == np.uint8:
            return scale_images(rows)
        return rows.reshape(len(rows), PIXELS).astype(np.float32)


@functools.cache
def image_suffixes() -> frozenset[str]:
    """The file name endings of every format Pillow can open."""
    Image.init()  # Pillow registers its plugins' extensions on first use
    return frozenset(s for s, kind in Image.registered_extensions().items() if kind in Image.OPEN)


def is_input_name(name: str) -> bool:
    """Whether a file found in a folder is named like an image or an array file."""
    lower = name.lower()
    return Path(lower).suffix in image_suffixes() or lower.endswith(ARRAY_SUFFIXES)


def find_inputs(paths: Sequence[Path]) -> tuple[list[Path], int]:
    """The files to read, in the order given (folders searched recursively, in name order),
    and how many files the folders hold that are not named like images or arrays.

    Raises:
        PredictionInputError: a path that does not exist, or no file to read at all.
    """
    if missing := [str(path) for path in paths if not path.exists()]:
        raise PredictionInputError(f"{', '.join(missing)}: no such file or directory")
    files, skipped = [], 0
    for path in paths:
        if not path.is_dir():
            files.append(path)
            continue
        for folder, subfolders, names in os.walk(path):
            subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
            for name in sorted(names):
                if is_input_name(name) and not name.startswith("."):
                    files.append(Path(folder) / name)
                else:
                    skipped += 1
    if not files:
        given = ", ".join(map(str, paths)) or "no path"
        raise PredictionInputError(f"no inputs: {given} holds no image or array files")
    return files, skipped


def read_input(path: Path) -> InputImages:
    """The images in one file, or the reason it holds none this pipeline can read."""
    name = str(path)
    try:
        with open(path, "rb") as stream:
            head = stream.read(len(NPY_MAGIC))
        if not head:
            raise UnreadableInputError("empty file (0 bytes)")
        if head.startswith((GZIP_MAGIC, IDX_UNSIGNED_BYTES)):
            return InputImages(name, read_idx_images(path, head.startswith(GZIP_MAGIC)), True)
        if head.startswith(NPY_MAGIC):
            return InputImages(name, read_npy_images(path), True)
        return InputImages(name, read_image(path)[np.newaxis])
    except (UnreadableInputError, OSError) as exc:
        return InputImages(name, error=str(exc).removeprefix(f"{path}: "))
    except Exception as exc:  # a decoder failing its own way on a malformed file: its row says so
        return InputImages(name, error=unexpected_error(exc))


def unexpected_error(exc: Exception) -> str:
    """Why an input failed where no check expected it to (Pillow's DDS plugin raises
    NotImplementedError on pixel formats it does not know): the others are still classified."""
    kind = type(exc)
    module = "" if kind.__module__ == "builtins" else f"{kind.__module__}."
    return f"unreadable ({module}{kind.__qualname__}: {exc})"


def read_image(source: Path | BinaryIO, max_pixels: int | None = None) -> np.ndarray:
    """One image, a file or an uploaded stream, in Fashion-MNIST's form
    (`tasks.data.images.to_fashion_mnist`).

    Args:
        max_pixels: a larger image is refused from its header, before it is decoded (a
            decompression bomb: a small PNG can declare gigabytes of pixels); None:
            Pillow's own limit (`Image.MAX_IMAGE_PIXELS`, about 179 million at twice it).
    """
    try:
        with Image.open(source) as image:
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise UnreadableInputError(
                    f"image of {width:,} x {height:,} pixels is over the limit of "
                    f"{max_pixels:,} pixels; refused before decoding it"
                )
            image.load()
            return to_fashion_mnist(image)
    except Image.UnidentifiedImageError:
        raise UnreadableInputError(
            "not an image: Pillow recognises no image format in it"
        ) from None
    except Image.DecompressionBombError as exc:
        raise UnreadableInputError(f"too large, refused before decoding it: {exc}") from None
    except (OSError, SyntaxError, EOFError) as exc:
        raise UnreadableInputError(f"unreadable image (truncated or corrupt): {exc}") from None
    except ValueError as exc:  # tasks.data.images.BlankImageError among them
        raise UnreadableInputError(str(exc)) from None


def read_idx_images(path: Path, compressed: bool) -> np.ndarray:
    """The images of an IDX images file, gzip-compressed or not, checked as ingestion does."""
    try:
        images = read_idx(path, IMAGES_MAGIC, compressed).array
    except DatasetFileError as exc:
        raise UnreadableInputError(str(exc)) from None
    if images.shape[1:] != IMAGE_SHAPE:
        found = " x ".join(map(str, images.shape[1:]))
        raise UnreadableInputError(f"IDX images of {found} pixels; expected 28 x 28")
    return _some_images(images)


def read_npy_images(path: Path) -> np.ndarray:
    """A .npy array of shape (n, 28, 28) or (n, 784): pixels 0-255 or features in [0, 1]."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise UnreadableInputError(f"unreadable .npy file: {exc}") from None
    if array.shape[1:] not in (IMAGE_SHAPE, (PIXELS,)):
        raise UnreadableInputError(
            f"array of shape {array.shape}; expected (n, 28, 28) or (n, {PIXELS})"
        )
    if array.dtype.kind not in "uif":
        raise UnreadableInputError(f"array of {array.dtype}; expected integer pixels or floats")
    array = _some_images(array)
    low, high = np.min(array), np.max(array)
    if not (np.isfinite(low) and np.isfinite(high)):
        raise UnreadableInputError("array holds values that are not finite (NaN or infinity)")
    if low < 0 or high > 255:
        raise UnreadableInputError(f"values from {low} to {high}; expected pixels in 0-255")
    if are_features(array, high):
        return array
    if array.dtype.kind == "f":
        return np.asarray(array, dtype=np.float32).reshape(len(array), PIXELS) / np.float32(255)
    return array.astype(np.uint8, copy=False)


def are_features(values: np.ndarray, high: float) -> bool:
    """Floats none above 1 (`high`, their largest): the pipeline's own features, already
    scaled to [0, 1], not pixels (0-255) to scale; for a .npy file and a served JSON
    instance alike."""
    return values.dtype.kind == "f" and high <= 1


def _some_images(array: np.ndarray) -> np.ndarray:
    if not len(array):
        raise UnreadableInputError("holds no images (0 rows)")
    return array
