"""The views of each image the CNN's prediction averages, measured on the same weights:
`docs/benchmark/prediction_views.md`.

    python -m benchmarks.prediction_views [--networks small:10:1 wide:20:2 ...] [--runs DIR ...]
        [--avx2]

Each network named `<small|middle|wide>:<epochs>:<seed>` is trained as
`benchmarks.recipe_options` trains it (the product's recipe, that many epochs to the end,
every usable core, on the default run's split); each `--runs` directory's CNN is the one
that run saved, scored on that run's split. Each network is then scored with each set of
views in `VIEW_SETS` on its validation, selection and test images: the same weights, so a
difference between two sets is the views' alone. Rows are appended to
`prediction_views.csv`, and `prediction_views.md` is redrawn. `--avx2` is
`benchmarks.cnn_recipe`'s.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.budget_sweep import code_commit
from benchmarks.cnn_recipe import cpu_label
from benchmarks.recipe_options import Trial, default_split, parsed_in_process, train_option
from benchmarks.rows import appended
from tasks.core.contracts import SPLIT_ARRAYS, ProcessedDataset
from tasks.core.cpus import usable_cores
from tasks.data.preprocess import read_processed
from tasks.evaluation.report.tables import markdown_table
from tasks.training.models.base import PARAMS_FILE
from tasks.training.models.cnn import CNN, KerasCNN

ROOT = Path(__file__).resolve().parents[1]
# Column name: (`test_shift_pixels`, `mirror`) of the prediction.
VIEW_SETS = {"image": (0, False), "and mirror image": (0, True), "10 views": (1, True)}
SCORED = ("validation", "selection", "test")


def view_accuracies(network: KerasCNN, data: ProcessedDataset) -> list[dict]:
    """A row per scored split: the accuracy of each set of views."""
    rows = []
    for split in SCORED:
        x, y = data.load(*SPLIT_ARRAYS[split])
        row = {"split": split, "images": len(y)}
        for name, (shift_pixels, mirror) in VIEW_SETS.items():
            update = {"test_shift_pixels": shift_pixels, "mirror": mirror}
            viewed = KerasCNN(
                network.params.model_copy(update=update), network.context, network.model
            )
            row[name] = round(float(np.mean(viewed.predict_proba(x).argmax(axis=1) == y)), 4)
        rows.append(row)
    return rows


def trained_rows(spec: str, avx2: bool, data: ProcessedDataset) -> list[dict]:
    """`spec` ("wide:20:2") trained on `data`, and its rows."""
    network_name, epochs, seed = spec.split(":")
    network, _ = train_option(Trial("as it is", int(epochs), avx2, network_name, int(seed)), data)
    name = f"{network_name}, {epochs} epochs, seed {seed}"
    return [{"network": name} | row for row in view_accuracies(network, data)]


def run_rows(run: Path) -> list[dict]:
    """The CNN `run` saved, on the run's split, and its rows."""
    (processed,) = (run / "data" / "processed").iterdir()
    metrics = json.loads((run / "reports" / "latest" / "metrics.json").read_text())
    model_dir = run / metrics["models"][CNN.name]["model_dir"]
    network = KerasCNN.load(model_dir, threads=usable_cores())
    trained = len(json.loads((model_dir / PARAMS_FILE).read_text())["curve"]["validation_error"])
    name = f"run {run.name}: {network.params.conv_blocks}, {trained} epochs"
    return [{"network": name} | row for row in view_accuracies(network, read_processed(processed))]


def render(rows: pd.DataFrame, output: Path) -> None:
    gain = [f"{100 * g:+.2f}" for g in rows["10 views"] - rows["and mirror image"]]
    columns = ["network", "split", "images", *VIEW_SETS]
    shown = rows[columns].assign(gain=gain, cpu=rows.cpu, commit=rows.commit)
    mean = shown.groupby("split", sort=False)["gain"].apply(lambda g: g.astype(float).mean())
    summary = ", ".join(f"{split} {gain:+.2f}" for split, gain in mean.items())
    output.write_text(
        "# The views a prediction averages\n\n"
        "Written by `python -m benchmarks.prediction_views`: each network scored on the same "
        "weights with each set of views of an image: the image alone; with its mirror image "
        "(the product's prediction before `test_shift_pixels`); and 10 views, the image and "
        "its copies moved 1 pixel up, down, left and right, each also mirrored (the "
        "product's since). Gain: 10 views over 2, in points of accuracy. Mean gain, by "
        f"split: {summary}.\n\n" + markdown_table(shown) + "\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", nargs="*", default=["small:10:1", "wide:20:1"])
    parser.add_argument("--runs", nargs="*", type=Path, default=[])
    args = parsed_in_process(parser, argv)
    table = args.output / "prediction_views.csv"
    measured = [lambda run=run: run_rows(run) for run in args.runs]
    if args.networks:
        data = default_split(args.cache_dir)
        measured += [
            lambda spec=spec: trained_rows(spec, args.avx2, data) for spec in args.networks
        ]
    machine = {
        "cpu": cpu_label(args.avx2),
        "commit": code_commit(ROOT),
    }
    for measure in measured:
        found = pd.DataFrame([row | machine for row in measure()])
        print(found.to_string(index=False), flush=True)
        render(appended(table, found), args.output / "prediction_views.md")


if __name__ == "__main__":
    main()
