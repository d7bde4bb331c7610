"""Time to a test accuracy: the shortest of several time budgets at which the CNN alone
reaches it, on this machine.

    python -m benchmarks.time_to_accuracy [--target 0.94] [--budgets 4,6,8,10,12,15]
        [--avx2] [--seed 42] [--output docs/benchmark]

Each budget runs `python -m flows.full_pipeline --models cnn --time-budget B` as a user
would, from empty caches (`budget_sweep.run_budget`: preparing the data and measuring count
against the budget), shortest first, and the search stops at the first whose CNN reaches
`--target` on the test set. The recipe is the project's own: the network and epochs the
plan picks for the budget, with every usable core. A run below the target at one budget
and above it at a shorter one is possible: a test accuracy on 10,000 images is within
about ±0.5 points of the truth. Appends rows to `time_to_accuracy.csv` and redraws
`time_to_accuracy.md` in `--output`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pandas as pd

from benchmarks.budget_sweep import DEFAULT_SEED, cpu_instructions, minutes, run_budget
from benchmarks.rows import appended
from tasks.evaluation.report.tables import markdown_table
from tasks.training.models.registry import own_lane_model

ROOT = Path(__file__).resolve().parents[1]
GROUP = ["cpu", "setting", "seed", "target"]


def budgets_until_reached(
    budgets: Iterable[float], target: float, measure: Callable[[float], dict]
) -> Iterator[dict]:
    """The rows `measure` gives for each budget, shortest first, up to and including the
    first whose test accuracy reaches `target`."""
    for budget in sorted(budgets):
        row = measure(budget) | {"target": target}
        row["reached"] = bool(row["test_accuracy"] >= target)
        yield row
        if row["reached"]:
            return


def measure_cnn_alone(budget: float, avx2: bool, seed: int) -> dict:
    """One run of the command with the CNN alone at `budget` minutes, and the fit's seconds."""
    model = own_lane_model()
    run = run_budget(budget, avx2, ["--models", model], seed)
    metrics = json.loads((Path(run["directory"]) / "reports/latest/metrics.json").read_text())
    fitted = metrics["models"][model]
    return {
        "budget_minutes": budget,
        "setting": run["setting"],
        "exit_status": run["exit_status"],
        "wall_seconds": run["wall_seconds"],
        "fit_seconds": round(fitted["fit_seconds"], 1),
        "plan": run[model],
        "test_accuracy": fitted["test_accuracy"],
        "validation_accuracy": round(fitted["validation_accuracy"], 4),
        "seed": seed,
        "peak_rss_gb": run["peak_rss_gb"],
        "cpu": run["cpu"],
        "commit": run["commit"],
    }


def time_to_target(rows: pd.DataFrame) -> pd.DataFrame:
    """Per CPU, setting, seed and target: the shortest budget that reached the target, or
    the longest tried when none did."""
    summary = []
    for key, group in rows.sort_values("budget_minutes").groupby(GROUP, sort=False):
        reached = group[group.reached]
        row = reached.iloc[0] if len(reached) else group.iloc[-1]
        summary.append(dict(zip(GROUP, key, strict=True)) | row.drop(GROUP).to_dict())
    return pd.DataFrame(summary)


def render(rows: pd.DataFrame, output: Path) -> None:
    """The summary, one line per CPU, setting, seed and target, above every run."""
    summary = time_to_target(rows)
    lines = [
        f"- {cpu_instructions(s.cpu)}, {s.setting}, seed {s.seed:g}: "
        + (
            f"**{s.test_accuracy:.4f} in {minutes(s.wall_seconds)}**, budget "
            f"{s.budget_minutes:g} minutes ({s.plan}; {s.commit})"
            if s.reached
            else f"{s.target:.2f} not reached within {s.budget_minutes:g} minutes "
            f"({s.test_accuracy:.4f}; {s.commit})"
        )
        for s in summary.itertuples()
    ]
    shown = pd.DataFrame({
        "target": rows.target.map("{:.2f}".format),
        "budget (min)": rows.budget_minutes.map("{:g}".format),
        "CPU": rows.cpu,
        "setting": rows.setting,
        "wall time": rows.wall_seconds.map(minutes),
        "fit (s)": rows.fit_seconds.map("{:.0f}".format),
        own_lane_model(): rows.plan,
        "validation accuracy": rows.validation_accuracy.map("{:.4f}".format),
        "test accuracy": rows.test_accuracy.map("{:.4f}".format),
        "seed": rows.seed.map("{:g}".format),
        "peak memory (GB)": rows.peak_rss_gb.map(lambda gb: "—" if pd.isna(gb) else f"{gb:.2f}"),
        "commit": rows.commit,
    })  # fmt: skip
    order = rows.sort_values([*GROUP, "budget_minutes"], kind="stable").index
    (output / "time_to_accuracy.md").write_text(
        "# Time to a test accuracy, the CNN alone\n\n"
        "`python -m benchmarks.time_to_accuracy`: `python -m flows.full_pipeline --models "
        f"{own_lane_model()} --time-budget B` from empty caches at each budget, shortest "
        "first, until the test accuracy reaches the target. Wall time is the whole command's, "
        "data preparation included; fit is the network's training alone. A test accuracy is "
        "within about ±0.5 points of the truth.\n\n"
        "Shortest budget reaching the target:\n\n" + "\n".join(lines) + "\n\n"
        + markdown_table(shown.loc[order]) + "\n"
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.94)
    parser.add_argument("--budgets", default="4,6,8,10,12,15")
    parser.add_argument("--avx2", action="store_true", help="ONEDNN_MAX_CPU_ISA=AVX2, float32")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmark")
    parser.add_argument("--render", action="store_true", help="only redraw from the CSV")
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    table = args.output / "time_to_accuracy.csv"
    if not args.render:
        budgets = [float(b) for b in args.budgets.split(",")]
        runs = budgets_until_reached(
            budgets, args.target, lambda m: measure_cnn_alone(m, args.avx2, args.seed)
        )
        for row in runs:  # each row is kept as soon as it is measured
            print(json.dumps(row), flush=True)
            appended(table, [row])
    render(pd.read_csv(table), args.output)
    print(f"wrote {args.output / 'time_to_accuracy.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
