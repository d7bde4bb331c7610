"""Which epoch's weights a CNN trained under a time budget should keep: the best on validation
in the last third of its epochs, which budgeted runs restored up to 07738ea
(`best_of_the_last_third`, the first of equals), the last of equals, the last, where the
learning rate's cosine decay ends and which they keep since, or the last three's predictions
averaged: `docs/benchmark/kept_epoch.md`.

    python -m benchmarks.kept_epoch [--network small] [--epochs 9] [--seeds 1 2 3] [--avx2]

Each seed trains the network as a budgeted run does (its network, without dropout where the
plan takes it off, the product's batches and cosine decay over the epochs, on the default
run's split, every usable core), and scores the test images as the product predicts them
after each epoch `best_of_the_last_third` watches, and with the weights it restores. Rows
are appended to `kept_epoch.csv`, and `kept_epoch.md` is redrawn. `--avx2` is
`benchmarks.cnn_recipe`'s.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from benchmarks.budget_sweep import code_commit
from benchmarks.cnn_recipe import cpu_label
from benchmarks.recipe_options import NETWORKS, default_split, parsed_in_process
from benchmarks.rows import appended
from tasks.core.contracts import SPLIT_ARRAYS, ProcessedDataset
from tasks.core.cpus import usable_cores
from tasks.evaluation.report.tables import markdown_table
from tasks.training.models.base import TrainingContext
from tasks.training.models.cnn import CNNParams, compiled_network, to_image_tensor
from tasks.training.models.deadline_schedule import CosineToDeadline
from tasks.training.models.keras_prediction import predicted_over_views
from tasks.training.models.keras_training import (
    augmented_batches,
    batch_count,
    early_stopping,
    image_batches,
    one_hot,
)
from tasks.training.models.tensorflow_runtime import start_tensorflow

ROOT = Path(__file__).resolve().parents[1]


def budgeted_params(network: str, epochs: int, avx2: bool) -> CNNParams:
    """The parameters a budgeted run trains `network` with: the plan takes the middle and
    small networks' dropout off (`tasks.training.models.cnn`'s variants)."""
    lighter = {} if network == "wide" else {"dropout": 0.0}
    precision = "float32" if avx2 else "auto"
    named = {"conv_blocks": NETWORKS[network], "epochs": epochs, "precision": precision}
    return CNNParams(**named | lighter)


def best_of_the_last_third(params: CNNParams):
    """The early stopping budgeted runs had up to 07738ea: without patience, so the weights
    of the epoch with the best validation accuracy in the last third of the planned ones are
    restored at the end (the first of equals)."""
    return early_stopping(SimpleNamespace(epochs=params.epochs, early_stopping_patience=math.inf))


def kept_epochs_compared(params: CNNParams, seed: int, data: ProcessedDataset) -> dict:
    """One seed's row: the epoch `best_of_the_last_third` keeps, and the validation (one
    view, as early stopping scores it) and test accuracy (the product's views) of its
    weights, of the last of the equally good epochs, of the last epoch's, and of the last
    three epochs' predictions averaged; with each watched epoch's validation and test
    accuracy."""
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (
        data.load(*SPLIT_ARRAYS[split]) for split in ("train", "validation", "test")
    )
    start_tensorflow(usable_cores())
    import keras

    classes = len(data.class_names)
    network = compiled_network(params, seed, classes)
    steps = batch_count(len(y_train), params.batch_size)
    context = TrainingContext(seed=seed, threads=usable_cores())
    schedule = CosineToDeadline(network, params.learning_rate, steps, params.epochs, context)
    stopping = best_of_the_last_third(params)

    def test_probabilities() -> np.ndarray:
        return predicted_over_views(
            network, to_image_tensor(x_test), params.test_shift_pixels, params.mirror
        )

    def accuracy(probabilities: np.ndarray) -> float:
        return round(float(np.mean(probabilities.argmax(axis=1) == y_test)), 4)

    watched: dict[int, tuple[float, np.ndarray]] = {}  # epoch -> validation, test predictions

    def on_epoch_end(epoch: int, logs: dict) -> None:
        if epoch >= stopping.start_from_epoch:
            watched[epoch] = (round(logs["val_accuracy"], 4), test_probabilities())

    network.fit(
        augmented_batches(to_image_tensor(x_train), y_train, params, seed, classes),
        epochs=params.epochs,
        validation_data=image_batches(to_image_tensor(x_val), one_hot(y_val, classes)),
        callbacks=[
            keras.callbacks.LambdaCallback(on_train_batch_begin=schedule.on_train_batch_begin),
            stopping,
            keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end),
        ],
        verbose=0,
    )
    kept, last = stopping.best_epoch, max(watched)
    best = max(validation for validation, _ in watched.values())
    last_of_equals = max(epoch for epoch, (validation, _) in watched.items() if validation == best)
    last_three = np.mean([watched[epoch][1] for epoch in sorted(watched)[-3:]], axis=0)
    return {
        "seed": seed,
        "kept_epoch": kept + 1,
        "validation_kept": watched[kept][0],
        "validation_last": watched[last][0],
        "test_kept": accuracy(test_probabilities()),  # the weights restored
        "test_last": accuracy(watched[last][1]),
        "last_of_equals_epoch": last_of_equals + 1,
        "test_last_of_equals": accuracy(watched[last_of_equals][1]),
        "test_last_three_averaged": accuracy(last_three),
        "validation_by_epoch": " ".join(f"{watched[epoch][0]:.4f}" for epoch in sorted(watched)),
        "test_by_epoch": " ".join(
            f"{accuracy(watched[epoch][1]):.4f}" for epoch in sorted(watched)
        ),
    }


GAINS = {
    "last": "test_last",
    "last of equals": "test_last_of_equals",
    "last three averaged": "test_last_three_averaged",
}


def render(rows: pd.DataFrame, output: Path) -> None:
    """The rows with each policy's gain over the kept epoch, in points, and their means."""
    gains = {name: 100 * (rows[column] - rows["test_kept"]) for name, column in GAINS.items()}
    shown = rows.drop(columns=["validation_by_epoch", "test_by_epoch"])
    shown["last_of_equals_epoch"] = shown["last_of_equals_epoch"].astype("Int64")
    shown = shown.astype(object).where(shown.notna(), "")  # rows from before a column came
    shown = shown.assign(**{f"gain, {name}": [f"{g:+.2f}" if g == g else "" for g in gain]
                            for name, gain in gains.items()})  # fmt: skip
    shown = shown[[*shown.columns.drop(["cpu", "commit"]), "cpu", "commit"]]
    means = "; ".join(
        f"{name} {gain.mean():+.2f} over {gain.count()} rows"
        for name, gain in gains.items()
        if gain.count()
    )
    output.write_text(
        "# The epoch a budgeted CNN keeps\n\n"
        "Written by `python -m benchmarks.kept_epoch`: each seed trains the network as a "
        "budgeted run does, its cosine decay over the epochs, and scores the test images "
        "with the weights budgeted runs restored up to 07738ea (the first of the best "
        "validation accuracies in the last third of the epochs, validation as early stopping "
        "scores it: one view of 3,000 images), with the last of the equally best epochs', "
        "with the last epoch's (which they keep since), and with the last three epochs' "
        "predictions averaged. Gains: each one's test accuracy over the restored epoch's, in "
        "points; mean "
        f"{means}; the last epoch restored in {int((rows.kept_epoch == rows.epochs).sum())} of "
        f"{len(rows)}. `kept_epoch.csv` has each watched epoch's validation and test "
        "accuracy.\n\n" + markdown_table(shown) + "\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", choices=list(NETWORKS), default="small")
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parsed_in_process(parser, argv)
    table = args.output / "kept_epoch.csv"
    data = default_split(args.cache_dir)
    params = budgeted_params(args.network, args.epochs, args.avx2)
    for seed in args.seeds:
        row = {"network": args.network, "epochs": args.epochs}
        row |= kept_epochs_compared(params, seed, data)
        row |= {"cpu": cpu_label(args.avx2), "commit": code_commit(ROOT)}
        print(json.dumps(row), flush=True)
        render(appended(table, [row]), args.output / "kept_epoch.md")


if __name__ == "__main__":
    main()
