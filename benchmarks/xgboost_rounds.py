"""What each boosting round buys: XGBoost's test accuracy after 10, 20, ... rounds of one
fit, against the seconds they took, on a run's processed split. The source of the rounds
a time budget plans for it (`xgboost_model.ROUNDS_NEEDED`): the first after which its
validation accuracy is within WITHIN_POINTS of the best it reaches (the planner's
objective for the models beside the CNN, README "Time budget").

    python -m benchmarks.xgboost_rounds --processed data/processed/<key> [--threads 1]

The fit is the run's (the default parameters, the run's default seed), without early stopping,
for `--rounds`; each row scores the first rounds of it (`iteration_range`). One thread by
default: the lane XGBoost trains on in a 2-core run. Writes `xgboost_rounds.csv` and
`xgboost_rounds.md` under `--output`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.budget_sweep import DEFAULT_SEED, code_commit, cpu_name
from tasks.data.preprocess import read_processed
from tasks.evaluation.report.tables import markdown_table
from tasks.training.models.base import TrainingContext
from tasks.training.models.xgboost_model import RoundTimes, XGBoostParams, build_xgboost

REPO = Path(__file__).resolve().parents[1]
WITHIN_POINTS = 0.5


def accuracy_by_rounds(processed: Path, rounds: int, threads: int, every: int) -> pd.DataFrame:
    """Validation and test accuracy after every `every` rounds of one `rounds`-round fit,
    with the seconds since the fit began."""
    x_train, y_train, x_val, y_val, x_test, y_test = read_processed(processed).load(
        "x_train", "y_train", "x_val", "y_val", "x_test", "y_test"
    )
    params = XGBoostParams(n_estimators=rounds, early_stopping_rounds=rounds)
    classifier = build_xgboost(params, TrainingContext(DEFAULT_SEED, threads))
    times = RoundTimes()
    classifier.model.set_params(callbacks=[times])
    started = time.perf_counter()
    classifier.fit(x_train, y_train, x_val, y_val)

    def accuracy(x: np.ndarray, y: np.ndarray, done: int) -> float:
        return float(np.mean(classifier.model.predict(x, iteration_range=(0, done)) == y))

    rows = [
        {
            "rounds": done,
            "seconds": round(times.ends[done - 1] - started, 1),
            "validation_accuracy": accuracy(x_val, y_val, done),
            "test_accuracy": accuracy(x_test, y_test, done),
        }
        for done in range(every, rounds + 1, every)
    ]
    table = pd.DataFrame(rows)
    best = table.test_accuracy.max()
    return table.assign(points_below_best=((best - table.test_accuracy) * 100).round(2))


def rounds_within(table: pd.DataFrame, points: float) -> int:
    """The first rounds whose validation accuracy is within `points` of the best."""
    close = table.validation_accuracy >= table.validation_accuracy.max() - points / 100
    return int(table.rounds[close].iloc[0])


def write_tables(table: pd.DataFrame, where: str, output: Path) -> int:
    """`xgboost_rounds.csv` and `.md` under `output`; returns the rounds a budget plans for."""
    needed = rounds_within(table, WITHIN_POINTS)
    table.to_csv(output / "xgboost_rounds.csv", index=False)
    (output / "xgboost_rounds.md").write_text(
        "# XGBoost: what each boosting round buys\n\n"
        f"Written by `python -m benchmarks.xgboost_rounds` ({where}): one fit of the "
        f"default parameters without early stopping, scored after its first rounds. Test "
        "accuracy on 10,000 images is within about ±0.6 points (95 %) of the truth. "
        f"The validation accuracy is within {WITHIN_POINTS} points of its best from round "
        f"{needed}: the rounds a time budget plans for.\n\n" + f"{markdown_table(table)}\n"
    )
    return needed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processed", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmark")
    args = parser.parse_args(argv)
    table = accuracy_by_rounds(args.processed, args.rounds, args.threads, args.every)
    where = f"{cpu_name()}, {args.threads} thread(s), commit {code_commit(REPO)}"
    needed = write_tables(table, where, args.output)
    print(table.to_string(index=False))
    print(f"within {WITHIN_POINTS} points of the best validation accuracy from round {needed}")


if __name__ == "__main__":
    main()
