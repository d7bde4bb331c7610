"""Training: a registry of model builders, and fitting one model on the training split.

Each builder returns an unfitted classifier wrapped in a small adapter that knows
how its library fits (XGBoost and Keras stop early on the validation split),
predicts, and saves itself in the library's own format. Thread counts are
explicit so that the models trained side by side share the cores without
oversubscribing them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import joblib
import numpy as np
import xgboost
from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.logging import get_run_logger
from sklearn.base import ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.svm import SVC
from threadpoolctl import threadpool_limits

from tasks.config import (
    CNNParams,
    LogisticRegressionParams,
    ModelParams,
    RandomForestParams,
    SVMParams,
    XGBoostParams,
)
from tasks.contracts import (
    IMAGE_SHAPE,
    N_CLASSES,
    TRAINING_ARRAYS,
    LearningCurve,
    ProcessedDataset,
    TrainedModel,
)
from tasks.preprocess import to_image_tensor
from tasks.storage import cached_directory, code_version, content_key

PARAMS_FILE = "params.json"
XGBOOST_LOG_EVERY = 25


@dataclass(frozen=True)
class TrainingContext:
    """How a model is trained, apart from its hyper-parameters."""

    seed: int
    threads: int
    logger: logging.Logger = logging.getLogger(__name__)  # noqa: RUF009
    report_progress: Callable[[float], None] = lambda fraction: None
    # Validation accuracy part-way through a fit (step: boosting round or epoch); the
    # tuning stage prunes a trial by raising from it.
    report_validation: Callable[[int, float], None] = lambda step, accuracy: None


class Classifier(Protocol):
    model_file: ClassVar[str]

    def fit(
        self, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray
    ) -> LearningCurve | None:
        """Fit on the training split; return the learning curve of iterative models."""

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities, one column per class; the prediction is the most probable."""

    def save(self, directory: Path) -> None: ...


def limit_blas_threads(threads: int) -> None:
    """Cap the process-wide BLAS pools at the per-model thread count, and leave them so.

    A scoped limit would be undone by whichever model finishes first while another
    still fits: that one would then oversubscribe the cores, and a capped-iteration
    solver such as logistic regression would give other results from run to run.
    """
    threadpool_limits(limits=threads, user_api="blas")


@dataclass
class SklearnClassifier:
    estimator: ClassifierMixin
    threads: int
    logger: logging.Logger = logging.getLogger(__name__)  # noqa: RUF009
    model_file: ClassVar[str] = "model.joblib"

    def fit(self, x_train, y_train, x_val, y_val) -> None:
        # An iteration cap is a deliberate time budget: one log line says when it was
        # reached, instead of scikit-learn's multi-line warning (filters are process-wide).
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        limit_blas_threads(self.threads)
        self.estimator.fit(x_train, y_train)
        max_iter = getattr(self.estimator, "max_iter", -1)
        if max_iter > 0 and np.max(getattr(self.estimator, "n_iter_", 0)) >= max_iter:
            self.logger.info(
                "%s stopped at its cap of max_iter=%d iterations before converging",
                type(self.estimator).__name__, max_iter,
            )  # fmt: skip
        if not hasattr(self.estimator, "predict_proba"):
            # An SVC has decision values, not probabilities. Temperature scaling, fitted on
            # the validation split, turns them into probabilities and keeps their ranking.
            frozen = FrozenEstimator(self.estimator)
            self.estimator = CalibratedClassifierCV(frozen, method="temperature")
            self.estimator.fit(x_val, y_val)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        limit_blas_threads(self.threads)
        return self.estimator.predict_proba(x)

    def save(self, directory: Path) -> None:
        joblib.dump(self.estimator, directory / self.model_file)

    @classmethod
    def load(cls, directory: Path, threads: int) -> SklearnClassifier:
        return cls(joblib.load(directory / cls.model_file), threads)


class XGBoostProgress(xgboost.callback.TrainingCallback):
    """Log validation error and log-loss, and report progress, every few boosting rounds."""

    def __init__(self, rounds: int, context: TrainingContext):
        super().__init__()
        self.rounds = rounds
        self.logger = context.logger
        self.report_progress = context.report_progress
        self.report_validation = context.report_validation

    def after_iteration(self, model, epoch: int, evals_log) -> bool:
        if (epoch + 1) % XGBOOST_LOG_EVERY == 0:
            self.report_progress((epoch + 1) / self.rounds)
            validation = evals_log["validation_1"]  # eval sets are named by position
            self.logger.info(
                "xgboost round %d: validation error %.4f, log-loss %.4f",
                epoch + 1, validation["merror"][-1], validation["mlogloss"][-1],
            )  # fmt: skip
            self.report_validation(epoch + 1, 1 - validation["merror"][-1])
        return False


@dataclass
class XGBoostClassifier:
    model: xgboost.XGBClassifier
    model_file: ClassVar[str] = "model.ubj"

    def fit(self, x_train, y_train, x_val, y_val) -> LearningCurve:
        # Evaluated on both splits for the learning curves; the last set drives early stopping.
        self.model.fit(
            x_train, y_train, eval_set=[(x_train, y_train), (x_val, y_val)], verbose=False
        )
        curves = self.model.evals_result()  # eval sets are named by position
        return LearningCurve(
            "boosting round", curves["validation_0"]["merror"], curves["validation_1"]["merror"]
        )

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(x)

    def save(self, directory: Path) -> None:
        self.model.save_model(directory / self.model_file)

    @classmethod
    def load(cls, directory: Path, threads: int) -> XGBoostClassifier:
        model = xgboost.XGBClassifier(n_jobs=threads)
        model.load_model(directory / cls.model_file)
        return cls(model)


# TensorFlow's native start-up notices (oneDNN, CUDA probing, CPU features) are written
# straight to file descriptor 2 before any log setting applies. Warnings and errors pass.
TENSORFLOW_STARTUP_NOISE = re.compile(
    rb"^(?:I\d{4} |WARNING: All log messages before absl::InitializeLog|To enable the following)"
)
_tensorflow_start = threading.Lock()


@contextlib.contextmanager
def native_stderr_without(noise: re.Pattern[bytes]) -> Iterator[None]:
    """Route file descriptor 2 through a pipe that drops the lines matching `noise`.

    Native libraries bypass Python's logging, so only the descriptor can filter them;
    everything else written meanwhile, by any thread, is passed on in order.
    """
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if not noise.match(line):
                    os.write(original, line)

    forwarder = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    forwarder.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's last write end: the forwarder drains and ends
        forwarder.join(timeout=5)
        if not forwarder.is_alive():  # else a child process still holds the pipe open
            os.close(original)


def start_tensorflow(threads: int) -> None:
    """Import TensorFlow on first use, without its start-up notices, with `threads` threads.

    Imported only when a CNN is fitted or loaded, so runs whose CNN is cached skip it.
    """
    with _tensorflow_start:
        if "tensorflow" in sys.modules:
            configure_tensorflow_threads(threads)
            return
        with native_stderr_without(TENSORFLOW_STARTUP_NOISE):
            import tensorflow as tf

            configure_tensorflow_threads(threads)
            tf.config.list_logical_devices()  # device probing prints its own notices


def configure_tensorflow_threads(threads: int) -> None:
    """TensorFlow's thread pools are process-wide and fixed once it has run an operation."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        logging.getLogger(__name__).debug("TensorFlow already initialised; thread pools kept")


def cpu_computes_bfloat16() -> bool:
    """Whether this CPU has native bfloat16 instructions, which oneDNN uses for convolutions."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = re.search(r"^flags\s*:(.*)$", cpuinfo, re.MULTILINE)
    return bool(flags) and bool({"avx512_bf16", "amx_bf16"} & set(flags.group(1).split()))


def compute_dtype_policy(precision: str) -> str:
    """Keras dtype policy: bfloat16 compute with float32 weights, or float32 throughout."""
    if precision == "auto":
        precision = "bfloat16" if cpu_computes_bfloat16() else "float32"
    return "mixed_bfloat16" if precision == "bfloat16" else "float32"


def build_cnn_network(params: CNNParams, seed: int, policy: str = "float32"):
    """Blocks of Conv-BatchNorm-ReLU layers, each ending in max-pooling, then a
    dropout-regularised dense head; the output layer always computes in float32."""
    import keras
    from keras import layers

    from tasks.keras_layers import FusedBatchNormalization

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


@dataclass
class KerasCNN:
    params: CNNParams
    context: TrainingContext
    model: object = None
    model_file: ClassVar[str] = "model.keras"

    def fit(self, x_train, y_train, x_val, y_val) -> LearningCurve:
        start_tensorflow(self.context.threads)
        import keras

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
        logger, epochs = self.context.logger, self.params.epochs
        report_progress, report_validation = (
            self.context.report_progress,
            self.context.report_validation,
        )

        class LogProgress(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                report_progress((epoch + 1) / epochs)
                logger.info(
                    "cnn epoch %d: loss %.4f, accuracy %.4f, validation accuracy %.4f",
                    epoch + 1, logs["loss"], logs["accuracy"], logs["val_accuracy"],
                )  # fmt: skip
                report_validation(epoch + 1, logs["val_accuracy"])

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
                LogProgress(),
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

        import tasks.keras_layers  # noqa: F401  (registers the CNN's own layers for loading)

        params = CNNParams(**json.loads((directory / PARAMS_FILE).read_text())["params"])
        loaded = cls(params, TrainingContext(seed=0, threads=threads))
        loaded.model = keras.models.load_model(directory / cls.model_file)
        return loaded


def build_logistic_regression(p: LogisticRegressionParams, context: TrainingContext):
    estimator = LogisticRegression(C=p.C, max_iter=p.max_iter, random_state=context.seed)
    return SklearnClassifier(estimator, context.threads, context.logger)


def build_random_forest(p: RandomForestParams, context: TrainingContext):
    forest = RandomForestClassifier(
        n_estimators=p.n_estimators,
        max_features=p.max_features,
        min_samples_leaf=p.min_samples_leaf,
        n_jobs=context.threads,
        random_state=context.seed,
    )
    return SklearnClassifier(forest, context.threads, context.logger)


def build_svm(p: SVMParams, context: TrainingContext):
    svm = SVC(
        kernel="rbf", C=p.C, gamma=p.gamma, cache_size=p.cache_size_mb, random_state=context.seed
    )
    if p.pca_components:
        svm = make_pipeline(PCA(p.pca_components, random_state=context.seed), svm)
    return SklearnClassifier(svm, context.threads, context.logger)


def build_xgboost(p: XGBoostParams, context: TrainingContext):
    model = xgboost.XGBClassifier(
        tree_method="hist",
        n_estimators=p.n_estimators,
        learning_rate=p.learning_rate,
        max_depth=p.max_depth,
        max_bin=p.max_bin,
        colsample_bytree=p.colsample_bytree,
        n_jobs=context.threads,
        random_state=context.seed,
        # The last metric drives early stopping: validation log-loss.
        eval_metric=["merror", "mlogloss"],
        early_stopping_rounds=p.early_stopping_rounds,
        callbacks=[XGBoostProgress(p.n_estimators, context)],
    )
    return XGBoostClassifier(model)


def build_cnn(p: CNNParams, context: TrainingContext):
    return KerasCNN(p, context)


MODEL_BUILDERS: dict[str, Callable[..., Classifier]] = {
    "logistic_regression": build_logistic_regression,
    "random_forest": build_random_forest,
    "svm_rbf": build_svm,
    "xgboost": build_xgboost,
    "cnn": build_cnn,
}
_LOADERS = {
    SklearnClassifier.model_file: SklearnClassifier.load,
    XGBoostClassifier.model_file: XGBoostClassifier.load,
    KerasCNN.model_file: KerasCNN.load,
}


def build_model(name: str, params: ModelParams, context: TrainingContext) -> Classifier:
    """An unfitted classifier for a registered model name."""
    if name not in MODEL_BUILDERS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODEL_BUILDERS)}")
    return MODEL_BUILDERS[name](getattr(params, name), context)


def load_model(directory: Path, threads: int) -> Classifier:
    """A saved classifier, read back in its library's own format."""
    for model_file, load in _LOADERS.items():
        if (directory / model_file).is_file():
            return load(directory, threads)
    raise FileNotFoundError(f"{directory}: no saved model ({', '.join(_LOADERS)})")


def train_model(
    name: str,
    params: ModelParams,
    data: ProcessedDataset,
    cache_dir: Path,
    context: TrainingContext,
    refresh: bool = False,
) -> TrainedModel:
    """Fit one model and save it next to its parameters, or reuse the one fitted before.

    The cache key covers the training data's hashes, the model's parameters, the seed
    and this module's code; the thread count is left out as it changes only speed.
    """
    logger = context.logger
    model_params = getattr(params, name).model_dump(mode="json")
    inputs = {array: data.arrays[array].sha256 for array in TRAINING_ARRAYS}
    key = content_key(inputs, model_params, context.seed, code_version(__file__))
    target = cache_dir / "models" / name / key

    def fit_and_save(staging: Path) -> None:
        classifier = build_model(name, params, context)
        x_train, y_train, x_val, y_val = data.load(*TRAINING_ARRAYS)
        logger.info(
            "training %s on %d images with %d thread(s)", name, len(y_train), context.threads
        )
        started, cpu_started = time.perf_counter(), time.process_time()
        curve = classifier.fit(x_train, y_train, x_val, y_val)
        fit_seconds = time.perf_counter() - started
        fit_cpu_seconds = time.process_time() - cpu_started
        classifier.save(staging)
        record = {"model": name, "seed": context.seed, "threads": context.threads}
        record |= {"params": model_params, "fit_seconds": fit_seconds}
        record |= {"fit_cpu_seconds": fit_cpu_seconds, "curve": curve and asdict(curve)}
        (staging / PARAMS_FILE).write_text(json.dumps(record, indent=2))
        logger.info("trained %s in %.1f s", name, fit_seconds)

    if cached_directory(target, fit_and_save, refresh, logger):
        logger.info("reused %s, trained before, from %s", name, target)
    context.report_progress(1.0)
    record = json.loads((target / PARAMS_FILE).read_text())
    curve = record["curve"] and LearningCurve(**record["curve"])
    return TrainedModel(
        name, target, record["fit_seconds"], record["fit_cpu_seconds"], model_params, curve
    )


def artifact_key(text: str) -> str:
    """Prefect artifact keys take lowercase letters, digits and dashes only."""
    return text.lower().replace("_", "-")


@task(name="train-model", task_run_name="train-{name}")
def train_task(
    name: str,
    params: ModelParams,
    data: ProcessedDataset,
    cache_dir: Path,
    seed: int,
    threads: int,
    refresh: bool,
) -> TrainedModel:
    progress = create_progress_artifact(
        progress=0.0, key=artifact_key(f"training-{name}"), description=f"Training {name}"
    )
    context = TrainingContext(
        seed,
        threads,
        get_run_logger(),
        report_progress=lambda fraction: update_progress_artifact(progress, 100 * fraction),
    )
    return train_model(name, params, data, cache_dir, context, refresh)
