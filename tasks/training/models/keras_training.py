"""The CNN's training loop, apart from the network: batches shuffled, shifted and mirrored
in numpy each epoch, fed through tf.data; early stopping; and progress reports. The
learning rate's decay to the deadline is `deadline_schedule`'s, predicting
`keras_prediction`'s.

TensorFlow is imported when a dataset is made, by the CNN's fit; the hooks here are plain
callables.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from tasks.core.contracts import IMAGE_SHAPE
from tasks.training.models.base import TrainingContext

# Images per batch when validating and predicting. Against 1024, 256 predicted as fast and
# lowered the process's peak by 186 MiB with the wide network in float32 (AVX2 kernels) and
# by 101 MiB in bfloat16 (AMD EPYC, AVX-512 BF16): 1024 had put a default --avx2 run at 2.09 GB.
PREDICT_BATCH = 256


class BatchRecipe(Protocol):
    """What the training batches take from the CNN's parameters (`CNNParams` has them)."""

    batch_size: int
    shift_pixels: int
    mirror: bool


class StoppingRecipe(Protocol):
    """What early stopping takes from the CNN's parameters (`CNNParams` has them)."""

    epochs: int
    early_stopping_patience: int


def early_stopping(params: StoppingRecipe):
    """Keras' early stopping on validation accuracy, keeping the best epoch's weights, over
    the last third of the planned epochs only: before, the cosine decay's learning rate is
    still high and validation accuracy plateaus for epochs on end (on the AVX2 EPYC a
    middle network planned for 30 epochs stopped at 18 with 0.929, where 18 planned ones
    reached 0.936).

    Not under a time budget: there the planned epochs are the ones that fit and the learning
    rate decays to zero over them, so a plateau is no reason to leave minutes unused (on the
    AVX-512 BF16 EPYC a patience of 4 ended a 30-minute run's wide network at 47 of 59
    planned epochs), and the last epoch's weights are kept. Restoring the best on validation
    did as well on average (`docs/benchmark/kept_epoch.md`: 0.01 points better over 9 runs
    on the AVX2 EPYC, the last never more than 0.12 worse), but the best of 3,000 validation
    images may be an early epoch: in 15- and 30-minute runs it kept the 18th of 26 and the
    21st of 28 (e90a75b), and the middle network's first epochs of the last third scored up
    to 0.48 points below its last on the test images."""
    import keras

    return keras.callbacks.EarlyStopping(
        monitor="val_accuracy",
        mode="max",
        patience=params.early_stopping_patience,
        restore_best_weights=True,
        start_from_epoch=watched_from(params),
    )


def watched_from(params: StoppingRecipe) -> int:
    """The epoch (counted from 0) from which early stopping watches validation accuracy:
    the first of the last third of the planned epochs."""
    return 2 * params.epochs // 3


def shift_and_mirror(
    images: np.ndarray, shift_pixels: int, mirror: bool, rng: np.random.Generator
) -> np.ndarray:
    """Each image (n, 28, 28, 1) moved by up to `shift_pixels` in each direction, the
    space it leaves filled with background, and, with `mirror`, half of them mirrored."""
    images = images.copy()
    count = len(images)
    if mirror:
        flipped = rng.random(count) < 0.5
        images[flipped] = images[flipped, :, ::-1]
    if shift_pixels:
        padded = np.pad(images, ((0, 0), (shift_pixels,) * 2, (shift_pixels,) * 2, (0, 0)))
        top, left = rng.integers(0, 2 * shift_pixels + 1, size=(2, count))
        rows = top[:, None, None] + np.arange(IMAGE_SHAPE[0])[None, :, None]
        columns = left[:, None, None] + np.arange(IMAGE_SHAPE[1])[None, None, :]
        images = padded[np.arange(count)[:, None, None], rows, columns]
    return images


def one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    """Class indices as one-hot rows of `classes` columns: the targets label smoothing
    works on."""
    return np.eye(classes, dtype=np.float32)[labels]


def batch_count(images: int, batch_size: int) -> int:
    return -(-images // batch_size)


def steady_dataset(batches: Callable[[], Iterator[Any]], signature: Any, count: int):
    """The `count` batches `batches()` yields, as a tf.data dataset that makes the next one
    while a step runs, with tf.data's autotuning off.

    Autotuning's model thread holds up the end of each pass over a dataset, so each epoch
    and each prediction, until its wait times out: on an AVX2 EPYC (2 cores) it made small
    network epochs of 16 s take 22 to 37 s, with both cores mostly idle meanwhile.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    dataset = tf.data.Dataset.from_generator(batches, output_signature=signature)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(count))
    return dataset.prefetch(2).with_options(options)


def augmented_batches(
    x: np.ndarray, y: np.ndarray, params: BatchRecipe, seed: int, classes: int, first_epoch: int = 0
):
    """Shuffled training batches, freshly shifted and mirrored each epoch in numpy (a few
    milliseconds per batch, against seconds for Keras' random-transform layers).

    Each pass over the dataset is the next epoch, from `first_epoch` (a resumed fit's), whose
    order and transforms depend only on the seed and the epoch number.
    """
    import tensorflow as tf

    epochs = itertools.count(first_epoch)

    def one_epoch() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        epoch = next(epochs)
        order = np.random.default_rng([seed, epoch]).permutation(len(x))
        for index, start in enumerate(range(0, len(x), params.batch_size)):
            rows = order[start : start + params.batch_size]
            rng = np.random.default_rng([seed, epoch, index])
            images = shift_and_mirror(x[rows], params.shift_pixels, params.mirror, rng)
            yield images, one_hot(y[rows], classes)

    signature = (
        tf.TensorSpec((None, *x.shape[1:]), tf.float32),
        tf.TensorSpec((None, classes), tf.float32),
    )
    return steady_dataset(one_epoch, signature, batch_count(len(x), params.batch_size))


def fit_step_seconds(network: Any, batches: Any, check_stop: Callable[[], None]) -> np.ndarray:
    """One epoch's fit of `network` over `batches`: each step's seconds, the first with the
    fit's set-up (in a new network, the tracing of its graph too)."""
    import keras

    ends = [time.perf_counter()]
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: (ends.append(time.perf_counter()), check_stop())
    )
    network.fit(batches, epochs=1, callbacks=[record], verbose=0)
    return np.diff(ends)


def steady_steps(seconds: np.ndarray) -> np.ndarray:
    """A fit's steps after its first two (set-up and warm-up), or its last where it had no
    more (a training split of two batches or fewer)."""
    return seconds[2:] if len(seconds) > 2 else seconds[-1:]


def image_batches(images: np.ndarray, labels: np.ndarray | None = None):
    """`images` (with their one-hot `labels`) in order, in batches of PREDICT_BATCH, for
    validation."""
    import tensorflow as tf

    def batches() -> Iterator[Any]:
        for start in range(0, len(images), PREDICT_BATCH):
            chunk = np.ascontiguousarray(images[start : start + PREDICT_BATCH])
            yield chunk if labels is None else (chunk, labels[start : start + PREDICT_BATCH])

    signature = tf.TensorSpec((None, *images.shape[1:]), tf.float32)
    if labels is not None:
        signature = (signature, tf.TensorSpec((None, labels.shape[1]), tf.float32))
    return steady_dataset(batches, signature, batch_count(len(images), PREDICT_BATCH))


@dataclass(frozen=True)
class EpochProgress:
    """Keras' end-of-epoch hook (through a LambdaCallback, so this module needs no Keras
    to import): log the epoch's scores, report progress and validation accuracy.

    Progress counts against the last epoch planned now (`CosineToDeadline.last_epoch`,
    re-planned under a deadline before this hook runs), so it never passes 100 %."""

    last_epoch: Callable[[], int]
    context: TrainingContext

    def __call__(self, epoch: int, logs: dict) -> None:
        self.context.report_progress(min(1.0, (epoch + 1) / self.last_epoch()))
        self.context.logger.info(
            "cnn epoch %d: loss %.4f, accuracy %.4f, validation accuracy %.4f",
            epoch + 1, logs["loss"], logs["accuracy"], logs["val_accuracy"],
        )  # fmt: skip
        self.context.report_validation(epoch + 1, logs["val_accuracy"])
