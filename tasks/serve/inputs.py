"""What a prediction request holds: uploaded image files, or JSON instances of pixels.

Each input becomes a `RequestInput` with its features or the reason it could not be
read, so that one bad input never stops the others in the same request. Images are read
and converted exactly as `flows.predict` reads image files (`tasks.predict.inputs`), so
both give the same class and probability for the same file.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from tasks.core.contracts import IMAGE_SHAPE
from tasks.data.preprocess import scale_images
from tasks.predict.inputs import (
    PIXELS,
    UnreadableInputError,
    are_features,
    read_image,
    unexpected_error,
)

INSTANCE_SHAPES = (IMAGE_SHAPE, (PIXELS,))
REQUEST_SHAPE = (
    'expected a JSON object {"instances": [...]}, each instance 28 x 28 or 784 pixel values'
)


class RequestShapeError(ValueError):
    """A request body that is not a prediction request at all; its message says why."""


@dataclass(frozen=True)
class RequestInput:
    """One input of a request: a file name or an instance's index, and its features
    (784 float32 values in [0, 1]) or why it has none."""

    name: str
    features: np.ndarray | None = None
    error: str = ""


def read_upload(name: str, content: bytes, max_pixels: int) -> RequestInput:
    """An uploaded file's image as features, or why it cannot be classified."""
    if not content:
        return RequestInput(name, error="empty file (0 bytes)")
    try:
        pixels = read_image(io.BytesIO(content), max_pixels)
    except UnreadableInputError as exc:
        return RequestInput(name, error=str(exc))
    except Exception as exc:  # as on the command line: the request's other files still count
        return RequestInput(name, error=unexpected_error(exc))
    return RequestInput(name, scale_images(pixels[np.newaxis])[0])


def read_instances(document: Any) -> list[RequestInput]:
    """The instances of a JSON request, named by their index, as TensorFlow Serving's REST
    API names them: each 28 x 28 or 784 pixel values from 0 to 255, or features scaled to
    [0, 1] (numbers with a fraction, none above 1).

    Raises:
        RequestShapeError: when the document is not `{"instances": [...]}` with at least one.
    """
    if not isinstance(document, dict) or not isinstance(document.get("instances"), list):
        found = type(document).__name__ if not isinstance(document, dict) else "no list"
        raise RequestShapeError(f"{REQUEST_SHAPE}; found {found}")
    if not document["instances"]:
        raise RequestShapeError(f"{REQUEST_SHAPE}; found an empty list")
    return [read_instance(str(i), instance) for i, instance in enumerate(document["instances"])]


def read_instance(name: str, instance: Any) -> RequestInput:
    """One JSON instance's features, or why it is not an image's pixels."""
    try:
        pixels = np.asarray(instance)
    except ValueError:  # ragged nested lists
        return RequestInput(name, error="rows of different lengths; expected 28 x 28 or 784 values")
    if pixels.dtype.kind not in "iuf":
        return RequestInput(name, error=f"values that are not numbers ({_kind(pixels)})")
    if pixels.shape not in INSTANCE_SHAPES:
        found = f"shape {pixels.shape}" if pixels.ndim else "a single number"
        return RequestInput(name, error=f"{found}; expected 28 x 28 or 784 pixel values")
    low, high = pixels.min(), pixels.max()
    if not (np.isfinite(low) and np.isfinite(high)):
        return RequestInput(name, error="values that are not finite (NaN or infinity)")
    if low < 0 or high > 255:
        found = f"values from {low:g} to {high:g}"
        return RequestInput(name, error=f"{found}; expected pixels in 0-255")
    if are_features(pixels, high):  # as `flows.predict` reads a float .npy: not 255 times darker
        return RequestInput(name, pixels.reshape(PIXELS).astype(np.float32))
    return RequestInput(name, scale_images(pixels.reshape(1, PIXELS))[0])


def _kind(pixels: np.ndarray) -> str:
    return {"b": "true/false", "U": "text", "O": "mixed or nested values"}.get(
        pixels.dtype.kind, str(pixels.dtype)
    )
