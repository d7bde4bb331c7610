"""What each change to the convolutional network's recipe buys on this machine: the
ablation table behind its defaults.

    python -m benchmarks.cnn_recipe [--rows NAME ...] [--avx2] [--output docs/benchmark]

Each row trains the network alone, as a user would (`python -m flows.full_pipeline
--models <the network> --time-budget 0`, every usable core, the default split and seed),
in a fresh directory, with the row's parameters over the defaults. Recorded per row: the
epochs trained, the fit's seconds and seconds per epoch, the validation and test accuracy,
the CPU and the commit. Rows are appended to `cnn_recipe.csv`, and `cnn_recipe.md` is
redrawn from it. `--avx2` is `benchmarks/budget_sweep.py`'s: TensorFlow's AVX2 kernels on
an AVX-512 machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks.budget_sweep import code_commit, cpu_name
from benchmarks.rows import appended
from tasks.evaluation.report.tables import markdown_table
from tasks.training.models.cnn import MIDDLE_BLOCKS, SMALL_BLOCKS, WIDE_BLOCKS
from tasks.training.models.registry import own_lane_model

ROOT = Path(__file__).resolve().parents[1]
# Each row: what it changes, as parameters over the network's defaults.
ROWS = {
    "small (16),(32,32),(64), 18 epochs": {"conv_blocks": SMALL_BLOCKS, "epochs": 18},
    "small, 30 epochs": {"conv_blocks": SMALL_BLOCKS, "epochs": 30},
    "middle (16),(48,48),(96), 18 epochs": {"conv_blocks": MIDDLE_BLOCKS, "epochs": 18},
    "middle, 12 epochs": {"conv_blocks": MIDDLE_BLOCKS, "epochs": 12},
    "wide, 12 epochs": {"conv_blocks": WIDE_BLOCKS, "epochs": 12},
    "middle, 18 epochs, dropout 0.2": {"conv_blocks": MIDDLE_BLOCKS, "epochs": 18, "dropout": 0.2},
    "middle, 18 epochs, batch 64": {"conv_blocks": MIDDLE_BLOCKS, "epochs": 18, "batch_size": 64},
    "middle, 30 epochs": {"conv_blocks": MIDDLE_BLOCKS, "epochs": 30},
    "middle, 30 epochs to the end": {
        "conv_blocks": MIDDLE_BLOCKS,
        "epochs": 30,
        "early_stopping_patience": 30,
    },
}
EPOCH_LINE = re.compile(r"epoch (\d+): loss [0-9.]+, accuracy [0-9.]+, validation accuracy")


def cpu_label(avx2: bool) -> str:
    """The CPU a row ran on, and whether on TensorFlow's AVX2 kernels (`--avx2`)."""
    return cpu_name() + (", AVX2 kernels" if avx2 else "")


def run_row(name: str, avx2: bool) -> dict:
    """One row: the network trained alone with the row's parameters, in a fresh directory."""
    network = own_lane_model()
    workdir = Path(tempfile.mkdtemp(prefix="cnn-recipe-"))
    params = dict(ROWS[name])
    env = os.environ | {"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    if avx2:
        env["ONEDNN_MAX_CPU_ISA"] = "AVX2"
        params["precision"] = "float32"
    profile = workdir / "recipe.json"
    profile.write_text(json.dumps({"params": {network: params}}))
    command = [sys.executable, "-m", "flows.full_pipeline", "--models", network,
               "--time-budget", "0", "--profile-file", str(profile)]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{name}: the run failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((workdir / "reports" / "latest" / "metrics.json").read_text())
    scores = metrics["models"][network]
    epochs = len(EPOCH_LINE.findall(done.stderr))
    return {
        "change": name,
        "epochs": epochs,
        "fit_seconds": round(scores["fit_seconds"], 1),
        "seconds_per_epoch": round(scores["fit_seconds"] / max(1, epochs), 1),
        "validation_accuracy": scores["validation_accuracy"],
        "test_accuracy": scores["test_accuracy"],
        "run_seconds": round(wall, 1),
        "cpu": cpu_label(avx2),
        "commit": code_commit(ROOT),
    }


def render(rows: pd.DataFrame, output: Path) -> None:
    columns = ["change", "epochs", "fit_seconds", "seconds_per_epoch", "validation_accuracy",
               "test_accuracy", "cpu", "commit"]  # fmt: skip
    shown = rows[columns].assign(seconds_per_epoch=rows.seconds_per_epoch.map("{:.1f}".format))
    output.write_text(
        "# The network's recipe, one change at a time\n\n"
        "Written by `python -m benchmarks.cnn_recipe`: each row trains the network alone "
        "(`--models` it, `--time-budget 0`, every usable core) on the default split; and by "
        '`python -m benchmarks.recipe_options`, the rows "<network>, N epochs, <option>": '
        "that network N epochs to the end in one process, one change to the recipe as it "
        'was at the row\'s commit. The CPU each ran on is in its row ("AVX2 kernels": '
        "`--avx2`). The middle network's first block had 24 filters, not 16, in rows measured "
        "before f97378b. Predictions average 10 views of each image (`test_shift_pixels`, "
        "`docs/benchmark/prediction_views.md`) in rows measured since that setting came, 2 "
        "(the image and its mirror image) before. Test accuracy on 10,000 images is within about "
        "±0.5 points (95 %) of the truth.\n\n" + markdown_table(shown) + "\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--avx2", action="store_true")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmark")
    args = parser.parse_args(argv)
    table = args.output / "cnn_recipe.csv"
    for name in args.rows:
        row = run_row(name, args.avx2)
        print(json.dumps(row), flush=True)
        render(appended(table, [row]), args.output / "cnn_recipe.md")


if __name__ == "__main__":
    main()
