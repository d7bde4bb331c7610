"""The core schedule and the time-budget plan on simulated machines of 1 to 64 cores.

    python -m benchmarks.core_schedule [--budget-minutes 15]

Writes docs/benchmark/core_schedule.md; `tests/test_core_schedule.py` rebuilds the table
and checks the file against it, so the two cannot drift apart.

Inputs, and where they come from:
- one-thread costs: the default run's own measurements, in `one_thread_costs.json`
  with their source;
- scaling curves: each model's `ModelSpec.scaling`, Amdahl's law through the two-thread
  speed-up `benchmarks/thread_scaling.py` measured on the same machine
  (docs/benchmark/thread_scaling.md); beyond two cores they are extrapolated.
Everything past two cores is therefore simulated, not measured.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from tasks.budget.measure import planned_variant
from tasks.budget.plan_types import Variant
from tasks.budget.planner import SAFETY
from tasks.budget.plans import reserve_seconds
from tasks.budget.simulate import SimulatedRun, simulate_run
from tasks.core.contracts import Cost
from tasks.evaluation.report.tables import markdown_table
from tasks.run.config import build_config
from tasks.training.models.cnn import WIDE_BUDGET_EPOCHS
from tasks.training.models.registry import (
    drop_order,
    growing_models,
    model_spec,
    own_lane_model,
)

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "docs/benchmark/core_schedule.md"
CORES = (1, 2, 4, 8, 16, 32, 64)
# Measured on one thread in a default run, with where they come from.
MEASURED = json.loads((Path(__file__).with_name("one_thread_costs.json")).read_text())


def one_thread_variants() -> dict[str, list[Variant]]:
    """The default profile's variants of every model, with the one-thread costs above."""
    params = build_config("full").params
    variants = {}
    for name, costs in MEASURED["costs"].items():
        spec, section = model_spec(name), getattr(params, name)
        field = spec.budgeting.step_field
        ways = spec.budgeting.variants(section, frozenset())
        variants[name] = [
            planned_variant(name, w, Cost(**costs[w.label]), section, field) for w in ways
        ]
    return variants


def simulated_runs(budget_minutes: float, cores: tuple[int, ...] = CORES) -> list[SimulatedRun]:
    variants = one_thread_variants()
    scalings = {name: model_spec(name).scaling for name in variants}
    timing = (budget_minutes * 60, MEASURED["elapsed_seconds"], reserve_seconds(len(variants)))
    roles = (drop_order(), own_lane_model(), tuple(growing_models(variants)))
    return [simulate_run(count, variants, scalings, *timing, *roles) for count in cores]


def core_table(budget_minutes: float) -> pd.DataFrame:
    rows = []
    for run in simulated_runs(budget_minutes):
        plan = run.plan
        own = next((model for model in plan.models if model.model == own_lane_model()), None)
        steps = ", ".join(f"{model.model} {model.steps}" for model in plan.models if model.steps)
        rows.append({
            "cores": run.schedule.cores,
            "lanes": run.schedule.lanes,
            "threads": " ".join(str(t) for t in run.schedule.threads.values()),
            "models trained": len(plan.models),
            "left out": ", ".join(plan.dropped) or "-",
            "steps planned": steps,
            "own lane's variant": own.variant.split(" ")[0] if own else "-",
            "own lane's steps trained": "-" if own is None else run.own_lane_steps,
            "training (s)": round(run.training_seconds),
            "time to train (s)": round(plan.window_seconds / SAFETY),
            "cores held": f"{run.held_share:.0%}",
            "work done": f"{run.work_share:.0%}",
        })  # fmt: skip
    return pd.DataFrame(rows)


def render(budget_minutes: float) -> str:
    order = ", ".join(MEASURED["costs"])
    return (
        f"# The core schedule on simulated machines ({budget_minutes:g}-minute budget)\n\n"
        "Produced by `python -m benchmarks.core_schedule`; `tests/test_core_schedule.py` "
        "checks this file against the code. **Simulated**: the one-thread costs were "
        "measured on a 2-core AMD EPYC (AVX2), the speed-ups beyond two threads are "
        "Amdahl's law through the two-thread speed-ups measured there "
        "(`thread_scaling.md`). The planner and the core schedule are the run's own.\n\n"
        f"`threads` lists each model's threads in training order ({order}). "
        "`training` is planning to the last model trained, within the `time to train` "
        "the deadline leaves (the plan fills 90 % of it, a margin for its estimates). "
        "`cores held` is the share of the cores' seconds a training model holds; "
        "`work done` counts those seconds at one thread's worth of work, so it falls "
        "below `cores held` by what the threads lose to scaling.\n\n"
        f"{markdown_table(core_table(budget_minutes))}\n\n"
        "Once no model waits to start, each model done hands its cores to the models "
        "still training that take more threads mid-fit: the CNN (up to every core), then "
        "XGBoost (between rounds, up to the threads worth using). Where cores are not "
        "held, no model training can use them: the SVM, the forest and logistic "
        "regression keep the threads they started with, and XGBoost gains little past "
        "its few useful threads and stops at the rounds that bring it near its best "
        "(140). The CNN, with the cores they leave, trains the epochs that fit, up to "
        f"the most a plan gives the wide network ({WIDE_BUDGET_EPOCHS}).\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-minutes", type=float, default=15.0)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    args.output.write_text(render(args.budget_minutes))
    print(args.output.read_text())


if __name__ == "__main__":
    main()
