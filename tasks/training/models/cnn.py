"""The convolutional network, in Keras: trained on shifted and mirrored images, stopped
early on validation accuracy.

TensorFlow is imported only inside the functions that fit or load a network.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from pydantic import Field, PositiveInt

from tasks.core.contracts import IMAGE_SHAPE, N_CLASSES, Cost, LearningCurve, Scaling
from tasks.training.models.base import (
    PARAMS_FILE,
    Budgeting,
    HyperParameters,
    ModelSpec,
    ProbeData,
    TrainingContext,
    VariantSpec,
)
from tasks.training.models.deadline_schedule import CosineToDeadline
from tasks.training.models.keras_prediction import predicted, predicted_over_views, view_count
from tasks.training.models.keras_resume import KeptEpochs
from tasks.training.models.keras_training import (
    PREDICT_BATCH,
    EpochProgress,
    augmented_batches,
    batch_count,
    early_stopping,
    fit_step_seconds,
    image_batches,
    one_hot,
    steady_steps,
    watched_from,
)
from tasks.training.models.tensorflow_runtime import (
    compute_dtype_policy,
    start_tensorflow,
    tensorflow_device,
)

# Three networks: a CPU's speed or a budget moves the plan one step, not widest to smallest.
# The wide one's epoch takes 139 s on an AVX2 EPYC's thread (44 s with AVX-512 BF16): there
# the narrower ones reach more in the same minutes (docs/benchmark/cnn_recipe.md). No block
# of 24 filters: on AMX oneDNN ran the middle network 4 times slower with 24 than with 16.
WIDE_BLOCKS = ((32, 32), (64, 64))
MIDDLE_BLOCKS = ((16,), (48, 48), (96,))
SMALL_BLOCKS = ((16,), (32, 32), (64,))
# Under a time budget, the most epochs a network is given: 30, and 60 for the wide one on a
# lane of its own (30 left 13 of 30 minutes unused on the AVX-512 BF16 EPYC). On a shared lane
# (one core) each model gets the same fraction of its most: 60 would halve XGBoost's rounds.
BUDGET_EPOCHS = 30
WIDE_BUDGET_EPOCHS = 60
WIDE_WARMUP = {"learning_rate": 4e-3, "warmup_epochs": 1}
PROBE_STEPS = 6  # the training steps `measure_cnn` times


class CNNParams(HyperParameters):
    epochs: PositiveInt = Field(
        18,
        description=f"Epochs. Under a time budget, the plan gives as many as fit, up to "
        f"{BUDGET_EPOCHS} ({WIDE_BUDGET_EPOCHS} for the wide network on a core of its own), "
        "unless this is set (by you or a profile): then it is the most.",
    )
    batch_size: PositiveInt = 128
    learning_rate: float = Field(2e-3, gt=0, description="Adam's, at its peak.")
    warmup_epochs: int = Field(
        0, ge=0, description="Epochs of a linear rise to the peak rate before its cosine decay; "
        "under a time budget the wide network's 1, peak 4e-3, unless either is set."
    )  # fmt: skip
    conv_blocks: tuple[tuple[PositiveInt, ...], ...] = Field(
        WIDE_BLOCKS,
        min_length=1,
        description="Filters of each block's 3x3 convolutions; each block ends in 2x2 pooling.",
    )
    dense_units: PositiveInt = 256
    # 0.2 and 1-pixel shifts beat 0.4 and 2: wide, 12 epochs, 0.9413 against 0.9377 test.
    dropout: float = Field(
        0.2, ge=0, lt=1, description="Dropout after the dense layer, half of it after the "
        "convolutions. Under a budget the middle and small networks get none unless set."
    )  # fmt: skip
    early_stopping_patience: PositiveInt = Field(
        4, description="Epochs without a better validation accuracy, in the last third of the "
        "planned ones, that end a fit; not under a time budget, whose planned epochs all fit."
    )  # fmt: skip
    # 0.1 gave 0.9381 test accuracy against 0.9391 without, in 15 epochs.
    label_smoothing: float = Field(
        0.0, ge=0, lt=1,
        description="Targets, for n classes: 1 - s + s/n for the true class, s/n for others.",
    )  # fmt: skip
    shift_pixels: int = Field(
        1, ge=0, le=6, description="Training images are shifted by up to this many pixels."
    )
    mirror: bool = Field(
        True, description="Mirror half the training images, and average each test image's "
        "prediction with its mirror image's."
    )  # fmt: skip
    # 1 against 0, the same weights: test +0.14 points over 8 networks (prediction_views.md).
    test_shift_pixels: int = Field(
        1, ge=0, le=3, description="Also average each test image's prediction with those "
        "of its copies moved this many pixels up, down, left and right (and with `mirror`, "
        "their mirror images': 10 views at 1). 0: none."
    )  # fmt: skip
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="auto: bfloat16 where the CNN trains on a CPU that computes it "
        "natively (AVX-512 BF16); float32 on a GPU."
    )  # fmt: skip


# Tuning: named after the fields above, so the best values are configuration values.
SEARCH_SPACE = {
    "learning_rate": FloatDistribution(5e-4, 5e-3, log=True),
    "dropout": FloatDistribution(0.2, 0.6),
    "dense_units": CategoricalDistribution([128, 256, 512]),
    "batch_size": CategoricalDistribution([64, 128, 256]),
    "shift_pixels": IntDistribution(0, 3),
    "label_smoothing": FloatDistribution(0.0, 0.2),
}


def to_image_tensor(features: np.ndarray) -> np.ndarray:
    """(N, 784) -> (N, 28, 28, 1), the layout a Keras CNN takes (a view, no copy)."""
    return features.reshape(len(features), *IMAGE_SHAPE, 1)


def build_cnn_network(params: CNNParams, seed: int, classes: int, policy: str = "float32"):
    """Blocks of Conv-BatchNorm-ReLU layers, each ending in max-pooling, then a
    dropout-regularised dense head with one output per class; the output layer always
    computes in float32."""
    import keras
    from keras import layers

    from tasks.training.models.keras_layers import FusedBatchNormalization

    # Momentum 0.9 (Keras: 0.99) lets BatchNorm's moving statistics settle within the
    # few hundred steps of a short run; with 0.99 a two-epoch model predicts near chance.
    def normalise(x):
        return FusedBatchNormalization(momentum=0.9, dtype=policy)(x)

    inputs = keras.Input(shape=(*IMAGE_SHAPE, 1))
    x = inputs
    for block in params.conv_blocks:
        for filters in block:
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, dtype=policy)(x)
            x = layers.ReLU(dtype=policy)(normalise(x))
        x = layers.MaxPooling2D(dtype=policy)(x)
    x = layers.Dropout(params.dropout / 2, seed=seed)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(params.dense_units, use_bias=False, dtype=policy)(x)
    x = layers.ReLU(dtype=policy)(normalise(x))
    x = layers.Dropout(params.dropout, seed=seed)(x)
    outputs = layers.Dense(classes, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="fashion_cnn")


def compiled_network(params: CNNParams, seed: int, classes: int):
    """The network, compiled with Adam; `CosineToDeadline` sets its learning rate."""
    import keras

    # Keras draws weight initialisations and dropout masks from its global seed.
    keras.utils.set_random_seed(seed)
    network = build_cnn_network(params, seed, classes, compute_dtype_policy(params.precision))
    # No jit_compile: XLA made an epoch 4x slower on a 2-core CPU.
    network.compile(
        optimizer=keras.optimizers.Adam(params.learning_rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=params.label_smoothing),
        metrics=["accuracy"],
    )
    return network


@dataclass
class KerasCNN:
    params: CNNParams
    context: TrainingContext
    model: object = None
    model_file: ClassVar[str] = "model.keras"

    def fit(self, x_train, y_train, x_val, y_val) -> LearningCurve:
        start_tensorflow(self.context.threads)
        import keras

        self.context.check_stop()  # importing TensorFlow took seconds
        p, logger = self.params, self.context.logger
        logger.info(
            "cnn computes on %s with the %s dtype policy, blocks %s", tensorflow_device(),
            compute_dtype_policy(p.precision), p.conv_blocks,
        )  # fmt: skip
        classes, seed, deadline = self.context.classes, self.context.seed, self.context.deadline
        steps_per_epoch = batch_count(len(y_train), p.batch_size)

        def fresh() -> tuple[Any, CosineToDeadline]:
            network = compiled_network(p, seed, classes)
            return network, CosineToDeadline(
                network, p.learning_rate, steps_per_epoch, p.epochs, self.context, p.warmup_epochs
            )

        # Under a deadline every epoch is kept; without, those before early stopping watches.
        kept = KeptEpochs(self.context.resume_dir, logger, None if deadline else watched_from(p))
        self.model, schedule = kept.take_up(fresh)
        x_train, done = to_image_tensor(x_train), kept.epochs_done
        self.model.fit(
            augmented_batches(x_train, y_train, p, seed, classes, first_epoch=done),
            initial_epoch=done,
            # Under a deadline the schedule ends it: earlier or, up to the most, later than planned.
            epochs=max(p.epochs, self.context.most_steps or 0) if deadline else p.epochs,
            validation_data=image_batches(to_image_tensor(x_val), one_hot(y_val, classes)),
            callbacks=[
                # Under a deadline the last epoch's weights are kept (`early_stopping`).
                *([] if deadline else [early_stopping(p)]),
                keras.callbacks.LambdaCallback(**schedule.hooks()),
                keras.callbacks.LambdaCallback(
                    on_epoch_end=EpochProgress(lambda: schedule.last_epoch, self.context),
                    # A run told to stop stops within a batch, validation included.
                    on_train_batch_end=lambda batch, logs: self._after_batch(),
                    on_test_batch_end=lambda batch, logs: self.context.check_stop(),
                ),
                keras.callbacks.LambdaCallback(on_epoch_end=kept.on_epoch_end),
            ],
            verbose=0,
        )
        curves = (kept.history[key] for key in ("accuracy", "val_accuracy"))
        return LearningCurve("epoch", *([1 - float(a) for a in curve] for curve in curves))

    def _after_batch(self) -> None:
        self.context.check_stop()
        if self.context.past_deadline() and not self.model.stop_training:
            self.context.logger.info("cnn: stopped at the time budget's deadline")
            self.model.stop_training = True

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        p = self.params
        return predicted_over_views(self.model, to_image_tensor(x), p.test_shift_pixels, p.mirror)

    def save(self, directory: Path) -> None:
        self.model.save(directory / self.model_file)

    @classmethod
    def load(cls, directory: Path, threads: int) -> KerasCNN:
        start_tensorflow(threads)
        import keras

        import tasks.training.models.keras_layers  # noqa: F401  (registers the CNN's layers for loading)

        saved = json.loads((directory / PARAMS_FILE).read_text())["params"]
        # A network saved before test views were shifted predicts as it was evaluated.
        params = CNNParams(**{"test_shift_pixels": 0} | saved)
        loaded = cls(params, TrainingContext(seed=0, threads=threads))
        loaded.model = keras.models.load_model(directory / cls.model_file)
        return loaded


def measure_cnn(p: CNNParams, probe: ProbeData, context: TrainingContext) -> Cost:
    """A short fit on real, augmented batches and a prediction, timed here as the model trains
    (Keras' fit loop costs as much again as the bare steps on 2 cores): an epoch is the steps of
    all the training images and a pass over the validation images; the rest is TensorFlow's
    start, the first step's tracing, and predicting each view of the held-out and test images,
    after the last epoch (`Cost.closing`). With `handover`, the speed-up on every core is the
    fastest step there over the fastest on the lane's, timed once the others are measured: a
    busy moment stalls all of a step's threads (one run timed the wide network 83 s an epoch,
    others 48 to 56). The lane's steps timed then count where faster than beside the others'
    measuring: in threads of one process, the steps wait for the GIL there, as beside their fits
    they do not (on an AMX Xeon the small network measured 38 s an epoch there, and trained 9 to
    11). With the others idle then, that is a best case: the re-planning corrects the epochs by
    their own times, though not the network chosen."""
    started = time.perf_counter()
    start_tensorflow(context.threads)
    import keras

    imported = time.perf_counter() - started
    images = min(len(probe.y_train), (PROBE_STEPS + 2) * p.batch_size)
    x, y = to_image_tensor(probe.x_train[:images]), probe.y_train[:images]
    batches = augmented_batches(x, y, p, context.seed, context.classes)
    network = compiled_network(p, context.seed, context.classes)
    first_fit = fit_step_seconds(network, batches, context.check_stop)
    first, step = first_fit[0], float(np.median(steady_steps(first_fit)))
    step_alone = None
    if timed := context.handover.on_lane_then_every_core(
        lambda: steady_steps(fit_step_seconds(network, batches, context.check_stop)),
        context.check_stop,
    ):
        on_lane, every_core = timed
        step = min(step, float(np.median(on_lane)))
        step_alone = step * float(np.min(every_core) / np.min(on_lane))
    shown = to_image_tensor(probe.x_val[:PREDICT_BATCH])
    predicted(network, shown)  # traced once
    started = time.perf_counter()
    predicted(network, shown)
    per_image = (time.perf_counter() - started) / len(shown)
    keras.backend.clear_session()
    views = view_count(p.test_shift_pixels, p.mirror)
    validation = len(probe.y_val)
    batches_per_epoch = batch_count(len(probe.y_train), p.batch_size)
    epoch = batches_per_epoch * step + validation * per_image
    epoch_alone = step_alone and batches_per_epoch * step_alone + validation * per_image
    predictions = views * (validation + probe.scored_images) * per_image
    return Cost(imported + first + predictions, epoch, epoch_alone, closing=predictions)


def cnn_variants(p: CNNParams, pinned: frozenset[str]) -> list[VariantSpec]:
    """The wide network where it gets 10 epochs, else the middle one (15), else the small one,
    these two without dropout unless set (+0.1 to 0.6 test points in 9 to 24 epochs): on AVX2
    CPUs a narrower network reaches more in the same minutes (cnn_recipe.md). The wide one
    warms up for an epoch to twice the rate (26 epochs, AVX2 EPYC: test 0.9516 for 0.9501)."""
    if "conv_blocks" in pinned or p.conv_blocks != WIDE_BLOCKS:
        return [VariantSpec(f"blocks {p.conv_blocks}", min_steps=3, most_steps=BUDGET_EPOCHS)]
    lighter = {} if "dropout" in pinned else {"dropout": 0.0}
    middle, small = ({"conv_blocks": blocks} | lighter for blocks in (MIDDLE_BLOCKS, SMALL_BLOCKS))
    warmed = {} if pinned & {"learning_rate", "warmup_epochs"} else dict(WIDE_WARMUP)
    return [
        VariantSpec("wide network (32,32),(64,64)", warmed, 10, WIDE_BUDGET_EPOCHS, BUDGET_EPOCHS),
        VariantSpec("middle network (16),(48,48),(96)", middle, 15, BUDGET_EPOCHS),
        VariantSpec("small network (16),(32,32),(64)", small, 3, BUDGET_EPOCHS),
    ]


def saved_mb(p: CNNParams, train_images: int, classes: int = N_CLASSES) -> float:
    """Every weight in float32, three times over with Adam's two moments (measured: 10.3 MB
    for the default network on ten classes)."""
    weights, channels, side = 0, 1, IMAGE_SHAPE[0]
    for block in p.conv_blocks:
        for filters in block:
            weights += 9 * channels * filters + 4 * filters
            channels = filters
        side //= 2
    weights += side * side * channels * p.dense_units + (4 + classes) * p.dense_units + classes
    return 3 * 4 * weights / 1e6


CNN = ModelSpec(
    name="cnn", params=CNNParams, build=KerasCNN, adapter=KerasCNN,
    # Pruning waits 2 epochs: the first ones say too little.
    search_space=SEARCH_SPACE, pruning_warmup_steps=2,
    quick={"epochs": 2, "early_stopping_patience": 1}, saved_mb=saved_mb, keeps_epochs=True,
    budgeting=Budgeting(measure_cnn, step_field="epochs", variants=cnn_variants),
    # Kept the longest, on a lane of its own: it gains the most from every minute.
    keep_priority=50, step_name="epochs", own_lane=True, packages=("tensorflow", "keras"),
    # Measured 1.78 times as fast on two threads as on one (docs/benchmark/thread_scaling.md).
    scaling=Scaling(parallel=0.88),
    validation_use="early stopping: the epoch whose weights are kept",
    budgeted_validation_use="",  # the last epoch's weights are kept
)  # fmt: skip
