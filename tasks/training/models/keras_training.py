"""The CNN's training loop, apart from the network: batches shuffled, shifted and mirrored
in numpy each epoch, fed through tf.data; the learning rate's cosine decay to the
deadline; and progress reports. Predicting is `keras_prediction`'s.

TensorFlow is imported when a dataset is made, by the CNN's fit; the hooks here are plain
callables.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from tasks.core.contracts import IMAGE_SHAPE
from tasks.training.models.base import TrainingContext

# Images per batch when validating and predicting. Against 1024, 256 predicted as fast and
# lowered the process's peak by 186 MiB with the wide network in float32 (AVX2 kernels) and
# by 101 MiB in bfloat16 (AMD EPYC, AVX-512 BF16): 1024 had put a default --avx2 run at 2.09 GB.
PREDICT_BATCH = 256
# How many of the latest epochs the deadline's re-planning takes an epoch's time from.
RECENT = 3
# How much slower than the slowest of the latest epochs the next ones must still fit at for
# the plan to add epochs. Epochs waver by 2 to 3 % (a 30-minute --avx2 run's on the AVX-512
# BF16 EPYC); at the slowest alone, the plan went 28, 31, 32, 31, 32 there.
RAISE_MARGIN = 0.05


class BatchRecipe(Protocol):
    """What the training batches take from the CNN's parameters (`CNNParams` has them)."""

    batch_size: int
    shift_pixels: int
    mirror: bool


class StoppingRecipe(Protocol):
    """What early stopping takes from the CNN's parameters (`CNNParams` has them)."""

    epochs: int
    early_stopping_patience: int


def early_stopping(params: StoppingRecipe, stop_on_plateau: bool = True):
    """Keras' early stopping on validation accuracy, keeping the best epoch's weights, over
    the last third of the planned epochs only: before, the cosine decay's learning rate is
    still high and validation accuracy plateaus for epochs on end (on the AVX2 EPYC a
    middle network planned for 30 epochs stopped at 18 with 0.929, where 18 planned ones
    reached 0.936).

    Without `stop_on_plateau` (under a time budget) it only keeps the best epoch's weights:
    the planned epochs are the ones that fit and the learning rate decays to zero over
    them, so a plateau is no reason to leave minutes unused (on the AVX-512 BF16 EPYC a
    patience of 4 ended a 30-minute run's wide network at 47 of 59 planned epochs)."""
    import keras

    return keras.callbacks.EarlyStopping(
        monitor="val_accuracy",
        mode="max",
        patience=params.early_stopping_patience if stop_on_plateau else math.inf,
        restore_best_weights=True,
        start_from_epoch=2 * params.epochs // 3,
    )


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


def augmented_batches(x: np.ndarray, y: np.ndarray, params: BatchRecipe, seed: int, classes: int):
    """Shuffled training batches, freshly shifted and mirrored each epoch in numpy (a few
    milliseconds per batch, against seconds for Keras' random-transform layers).

    Each pass over the dataset is the next epoch, whose order and transforms depend only
    on the seed and the epoch number.
    """
    import tensorflow as tf

    epochs = itertools.count()

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


@dataclass
class CosineToDeadline:
    """The learning rate, set before each batch: a cosine decay to zero over the planned epochs,
    as Keras' CosineDecay. With a deadline, the epochs are re-planned after each one from the
    typical epoch's time (the median of the latest): fewer as soon as they would run past the
    deadline, more (up to `context.most_steps`) only as many as fit at `raise_margin` over the
    slowest of the latest epochs, with every core once the others are done and an epoch with
    them is timed, not when expected. Epoch times that waver, others done late or a speed-up
    smaller than measured then move the plan once, not back and forth: to add an epoch even
    slower ones must fit, to drop one the typical must not. The rest of the decay is stretched
    or compressed to end with the new last epoch, where training stops, fully decayed, rather
    than cut off at the deadline. `clock` gives the time, as `time.time()` (the deadline's)."""

    network: Any
    learning_rate: float
    steps_per_epoch: int
    epochs: int
    context: TrainingContext
    clock: Callable[[], float] = time.time
    raise_margin: float = RAISE_MARGIN
    step: int = 0
    # The decay runs from `progress_from` at `step_from` to 1 at `end_step`.
    progress_from: float = 0.0
    step_from: int = 0
    end_step: int = 0
    epoch_started: float = 0.0
    began_alone: bool = False
    # Each epoch's seconds after the first (which also traced the graph), by whether it
    # shared the cores with other models or had them all from its start.
    shared_seconds: list[float] = field(default_factory=list)
    alone_seconds: list[float] = field(default_factory=list)
    first_epoch_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.end_step = self.epochs * self.steps_per_epoch

    @property
    def last_epoch(self) -> int:
        return -(-self.end_step // self.steps_per_epoch)

    def progress(self) -> float:
        span = max(1, self.end_step - self.step_from)
        done = (self.step - self.step_from) / span
        return min(1.0, self.progress_from + (1 - self.progress_from) * done)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch_started = self.clock()
        self.began_alone = self.context.handover.released

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        rate = 0.5 * self.learning_rate * (1 + math.cos(math.pi * self.progress()))
        self.network.optimizer.learning_rate = rate
        self.step += 1

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.context.deadline is None:
            return
        done, now = epoch + 1, self.clock()
        seconds = now - self.epoch_started
        if epoch == 0:
            self.first_epoch_seconds = seconds
        else:
            (self.alone_seconds if self.began_alone else self.shared_seconds).append(seconds)
        most = max(0, max(self.context.most_steps or self.epochs, self.epochs) - done)
        typical, fitting = self.epochs_left(now, most)
        if fitting > self.last_epoch - done:  # more: as many as fit at the margin over the slowest
            fitting = max(self.last_epoch - done, self.epochs_left(now, most, raising=True)[1])
        last = done + fitting
        if last != self.last_epoch:
            self.context.logger.info(
                "cnn: an epoch takes %.0f s here: training %d epochs instead of %d, the "
                "learning rate's decay %s to end with the last", typical, last,
                self.last_epoch, "stretched" if last > self.last_epoch else "compressed",
            )  # fmt: skip
            self.progress_from, self.step_from = self.progress(), self.step
            self.end_step = last * self.steps_per_epoch
        if done >= self.last_epoch:
            self.network.stop_training = True

    def epochs_left(self, now: float, most: int, raising: bool = False) -> tuple[float, int]:
        """An epoch's seconds, the median of the latest epochs' or, `raising` the plan,
        `raise_margin` over the slowest of them (the first, which also traced the graph,
        included), and how many more epochs, at most `most`, fit before the deadline at
        that speed: beside the other models until the plan expects them done (`raising`:
        all along until they are), then with every core as timed or, until one such epoch
        is (`raising`: at the speed beside them), as the plan's speed-up counts on."""
        handover = self.context.handover
        timed = [self.first_epoch_seconds, *self.shared_seconds] if raising else self.shared_seconds

        def pick(seconds: list[float]) -> float:
            return max(seconds) * (1 + self.raise_margin) if raising else statistics.median(seconds)

        shared = pick(timed[-RECENT:] or [self.first_epoch_seconds])
        untimed = shared if raising else None  # none timed with every core: raise as beside them
        alone = pick(self.alone_seconds[-RECENT:]) if self.alone_seconds else untimed
        epoch = handover.step_cost(shared, alone)
        seconds = self.context.deadline - now
        fitting = handover.steps_left(epoch, seconds, now, most, expecting=not raising)
        return (epoch.per_step_alone if handover.released else shared), fitting
