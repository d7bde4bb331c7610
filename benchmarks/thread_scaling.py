"""How each model's work speeds up with threads on this machine: the source of the
scaling curves the core schedule plans with (`ModelSpec.scaling`).

    python -m benchmarks.thread_scaling --processed data/processed/<key> [--models cnn xgboost]

Each model's cost is measured as a run measures it (`tasks.training.models.measuring`),
on the run's processed split, once per thread count, each in a fresh process (TensorFlow
sizes its pools once per process). From one thread to two, the speed-up `s` gives the
share of the work that threads split, by Amdahl's law: `p = 2 (1 - 1/s)`. Curves for more
cores than this machine has are that law, extrapolated: the table says so.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd

from benchmarks.budget_sweep import code_commit, cpu_name
from tasks.core.contracts import Cost
from tasks.data.preprocess import read_processed
from tasks.evaluation.report.tables import markdown_table
from tasks.run.config import DEFAULT_MODELS

REPO = Path(__file__).resolve().parents[1]


def measured_seconds(model: str, processed: Path, threads: int) -> float:
    """The model's measured cost at the most steps a plan may give it (`max_steps`: the
    wide network's 60 epochs, XGBoost's 140 rounds), on `threads` threads."""
    from tasks.budget.measure import measure_variants
    from tasks.run.config import build_config
    from tasks.training.models.base import TrainingContext

    data = read_processed(processed)
    params = build_config("full").params
    measured, failures = measure_variants(
        [model], params, {model: frozenset()}, data, TrainingContext(42, threads)
    )
    if failures:
        raise SystemExit(f"{model}: {failures[0].error}")
    variant = measured[model][0]
    cost: Cost = variant.cost
    return cost.seconds(variant.max_steps if variant.iterative else None)


def in_fresh_process(model: str, processed: Path, threads: int) -> float:
    command = [sys.executable, "-m", "benchmarks.thread_scaling", "--processed", str(processed)]
    command += ["--one", model, "--threads", str(threads)]
    found = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
    return float(found.stdout.strip().splitlines()[-1])


def parallel_share(one: float, two: float) -> float:
    """Amdahl's parallel share from the one- and two-thread times, within [0, 1]."""
    return min(1.0, max(0.0, 2 * (1 - two / one)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processed", type=Path, required=True)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=REPO / "docs/benchmark/thread_scaling.md")
    args = parser.parse_args(argv)
    if args.one:  # a child: one model, one thread count
        print(measured_seconds(args.one, args.processed, args.threads))
        return
    rows = []
    for model in args.models:
        one, two = (in_fresh_process(model, args.processed, t) for t in (1, 2))
        share = parallel_share(one, two)
        rows.append([model, f"{one:.1f}", f"{two:.1f}", f"{one / two:.2f}", f"{share:.2f}"])
        print(*rows[-1], flush=True)
    header = ["model", "1 thread (s)", "2 threads (s)", "speed-up", "parallel share p"]
    table = pd.DataFrame(rows, columns=header)
    args.output.write_text(
        "# Thread scaling, measured\n\n"
        f"Measured on {cpu_name()}, code {code_commit(REPO)}, with "
        "`python -m benchmarks.thread_scaling`. Each figure is the model's measured cost "
        "at the most steps a plan may give it (the run's own measurement: a fit on a "
        "sample, scaled to the data), in a fresh process per thread count.\n\n"
        f"{markdown_table(table)}\n\n"
        "`p` is Amdahl's parallel share from the two-thread speed-up `s`: p = 2 (1 - 1/s). "
        "Beyond two threads the curves are that law, extrapolated, not measured.\n"
    )


if __name__ == "__main__":
    main()
