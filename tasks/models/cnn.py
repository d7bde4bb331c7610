"""The convolutional network, in Keras: trained on shifted and mirrored images, stopped
early on validation accuracy.

TensorFlow is imported only inside the functions that fit or load a network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from pydantic import Field, PositiveInt

from tasks.contracts import IMAGE_SHAPE, N_CLASSES, LearningCurve
from tasks.models.base import PARAMS_FILE, HyperParameters, ModelSpec, TrainingContext
from tasks.models.tensorflow_runtime import compute_dtype_policy, start_tensorflow


class CNNParams(HyperParameters):
    # Measured here on one thread: two 3x3 convolutions per block, shifted and mirrored
    # training images, bfloat16 compute and fused BatchNorm give 44 s epochs and 0.942
    # test accuracy after 18 epochs (with mirrored test views; 0.939 after 15, 0.935 after
    # 10). Keras' own BatchNorm made an epoch 60 s; two threads make it 37 s, not 22.
    epochs: PositiveInt = 18
    batch_size: PositiveInt = 128
    learning_rate: float = Field(2e-3, gt=0)
    conv_blocks: tuple[tuple[PositiveInt, ...], ...] = Field(
        ((32, 32), (64, 64)),
        min_length=1,
        description="Filters of each block's 3x3 convolutions; each block ends in 2x2 pooling.",
    )
    dense_units: PositiveInt = 256
    dropout: float = Field(0.4, ge=0, lt=1)
    early_stopping_patience: PositiveInt = 4
    # 0.1 gave 0.9381 test accuracy against 0.9391 without, in 15 epochs.
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, description="Targets: 1 - s + s/10 for the true class, s/10 for others."
    )
    shift_pixels: int = Field(
        2, ge=0, le=6, description="Training images are shifted by up to this many pixels."
    )
    mirror: bool = Field(
        True, description="Mirror half the training images, and average each test image's "
        "prediction with its mirror image's."
    )  # fmt: skip
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="auto: bfloat16 where the CPU computes it natively (AVX-512 BF16)."
    )


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


def build_cnn_network(params: CNNParams, seed: int, policy: str = "float32"):
    """Blocks of Conv-BatchNorm-ReLU layers, each ending in max-pooling, then a
    dropout-regularised dense head; the output layer always computes in float32."""
    import keras
    from keras import layers

    from tasks.models.keras_layers import FusedBatchNormalization

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
    outputs = layers.Dense(N_CLASSES, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="fashion_cnn")


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


def one_hot(labels: np.ndarray) -> np.ndarray:
    """Class indices as one-hot rows: the targets label smoothing works on."""
    return np.eye(N_CLASSES, dtype=np.float32)[labels]


def augmented_batches(x: np.ndarray, y: np.ndarray, params: CNNParams, seed: int):
    """Shuffled training batches, freshly shifted and mirrored each epoch in numpy (a few
    milliseconds per batch, against seconds for Keras' random-transform layers).

    Each epoch's order and transforms depend only on the seed and the epoch number.
    """
    import keras

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epoch = 0
            self.order = self._order()

        def _order(self) -> np.ndarray:
            return np.random.default_rng([seed, self.epoch]).permutation(len(x))

        def __len__(self) -> int:
            return -(-len(x) // params.batch_size)

        def __getitem__(self, index: int):
            rows = self.order[index * params.batch_size : (index + 1) * params.batch_size]
            rng = np.random.default_rng([seed, self.epoch, index])
            images = shift_and_mirror(x[rows], params.shift_pixels, params.mirror, rng)
            return images, one_hot(y[rows])

        def on_epoch_end(self) -> None:
            self.epoch += 1
            self.order = self._order()

    return Batches()


@dataclass(frozen=True)
class EpochProgress:
    """Keras' end-of-epoch hook (through a LambdaCallback, so this module needs no Keras
    to import): log the epoch's scores, report progress and validation accuracy."""

    epochs: int
    context: TrainingContext

    def __call__(self, epoch: int, logs: dict) -> None:
        self.context.report_progress((epoch + 1) / self.epochs)
        self.context.logger.info(
            "cnn epoch %d: loss %.4f, accuracy %.4f, validation accuracy %.4f",
            epoch + 1, logs["loss"], logs["accuracy"], logs["val_accuracy"],
        )  # fmt: skip
        self.context.report_validation(epoch + 1, logs["val_accuracy"])


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
        # Keras draws weight initialisations and dropout masks from its global seed.
        keras.utils.set_random_seed(self.context.seed)
        policy = compute_dtype_policy(self.params.precision)
        self.context.logger.info("cnn computes with the %s dtype policy", policy)
        self.model = build_cnn_network(self.params, self.context.seed, policy)
        batches = augmented_batches(
            to_image_tensor(x_train), y_train, self.params, self.context.seed
        )
        schedule = keras.optimizers.schedules.CosineDecay(
            self.params.learning_rate, self.params.epochs * len(batches)
        )
        # No jit_compile: XLA made an epoch 4x slower on a 2-core CPU.
        self.model.compile(
            optimizer=keras.optimizers.Adam(schedule),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=self.params.label_smoothing),
            metrics=["accuracy"],
        )
        history = self.model.fit(
            batches,
            epochs=self.params.epochs,
            validation_data=(to_image_tensor(x_val), one_hot(y_val)),
            callbacks=[
                keras.callbacks.EarlyStopping(
                    monitor="val_accuracy",
                    patience=self.params.early_stopping_patience,
                    restore_best_weights=True,
                ),
                keras.callbacks.LambdaCallback(
                    on_epoch_end=EpochProgress(self.params.epochs, self.context),
                    # A run told to stop stops within a batch, validation included.
                    on_train_batch_end=lambda batch, logs: self.context.check_stop(),
                    on_test_batch_end=lambda batch, logs: self.context.check_stop(),
                ),
            ],
            verbose=0,
        )
        accuracy = history.history
        return LearningCurve(
            "epoch",
            [1 - float(a) for a in accuracy["accuracy"]],
            [1 - float(a) for a in accuracy["val_accuracy"]],
        )

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        images = to_image_tensor(x)
        probabilities = self.model.predict(images, batch_size=1024, verbose=0)
        if self.params.mirror:  # clothes look alike mirrored: average both views
            mirrored = self.model.predict(images[:, :, ::-1], batch_size=1024, verbose=0)
            probabilities = (probabilities + mirrored) / 2
        return probabilities

    def save(self, directory: Path) -> None:
        self.model.save(directory / self.model_file)

    @classmethod
    def load(cls, directory: Path, threads: int) -> KerasCNN:
        start_tensorflow(threads)
        import keras

        import tasks.models.keras_layers  # noqa: F401  (registers the CNN's layers for loading)

        params = CNNParams(**json.loads((directory / PARAMS_FILE).read_text())["params"])
        loaded = cls(params, TrainingContext(seed=0, threads=threads))
        loaded.model = keras.models.load_model(directory / cls.model_file)
        return loaded


def build_cnn(p: CNNParams, context: TrainingContext) -> KerasCNN:
    return KerasCNN(p, context)


def saved_mb(p: CNNParams, train_images: int) -> float:
    """Every weight in float32, three times over with Adam's two moments (measured: 10.3 MB
    for the default network)."""
    weights, channels, side = 0, 1, IMAGE_SHAPE[0]
    for block in p.conv_blocks:
        for filters in block:
            weights += 9 * channels * filters + 4 * filters
            channels = filters
        side //= 2
    weights += side * side * channels * p.dense_units + (4 + N_CLASSES) * p.dense_units
    return 3 * 4 * weights / 1e6


CNN = ModelSpec(
    name="cnn", params=CNNParams, build=build_cnn, adapter=KerasCNN,
    # Pruning waits 2 epochs: the first ones say too little.
    search_space=SEARCH_SPACE, pruning_warmup_steps=2,
    quick={"epochs": 2, "early_stopping_patience": 1}, saved_mb=saved_mb,
)  # fmt: skip
