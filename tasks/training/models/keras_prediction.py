"""The CNN's predictions: each image's class probabilities averaged over its views (the
image, its copies moved a few pixels each way, and their mirror images), a step per
PREDICT_BATCH images."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from tasks.training.models.keras_training import PREDICT_BATCH


def moved(images: np.ndarray, axis: int, pixels: int) -> np.ndarray:
    """`images` (n, 28, 28, 1) moved `pixels` along `axis` (1: down, 2: right; negative: up,
    left), the space they leave filled with background."""
    out = np.zeros_like(images)
    source, target = [slice(None)] * images.ndim, [slice(None)] * images.ndim
    source[axis] = slice(0, -pixels) if pixels > 0 else slice(-pixels, None)
    target[axis] = slice(pixels, None) if pixels > 0 else slice(0, pixels)
    out[tuple(target)] = images[tuple(source)]
    return out


def prediction_views(images: np.ndarray, shift_pixels: int, mirror: bool) -> Iterator[np.ndarray]:
    """The views of `images` a prediction averages: each image, its copies moved
    `shift_pixels` up, down, left and right, and with `mirror` the mirror images of all
    these; one at a time, so that the views of a test set are never in memory together."""
    moves = [(axis, sign * shift_pixels) for axis in (1, 2) for sign in (1, -1)]
    for view in (images, images[:, :, ::-1]) if mirror else (images,):
        yield view
        yield from (moved(view, axis, pixels) for axis, pixels in moves if pixels)


def view_count(shift_pixels: int, mirror: bool) -> int:
    return (1 + 4 * (shift_pixels > 0)) * (1 + mirror)


def predicted_over_views(network, images: np.ndarray, shift_pixels: int, mirror: bool):
    """The network's class probabilities for `images`, averaged over `prediction_views`.
    The views of a few images (a server's request) go in one step: a step for each view
    took 30 ms for one image's 10, against 2 ms (small network, AVX2 kernels, AMX Xeon)."""
    views = prediction_views(images, shift_pixels, mirror)
    count = view_count(shift_pixels, mirror)
    if len(images) * count <= PREDICT_BATCH:
        stacked = predicted(network, np.concatenate(list(views)))
        return stacked.reshape(count, len(images), -1).mean(axis=0)
    return np.mean([predicted(network, view) for view in views], axis=0)


def predicted(network, images: np.ndarray) -> np.ndarray:
    """The network's class probabilities for `images`, a step per PREDICT_BATCH of them.
    Not Keras' `predict`: besides its set-up on every call (about 50 ms, which a server
    classifying a few images at a time would pay on every request), its tf.data generator
    kept each array it was given alive, 30 MB more for each call on 10,000 test images (the
    10 views of the held-out and test images: 441 MB against 118 MB here, wide network,
    AVX2 kernels, AMX Xeon)."""
    chunks = [
        images[start : start + PREDICT_BATCH] for start in range(0, len(images), PREDICT_BATCH)
    ]
    steps = [network.predict_on_batch(np.ascontiguousarray(chunk)) for chunk in chunks or [images]]
    return np.concatenate(steps)
