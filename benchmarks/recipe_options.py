"""Changes to the network's recipe that it does not make, each measured against the recipe
as it is: the rows "<network>, N epochs, <option>" in `docs/benchmark/cnn_recipe.md`.

    python -m benchmarks.recipe_options [--options NAME ...] [--epochs 15] [--network middle]
        [--avx2] [--seed 42]

Each option trains a network (the middle one unless told) a fixed number of epochs (no
deadline, no early stopping) on the default run's split, in this process, with every
usable core: the product's network, batches and cosine decay, changing one thing; `--seed`
draws other weights and batches on the same split. Its validation and test accuracy are
those of the product's prediction (the views of each image it averages). Rows are appended to
`cnn_recipe.csv`, and `cnn_recipe.md` is redrawn, as `benchmarks.cnn_recipe` does. `--avx2`
is that module's: TensorFlow's AVX2 kernels in float32 on an AVX-512 machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.budget_sweep import DEFAULT_SEED, code_commit
from benchmarks.cnn_recipe import cpu_label, render
from benchmarks.rows import appended
from flows.graph import prepare_data
from tasks.core.contracts import SPLIT_ARRAYS, ProcessedDataset
from tasks.core.cpus import usable_cores
from tasks.run.config import PipelineConfig
from tasks.training.models.base import TrainingContext
from tasks.training.models.cnn import (
    MIDDLE_BLOCKS,
    SMALL_BLOCKS,
    WIDE_BLOCKS,
    CNNParams,
    KerasCNN,
    compiled_network,
    to_image_tensor,
)
from tasks.training.models.deadline_schedule import CosineToDeadline
from tasks.training.models.keras_training import (
    augmented_batches,
    batch_count,
    image_batches,
    one_hot,
)
from tasks.training.models.tensorflow_runtime import start_tensorflow

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Option:
    """One change: the optimizer's, the images', or the network's parameters (`CNNParams`
    fields, the learning rate's peak and warm-up among them)."""

    optimizer: Callable[[float], object] | None = None  # learning rate -> Keras optimizer
    erase_side: int = 0  # cutout: a square of this side erased in half the images
    params: dict = field(default_factory=dict)


def adam_with_ema(rate: float):
    import keras

    return keras.optimizers.Adam(rate, use_ema=True, ema_momentum=0.998)


def nesterov_sgd(rate: float):
    import keras

    return keras.optimizers.SGD(rate, momentum=0.9, nesterov=True, weight_decay=5e-4)


OPTIONS = {
    "as it is": Option(),
    "weights averaged (Adam's EMA, momentum 0.998)": Option(adam_with_ema),
    "SGD, Nesterov momentum 0.9, rate 0.05, weight decay 5e-4": Option(
        nesterov_sgd, params={"learning_rate": 0.05}
    ),
    "cutout: an 8x8 square erased in half the images": Option(erase_side=8),
    "a warm-up epoch to rate 4e-3": Option(params={"learning_rate": 4e-3, "warmup_epochs": 1}),
    # The recipe before e1c9ce2, which made dropout 0.2 and shifts of 1 pixel the default.
    "dropout 0.4, shifts of up to 2 pixels": Option(params={"dropout": 0.4, "shift_pixels": 2}),
    # The stronger shifts alone: long schedules (30 epochs and more) may want more augmenting.
    "shifts of up to 2 pixels": Option(params={"shift_pixels": 2}),
    "batches of 256, rate 3e-3": Option(params={"batch_size": 256, "learning_rate": 3e-3}),
    # Less regularising, for the short schedules a budget gives the middle and small networks
    # (9 epochs in a 5-minute run on AVX2 kernels): at 10, dropout 0.2 had beaten 0.4.
    "dropout 0.1": Option(params={"dropout": 0.1}),
    "no dropout": Option(params={"dropout": 0.0}),
    # The middle network before its first block went from 24 filters to 16, which oneDNN's
    # bfloat16 convolutions on AMX (a 2-core Intel Xeon) ran 4 times faster.
    "blocks (24),(48,48),(96)": Option(params={"conv_blocks": ((24,), (48, 48), (96,))}),
    # Deeper, for the long schedules of 30-minute runs and fast CPUs: the wide network's test
    # accuracy levels off near 0.95 from 30 epochs on (cnn_recipe.md, budget_sweep.md).
    "a third block (128)": Option(params={"conv_blocks": (*WIDE_BLOCKS, (128,))}),
    "a third block (128,128)": Option(params={"conv_blocks": (*WIDE_BLOCKS, (128, 128))}),
    # The wide network without its second 28x28 convolution, a block of 128 added: an epoch
    # a fifth shorter (43.7 s against 54.3 on the AVX2 EPYC), for more epochs in a 30-minute
    # run's minutes; 33 epochs reached 0.9484 test where the wide one's 26 had 0.9501.
    "blocks (32),(64,64),(128)": Option(params={"conv_blocks": ((32,), (64, 64), (128,))}),
}
NETWORKS = {"small": SMALL_BLOCKS, "middle": MIDDLE_BLOCKS, "wide": WIDE_BLOCKS}


def erase_squares(images: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    """Half of the images (n, 28, 28, 1) with a `side` x `side` square, placed anywhere
    (the edge may cut it), set to background."""
    images = images.copy()
    count, height, width = images.shape[:3]
    erased = rng.random(count) < 0.5
    top, left = rng.integers(0, height, count), rng.integers(0, width, count)

    def inside(starts: np.ndarray, length: int) -> np.ndarray:
        offsets = np.arange(length)[None, :] - starts[:, None] + side // 2
        return (offsets >= 0) & (offsets < side)

    square = inside(top, height)[:, :, None] & inside(left, width)[:, None, :]
    images[square & erased[:, None, None]] = 0
    return images


def with_erased_squares(batches, side: int, seed: int):
    """The training batches, each with `erase_squares` applied."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)

    def erase(images: tf.Tensor, targets: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        erased = tf.numpy_function(lambda x: erase_squares(x, side, rng), [images], tf.float32)
        return tf.ensure_shape(erased, images.shape), targets

    return batches.map(erase)


def parsed_in_process(parser: argparse.ArgumentParser, argv: list[str] | None):
    """`argv` parsed by `parser` with the arguments of every benchmark that trains in its own
    process: `--avx2` (TensorFlow's AVX2 kernels in float32, chosen here, before TensorFlow
    loads them), `--cache-dir` and `--output` (made)."""
    parser.add_argument("--avx2", action="store_true")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "data")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmark")
    args = parser.parse_args(argv)
    if args.avx2:
        os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"
    args.output.mkdir(parents=True, exist_ok=True)
    return args


def default_split(cache_dir: Path) -> ProcessedDataset:
    """The default run's split, found, checked and made under `cache_dir` as the flow
    prepares it."""
    config = PipelineConfig(cache_dir=cache_dir, output_dir=cache_dir / "reports")
    plain = logging.getLogger("benchmark")
    return prepare_data(lambda stage, **parameters: stage.fn(**parameters), config, plain)[2]


def option_network(option: Option, params: CNNParams, seed: int, classes: int):
    """The product's compiled network, with the option's optimizer where it has one."""
    network = compiled_network(params, seed, classes)
    if option.optimizer:
        network.compile(
            optimizer=option.optimizer(params.learning_rate),
            loss=network.loss,
            metrics=["accuracy"],
        )
    return network


def option_batches(
    option: Option, x: np.ndarray, y: np.ndarray, params: CNNParams, seed: int, classes: int
):
    """The product's training batches, with the option's erased squares where it has them."""
    batches = augmented_batches(to_image_tensor(x), y, params, seed, classes)
    return with_erased_squares(batches, option.erase_side, seed) if option.erase_side else batches


@dataclass(frozen=True)
class Trial:
    """One row's training: `option` on the named network for `epochs`, with TensorFlow's
    AVX2 kernels in float32 or not; the seed draws the weights and the batches, not the
    split."""

    option: str
    epochs: int
    avx2: bool = False
    network: str = "middle"
    seed: int = DEFAULT_SEED

    def change(self) -> str:
        """The row's name; a seed other than the run's default is named in it."""
        seed = f", seed {self.seed}" if self.seed != DEFAULT_SEED else ""
        return f"{self.network}, {self.epochs} epochs, {self.option}{seed}"

    def params(self) -> CNNParams:
        """The product's parameters for the trial's network, with its option's changes (its
        blocks too, where the option names them)."""
        precision = "float32" if self.avx2 else "auto"
        named = {"conv_blocks": NETWORKS[self.network], "epochs": self.epochs}
        return CNNParams(**named | {"precision": precision} | OPTIONS[self.option].params)


def train_option(trial: Trial, data: ProcessedDataset) -> tuple[KerasCNN, float]:
    """The trial's network trained on `data`, and the seconds its fit took."""
    option, epochs, seed = OPTIONS[trial.option], trial.epochs, trial.seed
    (x_train, y_train), (x_val, y_val) = (
        data.load(*SPLIT_ARRAYS[split]) for split in ("train", "validation")
    )
    params = trial.params()
    start_tensorflow(usable_cores())
    import keras

    classes = len(data.class_names)
    network = option_network(option, params, seed, classes)
    batches = option_batches(option, x_train, y_train, params, seed, classes)
    steps = batch_count(len(y_train), params.batch_size)
    context = TrainingContext(seed=seed, threads=usable_cores())
    # The product's warm-up and cosine decay over the epochs, with no deadline to re-plan for.
    schedule = CosineToDeadline(
        network, params.learning_rate, steps, epochs, context, params.warmup_epochs
    )
    set_rate = keras.callbacks.LambdaCallback(on_train_batch_begin=schedule.on_train_batch_begin)
    started = time.perf_counter()
    network.fit(
        batches, epochs=epochs, verbose=0,
        validation_data=image_batches(to_image_tensor(x_val), one_hot(y_val, classes)),
        callbacks=[set_rate],
    )  # fmt: skip
    fit_seconds = time.perf_counter() - started
    return KerasCNN(params, context, network), fit_seconds


def run_option(trial: Trial, data: ProcessedDataset) -> dict:
    """One row: the trial's network trained on `data`, and its accuracies."""
    trained, fit_seconds = train_option(trial, data)
    (x_val, y_val), (x_test, y_test) = (
        data.load(*SPLIT_ARRAYS[split]) for split in ("validation", "test")
    )

    def accuracy(x: np.ndarray, y: np.ndarray) -> float:
        return round(float(np.mean(trained.predict_proba(x).argmax(axis=1) == y)), 4)

    return {
        "change": trial.change(),
        "epochs": trial.epochs,
        "fit_seconds": round(fit_seconds, 1),
        "seconds_per_epoch": round(fit_seconds / trial.epochs, 1),
        "validation_accuracy": accuracy(x_val, y_val),
        "test_accuracy": accuracy(x_test, y_test),
        "cpu": cpu_label(trial.avx2),
        "commit": code_commit(ROOT),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--options", nargs="+", choices=list(OPTIONS), default=list(OPTIONS))
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--network", choices=list(NETWORKS), default="middle")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parsed_in_process(parser, argv)
    table = args.output / "cnn_recipe.csv"
    data = default_split(args.cache_dir)
    for name in args.options:
        trial = Trial(name, args.epochs, args.avx2, args.network, args.seed)
        row = run_option(trial, data)
        print(json.dumps(row), flush=True)
        render(appended(table, [row]), args.output / "cnn_recipe.md")


if __name__ == "__main__":
    main()
