"""Benchmark: the pipeline under Prefect, and the same stages as plain function calls.

    python benchmarks/run.py [--profile full|quick] [--output docs/benchmark]

Both sides start from empty caches in a fresh directory, train the same models with the
same seed, two at a time in worker processes (so each model's CPU time is its own
process's), and are timed in the same invocation. Writes `benchmark.md` and
`benchmark.csv` to `--output`: per-stage wall time on both sides, per model fit and
predict seconds, CPU-seconds and test accuracy, how busy the training stage kept the
cores, and what Prefect's orchestration added.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

# Before Prefect and TensorFlow read them, as `python -m flows.full_pipeline` does.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from tasks.config import PipelineConfig, build_config
from tasks.ensemble import ENSEMBLE_NAME, build_ensemble
from tasks.evaluate import ModelEvaluation, evaluate_model
from tasks.ingest import ingest_dataset
from tasks.preprocess import ProcessedDataset, preprocess_dataset
from tasks.report import markdown_table, run_context, write_report
from tasks.train import TrainingContext, train_model
from tasks.validate import validate_raw_dataset

STAGES = ("ingest", "validate", "preprocess", "train and evaluate", "ensemble", "report")
# The start of each Prefect task run's name, and the stage it belongs to.
TASK_STAGES = {
    "ingest-fashion-mnist": "ingest", "validate-schema": "validate", "preprocess": "preprocess",
    "train": "train and evaluate", "evaluate": "train and evaluate",
    "soft-voting-ensemble": "ensemble", "compare-models": "report",
}  # fmt: skip
MODEL_COLUMNS = ("test_accuracy", "fit_seconds", "fit_cpu_seconds", "predict_seconds",
                 "predict_cpu_seconds")  # fmt: skip


@contextlib.contextmanager
def timed(times: dict[str, float], stage: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    times[stage] = time.perf_counter() - started


def _train_and_evaluate(
    name: str, config: PipelineConfig, data: ProcessedDataset
) -> ModelEvaluation:
    context = TrainingContext(config.seed, config.model_threads)
    trained = train_model(name, config.params, data, config.cache_dir, context)
    return evaluate_model(trained, data, config.cache_dir, config.model_threads)


def run_plain(config: PipelineConfig) -> dict[str, float]:
    """The flow's stages as plain calls, models in a pool of worker processes."""
    times: dict[str, float] = {}
    cache = config.cache_dir
    with timed(times, "ingest"):
        raw = ingest_dataset(config.data_dir, cache)
    with timed(times, "validate"):
        validation = validate_raw_dataset(raw, cache)
    with timed(times, "preprocess"):
        data = preprocess_dataset(
            raw, cache, config.validation_size, config.seed, config.train_subset_size,
            config.test_subset_size,
        )  # fmt: skip
    with timed(times, "train and evaluate"):
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(config.parallel_models, mp_context=spawn) as pool:
            futures = [
                pool.submit(_train_and_evaluate, name, config, data) for name in config.models
            ]
            evaluations = [future.result() for future in as_completed(futures)]
    with timed(times, "ensemble"):
        evaluations.append(build_ensemble(evaluations, data, cache, config.ensemble_size))
    with timed(times, "report"):
        y_test, test_index, x_test = data.load("y_test", "test_index", "x_test")
        context = run_context(config, raw, validation, data)
        write_report(
            evaluations, y_test, test_index, config.output_dir, "plain", context, config.seed,
            x_test,
        )  # fmt: skip
    return times


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
        (stage,) = {stage for name, stage in TASK_STAGES.items() if run.name.startswith(name)}
        spans.setdefault(stage, []).append((run.start_time, run.end_time))
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
    profile: str, cores: int, stages: pd.DataFrame, models: pd.DataFrame,
    use: dict[str, float], totals: dict[str, float],
) -> str:  # fmt: skip
    overhead = totals["prefect flow run"] / totals["plain"] - 1
    sections = [
        f"# Benchmark: `{profile}` profile, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"{cores} cores. Both sides train the same models with the same seed from empty "
        "caches, two at a time in worker processes. Times in seconds.",
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
    cores = len(os.sched_getaffinity(0))
    workdir = Path(tempfile.mkdtemp(prefix="fashion-mnist-benchmark-"))

    def config(side: str) -> PipelineConfig:
        return build_config(
            args.profile, data_dir=args.data_dir, cache_dir=workdir / side / "data",
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
    page = render(args.profile, cores, stages, models, use, totals)
    (args.output / "benchmark.md").write_text(page)
    print(page)
    print(f"written to {args.output}; runs kept in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
