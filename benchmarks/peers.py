"""The project against what a user would pick instead: AutoGluon and FLAML on the same
split, the same machine and the same minutes, one after the other.

    python -m venv .peers && .peers/bin/pip install -e ".[peers]"
    python -m benchmarks.peers --peers-python .peers/bin/python [--budgets 5 15] [--peers autogluon]
        [--avx2] [--seed N]

AutoGluon 1.6 pins xgboost below 3 and pandas below 3, so the peers get an environment
of their own (`--peers-python`; default: this Python) and the project runs on its own.

For each budget, never two at once on the machine:
1. the project's command, `python -m flows.full_pipeline --time-budget B`, in a fresh
   directory, as a user runs it (preparing the data counts against the budget);
2. AutoGluon's `TabularPredictor` (`time_limit` B minutes), then FLAML's `AutoML`
   (`time_budget` B minutes), each in a fresh process, on that run's split: the pixels
   as 784 columns of every image the run trained, stopped and selected on (training,
   validation and selection), scored on the run's test images. Each is timed from
   reading the split to the end of predicting the test set.
A peer still running at `STOP_AT_BUDGETS` times its budget is stopped, without an accuracy.
`--avx2` runs the project as the budget sweep's `--avx2` does (TensorFlow's AVX2 kernels,
float32); the peers run as they are, since none of them trains with TensorFlow. `--seed`
is the project's run's (default: the pipeline's own, 42): it draws the split the peers get.
Recorded per run: test accuracy, wall seconds, and the overrun of the budget. Rows are
appended to `peers.csv`, and `peers.md` is redrawn from it; the project's run is also
appended to `budget_sweep.csv` beside them, as the budget sweep records it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.budget_sweep import (
    DEFAULT_SEED,
    code_commit,
    cpu_name,
    record,
    recorded,
    run_budget,
    run_seeds,
)
from benchmarks.rows import appended
from tasks.core.contracts import SPLIT_ARRAYS
from tasks.data.preprocess import read_processed
from tasks.evaluation.report.tables import markdown_table

ROOT = Path(__file__).resolve().parents[1]
PEERS = ("autogluon", "flaml")
# A peer still running at this many times its budget is stopped and recorded without an
# accuracy, so that a sweep ends: at 15 minutes FLAML returned after 3.2 times (47
# minutes, on the AVX-512 BF16 EPYC).
STOP_AT_BUDGETS = 4


def peer_data(processed: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every image the run learned from (training, validation, selection) and its test
    images, as rows of 784 pixels."""
    data = read_processed(processed)
    seen = [data.load(*SPLIT_ARRAYS[split]) for split in ("train", "validation", "selection")]
    x_test, y_test = data.load(*SPLIT_ARRAYS["test"])
    x = np.concatenate([x for x, _ in seen]).reshape(-1, 784)
    y = np.concatenate([y for _, y in seen])
    return x, y, x_test.reshape(-1, 784), y_test


def run_autogluon(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, seconds: float) -> np.ndarray:
    from autogluon.tabular import TabularPredictor

    table = pd.DataFrame(x, columns=[f"p{i}" for i in range(x.shape[1])])
    predictor = TabularPredictor(label="label", path=tempfile.mkdtemp(), verbosity=1)
    predictor.fit(table.assign(label=y), time_limit=seconds)
    return predictor.predict(pd.DataFrame(x_test, columns=table.columns)).to_numpy()


def run_flaml(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, seconds: float) -> np.ndarray:
    from flaml import AutoML

    automl = AutoML()
    automl.fit(x, y, task="classification", time_budget=seconds, verbose=0)
    return automl.predict(x_test)


def run_peer(peer: str, processed: Path, minutes: float) -> dict:
    """One peer on the run's split, in this process: its accuracy and wall seconds."""
    started = time.perf_counter()
    x, y, x_test, y_test = peer_data(processed)
    fit = {"autogluon": run_autogluon, "flaml": run_flaml}[peer]
    predicted = fit(x, y, x_test, minutes * 60)
    wall = time.perf_counter() - started
    return {"accuracy": float(np.mean(predicted == y_test)), "wall_seconds": round(wall, 1)}


def in_fresh_process(peer: str, processed: Path, minutes: float, python: str) -> dict:
    command = [python, "-m", "benchmarks.peers", "--one", peer,
               "--processed", str(processed), "--budgets", str(minutes)]  # fmt: skip
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    limit = STOP_AT_BUDGETS * minutes * 60
    # A session of its own, so that stopping it stops the workers it started too.
    with subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    ) as child:  # fmt: skip
        try:
            stdout, stderr = child.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.communicate()
            return {"accuracy": float("nan"), "wall_seconds": round(limit, 1)}
    if child.returncode != 0:
        raise SystemExit(f"{peer} failed:\n{stderr[-3000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def budget_rows(
    minutes: float,
    peers_python: str,
    chosen: tuple[str, ...] = PEERS,
    avx2: bool = False,
    sweep_output: Path | None = None,
    seed: int = DEFAULT_SEED,
) -> list[dict]:
    """The project's run at `minutes`, then each `chosen` peer on its split. The run is the
    budget sweep's own: with `sweep_output` it is also a row of that table, recorded before
    the peers start, so one run of the project serves both."""
    ours = run_budget(minutes, avx2=avx2, extra=[], seed=seed)
    if sweep_output is not None:
        record(ours, sweep_output)
    (processed,) = Path(ours["directory"], "data", "processed").iterdir()
    common = {"budget_minutes": minutes, "cpu": cpu_name(), "setting": ours["setting"],
              "seed": seed, "commit": code_commit(ROOT)}  # fmt: skip
    rows = [
        common | {
            "system": "this project (best single model)",
            "accuracy": ours["best_single_accuracy"],
            "wall_seconds": ours["wall_seconds"],
        },
        common | {
            "system": "this project (ensemble)",
            "accuracy": ours["ensemble_accuracy"],
            "wall_seconds": ours["wall_seconds"],
        },
    ]  # fmt: skip
    for peer in chosen:
        found = in_fresh_process(peer, processed, minutes, peers_python)
        rows.append(common | {"system": peer} | found)
        print(json.dumps(rows[-1]), flush=True)
    for row in rows:
        row["overrun_percent"] = round(100 * (row["wall_seconds"] / (minutes * 60) - 1), 1)
    return rows


def render(rows: pd.DataFrame, output: Path) -> None:
    columns = ["budget_minutes", "system", "accuracy", "wall_seconds", "overrun_percent",
               "cpu", "setting", "seed", "commit"]  # fmt: skip
    # Rows written before `--avx2` and `--seed` ran the project as it is, with its seed.
    rows = rows.assign(
        setting=recorded(rows, "setting").fillna("native"),
        seed=run_seeds(rows).astype(int),
    )
    shown = rows[columns].astype(
        {"budget_minutes": str, "wall_seconds": str, "overrun_percent": str}
    )
    shown["accuracy"] = [
        f"{a:.4f}" if pd.notna(a) else f"none: stopped at {STOP_AT_BUDGETS}x its budget"
        for a in rows.accuracy
    ]
    output.write_text(
        "# Side by side with AutoGluon and FLAML\n\n"
        "Written by `python -m benchmarks.peers` (the peers from `.[peers]`, installed in an "
        "environment of their own): at each "
        "budget the project's command ran first, from empty caches, then each peer on that "
        "run's split (every image the run learned from, as 784 pixel columns), scored on "
        "the same 10,000 test images, one after the other on the machine named in each row; "
        "the run's seed drew its split. "
        f"Overrun: wall time over the budget. A peer still running at {STOP_AT_BUDGETS} "
        'times its budget is stopped there. Setting "AVX2 / float32" is `--avx2`: the '
        "project's CNN on TensorFlow's AVX2 kernels in float32 (the peers train no "
        "TensorFlow model).\n\n" + markdown_table(shown) + "\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", nargs="+", type=float, default=[5.0, 15.0])
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmark")
    parser.add_argument("--peers-python", default=sys.executable)
    # FLAML took 3.2 times its budget at 15 minutes: leaving it out saves most of an hour.
    parser.add_argument("--peers", nargs="+", choices=PEERS, default=list(PEERS))
    parser.add_argument("--avx2", action="store_true", help="the project's run as the "
                        "budget sweep's --avx2: ONEDNN_MAX_CPU_ISA=AVX2, float32")  # fmt: skip
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="the project's run's: "
                        "it draws the split the peers get")  # fmt: skip
    parser.add_argument("--one", choices=PEERS, help=argparse.SUPPRESS)
    parser.add_argument("--processed", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:  # a child: one peer on one split
        print(json.dumps(run_peer(args.one, args.processed, args.budgets[0])))
        return
    table = args.output / "peers.csv"
    for minutes in args.budgets:
        found = budget_rows(
            minutes, args.peers_python, tuple(args.peers), args.avx2, args.output, args.seed
        )
        render(appended(table, found), args.output / "peers.md")


if __name__ == "__main__":
    main()
