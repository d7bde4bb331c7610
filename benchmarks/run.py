"""Benchmark: the pipeline under Prefect, and the same stages as plain function calls.

    python -m benchmarks.run [--profile full|quick] [--output docs/benchmark]

Both sides start from empty caches in a fresh directory, train the same models with the
same seed, as many at a time as the run's core schedule has lanes (two on 2 cores), in
worker processes (so each model's CPU time is its own process's), and are timed in the
same invocation. Writes `benchmark.md`, `stages.csv` and `models.csv` to `--output`:
per-stage wall time on both sides, per model fit and predict seconds, CPU-seconds and
test accuracy, how busy the training stage kept the cores, and what Prefect's
orchestration added.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Collection, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

# Before Prefect and TensorFlow read them, as `python -m flows.full_pipeline` does.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from benchmarks.budget_sweep import ROOT, code_commit, cpu_name
from flows.graph import run_stages
from tasks.budget.schedule import CoreSchedule
from tasks.core.contracts import ENSEMBLE_NAME
from tasks.core.cpus import usable_cores
from tasks.evaluation.report.tables import markdown_table
from tasks.run.config import PipelineConfig, build_config

STAGES = ("ingest", "validate", "preprocess", "train and evaluate", "ensemble", "report")
MODEL_COLUMNS = ("test_accuracy", "fit_seconds", "fit_cpu_seconds", "predict_seconds",
                 "predict_cpu_seconds")  # fmt: skip
# The start of each task's name (and its runs'), and the stage it is timed in. Measuring
# for the plan and tuning happen in the training pool, as its plain side times them.
TASK_STAGES = {
    "ingest-fashion-mnist": "ingest", "validate-data": "validate", "preprocess": "preprocess",
    "measure-": "train and evaluate", "tune-": "train and evaluate",
    "train-": "train and evaluate", "evaluate-": "train and evaluate",
    "soft-voting-ensemble": "ensemble", "compare-with-previous-run": "report",
    "compare-models": "report", "record-run": "report",
}  # fmt: skip


def stage_of(task_name: str) -> str:
    """The benchmark's stage a task or task run (`train-cnn`) is timed in."""
    stages = {stage for prefix, stage in TASK_STAGES.items() if task_name.startswith(prefix)}
    if len(stages) != 1:
        raise ValueError(f"task {task_name!r} is in {len(stages)} of the benchmark's stages")
    return stages.pop()


def _call_task_function(module: str, name: str, parameters: dict) -> Any:
    """A stage's function without Prefect, in a worker process (a Task object does not
    pickle by reference, its module and name do)."""
    return getattr(importlib.import_module(module), name).fn(**parameters)


class PlainPool:
    """The graph's pool as a pool of spawned worker processes, one model per process."""

    def __init__(self, executor: ProcessPoolExecutor, cores: CoreSchedule):
        self.executor, self.cores = executor, cores

    def submit(
        self,
        stage: Any,
        parameters: dict,
        wait_for: Iterable[Future] = (),
        workers: Collection[str] = (),
    ) -> Future:
        # The graph passes what a submission depends on already computed; one machine.
        function = stage.fn
        return self.executor.submit(
            _call_task_function, function.__module__, function.__name__, parameters
        )

    def as_completed(self, futures: Iterable[Future]) -> Iterator[Future]:
        return as_completed(list(futures))


class PlainStages:
    """The graph's runner as plain calls of the same stage functions, timed per stage."""

    def __init__(self) -> None:
        self.logger = logging.getLogger("benchmark")
        self.times: dict[str, float] = {}

    def call(self, stage: Any, parameters: dict) -> Any:
        with timed(self.times, stage_of(stage.name)):
            return stage.fn(**parameters)

    @contextlib.contextmanager
    def pool(self, config: PipelineConfig) -> Iterator[PlainPool]:
        spawn = multiprocessing.get_context("spawn")
        with (
            timed(self.times, "train and evaluate"),
            ProcessPoolExecutor(config.lanes, mp_context=spawn) as executor,
        ):
            yield PlainPool(executor, config.core_schedule())


@contextlib.contextmanager
def timed(times: dict[str, float], stage: str) -> Iterator[None]:
    """Adds the block's wall time to the stage's: the report's stage is three calls."""
    started = time.perf_counter()
    yield
    times[stage] = times.get(stage, 0.0) + time.perf_counter() - started


def run_plain(config: PipelineConfig) -> dict[str, float]:
    """The flow's stage graph as plain calls; returns each stage's wall time."""
    stages = PlainStages()
    run_stages(config, stages, "plain")
    return stages.times


def run_prefect(config: PipelineConfig) -> tuple[dict[str, float], float]:
    """The flow, and each stage's wall time from its task runs' start and end times.

    Returns the stage times and the flow run's own wall time.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.full_pipeline import full_pipeline

    state = full_pipeline(config, return_state=True)
    state.result()  # raises if the run failed
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), limit=200
        )
    spans: dict[str, list] = {}
    for run in task_runs:
        spans.setdefault(stage_of(run.name), []).append((run.start_time, run.end_time))
    times = {
        stage: (max(e for _, e in spans[stage]) - min(s for s, _ in spans[stage])).total_seconds()
        for stage in spans
    }
    return times, (flow_run.end_time - flow_run.start_time).total_seconds()


def model_table(report_dir: Path, side: str) -> pd.DataFrame:
    """Per model, from the run's metrics.json; the ensemble's times are its members'."""
    models = json.loads((report_dir / "metrics.json").read_text())["models"]
    rows = [
        {"side": side, "model": name} | {column: record[column] for column in MODEL_COLUMNS}
        for name, record in models.items()
        if name != ENSEMBLE_NAME
    ]
    return pd.DataFrame(rows).sort_values("test_accuracy", ascending=False, ignore_index=True)


def core_use(models: pd.DataFrame, training_wall: float, cores: int) -> float:
    """The models' CPU-seconds over what the cores could give during the training stage."""
    cpu = models.fit_cpu_seconds.sum() + models.predict_cpu_seconds.sum()
    return cpu / (cores * training_wall)


def render(
    profile: str, machine: str, cores: int, lanes: int, stages: pd.DataFrame,
    models: pd.DataFrame, use: dict[str, float], totals: dict[str, float],
) -> str:  # fmt: skip
    """The page; `machine` names the CPU and the code measured."""
    overhead = totals["prefect flow run"] / totals["plain"] - 1
    sections = [
        f"# Benchmark: `{profile}` profile, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"{machine}. Both sides train the same models with the same seed from empty "
        f"caches, {lanes} at a time in worker processes. Times in seconds.",
        "## Stages (wall time)",
        markdown_table(stages, ".1f"),
        f"Prefect's flow run took {totals['prefect flow run']:.1f} s against "
        f"{totals['plain']:.1f} s for the plain calls: an overhead of {overhead:+.1%}. The "
        f"whole Prefect command, temporary server included, took "
        f"{totals['prefect command']:.1f} s.",
        "## Models",
        markdown_table(models, ".4g"),
        "## How busy the training stage kept the cores",
        f"The models' fit and test-prediction CPU-seconds over {cores} cores times the stage's "
        "wall time (validation predictions and loading are not counted):",
        "\n".join(f"- {side}: {value:.1%}" for side, value in use.items()),
    ]
    return "\n\n".join(sections) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=["quick", "full"], default="full")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmark"))
    parser.add_argument("--data-dir", type=Path, help="the four IDX .gz files (default: found)")
    args = parser.parse_args(argv)
    cores = usable_cores()
    workdir = Path(tempfile.mkdtemp(prefix="fashion-mnist-benchmark-"))

    def config(side: str) -> PipelineConfig:
        return build_config(
            args.profile, cache_dir=workdir / side / "data",
            data={"dir": args.data_dir} if args.data_dir else None,
            output_dir=workdir / side / "reports", task_runner="processes",
        )  # fmt: skip

    started = time.perf_counter()
    prefect_times, flow_run_seconds = run_prefect(config("prefect"))
    totals = {"prefect command": time.perf_counter() - started}
    started = time.perf_counter()
    plain_times = run_plain(config("plain"))
    totals |= {"prefect flow run": flow_run_seconds, "plain": time.perf_counter() - started}

    stages = pd.DataFrame(
        {"stage": STAGES, "prefect": [prefect_times[s] for s in STAGES],
         "plain": [plain_times[s] for s in STAGES]}
    )  # fmt: skip
    stages["prefect_minus_plain"] = stages.prefect - stages.plain
    models = pd.concat(
        [model_table((workdir / side / "reports" / "latest").resolve(), side)
         for side in ("prefect", "plain")], ignore_index=True,
    )  # fmt: skip
    times = {"prefect": prefect_times, "plain": plain_times}
    use = {
        side: core_use(models[models.side == side], times[side]["train and evaluate"], cores)
        for side in times
    }
    args.output.mkdir(parents=True, exist_ok=True)
    stages.to_csv(args.output / "stages.csv", index=False, float_format="%.3f")
    models.to_csv(args.output / "models.csv", index=False, float_format="%.4f")
    machine = f"{cpu_name()}, code {code_commit(ROOT)}"
    lanes = config("plain").lanes
    page = render(args.profile, machine, cores, lanes, stages, models, use, totals)
    (args.output / "benchmark.md").write_text(page)
    print(page)
    print(f"written to {args.output}; runs kept in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
