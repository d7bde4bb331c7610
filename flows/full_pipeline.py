"""The full pipeline: ingest -> validate -> preprocess -> train in parallel -> compare.

python -m flows.full_pipeline [--profile quick|full] [--models cnn,xgboost] ...
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.futures import PrefectFuture, as_completed
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner
from pydantic import ValidationError

from flows.graph import run_stages
from tasks.config import MODEL_NAMES, PipelineConfig, build_config
from tasks.errors import PipelineInputError
from tasks.report import console_table


def new_run_id(profile: str) -> str:
    """Sortable by time, unique per flow run, and readable in a directory listing."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{profile}-{flow_run.get_id()[:8]}"


def training_runner(config: PipelineConfig) -> TaskRunner:
    """The pool that trains `parallel_models` models at once: threads, processes or Dask."""
    if config.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=config.parallel_models)
    if config.task_runner == "processes":
        return ProcessPoolTaskRunner(max_workers=config.parallel_models)
    from prefect_dask import DaskTaskRunner

    if config.dask_address:
        return DaskTaskRunner(address=config.dask_address)
    # One single-threaded worker process per model slot, reachable on loopback only.
    cluster = {"n_workers": config.parallel_models, "threads_per_worker": 1, "processes": True}
    return DaskTaskRunner(cluster_kwargs=cluster | {"host": "127.0.0.1", "dashboard_address": None})


def dask_threads_per_model(worker_cores: dict[str, int], worker_slots: dict[str, int]) -> int:
    """Threads each model may use on a Dask cluster: the cores of the smallest share, where
    a worker runs as many models at once as it has task slots."""
    return max(1, min(worker_cores[w] // max(1, worker_slots[w]) for w in worker_slots))


def threads_per_model(config: PipelineConfig, runner: TaskRunner) -> int:
    """The configured threads, or the cores of the machines the models train on, shared
    evenly: on a remote Dask cluster those are the workers', not this host's."""
    if config.threads_per_model or not config.dask_address:
        return config.model_threads
    client = runner.client
    return dask_threads_per_model(client.run(os.cpu_count), client.nthreads())


class PrefectPool:
    """The graph's pool on a Prefect task runner: each submission is a task run."""

    def __init__(self, runner: TaskRunner, threads: int):
        self.runner, self.threads_per_model = runner, threads

    def submit(
        self, stage: Any, parameters: dict, wait_for: Iterable[PrefectFuture] = ()
    ) -> PrefectFuture:
        return self.runner.submit(stage, parameters, wait_for=list(wait_for) or None)

    def as_completed(self, futures: Iterable[PrefectFuture]) -> Iterator[PrefectFuture]:
        return as_completed(list(futures))


class PrefectStages:
    """The graph's runner inside a flow run: each stage is a task run of this flow run."""

    def __init__(self) -> None:
        self.logger = get_run_logger()

    def call(self, stage: Any, parameters: dict) -> Any:
        return stage(**parameters)

    @contextlib.contextmanager
    def pool(self, config: PipelineConfig) -> Iterator[PrefectPool]:
        with training_runner(config) as runner:
            yield PrefectPool(runner, threads_per_model(config, runner))


@flow(name="fashion-mnist-pipeline")
def full_pipeline(config: PipelineConfig = PipelineConfig()) -> Path:  # noqa: B008
    """Train and compare every configured model; return the run's report directory."""
    return run_stages(config, PrefectStages(), new_run_id(config.profile))


class _OneLineInputErrors(logging.Filter):
    """Input errors are the user's to fix: log their message, not a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], PipelineInputError):
            record.exc_info = None
        return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m flows.full_pipeline",
        description="Train and compare Fashion-MNIST classifiers; write a ranked report.",
    )
    parser.add_argument(
        "--profile",
        choices=["quick", "full"],
        default="full",
        help="full: all data and models (default); quick: a one-minute smoke run",
    )
    parser.add_argument(
        "--models",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        help=f"comma-separated subset of: {', '.join(MODEL_NAMES)}",
    )
    parser.add_argument(
        "--data-dir", type=Path, help="directory with the four IDX .gz files (used alone)"
    )
    parser.add_argument(
        "--output-dir", type=Path, help="where run reports are written (default: reports/)"
    )
    parser.add_argument("--seed", type=int, help="seed for the split and every model")
    parser.add_argument(
        "--refresh", action="store_true", help="rebuild every cached step instead of reusing it"
    )
    parser.add_argument(
        "--task-runner",
        choices=["threads", "processes", "dask"],
        help="how models train in parallel (default: threads)",
    )
    parser.add_argument(
        "--dask-address", help="scheduler of an existing Dask cluster, e.g. tcp://10.0.0.5:8786"
    )
    parser.add_argument(
        "--profile-file",
        type=Path,
        help="JSON of configuration values over the profile, e.g. one written by --save-profile",
    )
    tuning = parser.add_argument_group("tuning")
    tuning.add_argument(
        "--tune",
        action="store_true",
        help="search each model's parameters on the validation split before training",
    )
    tuning.add_argument(
        "--tune-budget",
        type=float,
        metavar="MINUTES",
        help="trial time per model (default: 5); trials run parallel_models at a time",
    )
    tuning.add_argument(
        "--save-profile",
        type=Path,
        metavar="FILE",
        help="also write the best parameters to FILE, for later runs' --profile-file",
    )
    return parser.parse_args(argv)


def _describe(error: ValidationError) -> str:
    issues = []
    for issue in error.errors():
        where = ".".join(map(str, issue["loc"])) or "config"
        issues.append(f"{where}: {issue['msg'].removeprefix('Value error, ')}")
    return "; ".join(issues)


def tune_options(args: argparse.Namespace) -> dict | None:
    """The `tune` section the tuning flags give; the budget alone does not switch tuning on."""
    given = {
        "enabled": args.tune or None,
        "budget_minutes": args.tune_budget,
        "save_profile": args.save_profile,
    }
    return {key: value for key, value in given.items() if value is not None} or None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = build_config(
            args.profile,
            models=args.models,
            data_dir=args.data_dir,
            output_dir=args.output_dir,
            seed=args.seed,
            refresh=args.refresh or None,
            task_runner=args.task_runner,
            dask_address=args.dask_address,
            profile_file=args.profile_file,
            tune=tune_options(args),
        )
    except ValidationError as error:
        print(f"error: {_describe(error)}", file=sys.stderr)
        return 2
    # Level 3 drops TensorFlow's "failed call to cuInit" line, which reads as a failure
    # on a machine without a GPU; and keep the temporary Prefect server from trying to
    # reach its telemetry host (it logs an ERROR on a closed network).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    one_line = _OneLineInputErrors()
    for name in ("prefect.task_runs", "prefect.flow_runs"):
        logging.getLogger(name).addFilter(one_line)
    try:
        report_dir = full_pipeline(config)
    except PipelineInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(console_table(report_dir))
    print(f"report: {report_dir / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
