"""The full pipeline: ingest -> validate -> preprocess -> train in parallel -> compare.

python -m flows.full_pipeline [--profile quick|full] [--models cnn,xgboost] ...
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from prefect import flow
from prefect.futures import PrefectFuture, as_completed
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner
from pydantic import ValidationError

from tasks.config import MODEL_NAMES, PipelineConfig, build_config
from tasks.contracts import ProcessedDataset, TuningSummary
from tasks.ensemble import ensemble_task
from tasks.errors import PipelineInputError
from tasks.evaluate import evaluate_task
from tasks.ingest import ingest_task
from tasks.preprocess import preprocess_task
from tasks.report import CONSOLE_COLUMNS, report_task, run_context
from tasks.train import train_task
from tasks.tune import (
    TrialRequest,
    TuningSession,
    trial_task,
    tuned_params,
    write_profile,
)
from tasks.validate import validate_task


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


def tune_models(
    pool: TaskRunner, config: PipelineConfig, data: ProcessedDataset, study_dir: Path
) -> list[TuningSummary]:
    """Run the session's trials on `pool`, `parallel_models` at a time, until every
    model's budget is used."""
    session = TuningSession(config.models, config.params, config.tune.budget_minutes, study_dir)
    running: dict[PrefectFuture, TrialRequest] = {}
    while True:
        while len(running) < config.parallel_models and (request := session.next_trial()):
            parameters = {
                "request": request,
                "params": config.params,
                "data": data,
                "study_dir": study_dir,
                "train_subset_size": config.tune.train_subset_size,
                "seed": config.seed,
                "threads": config.model_threads,
            }
            running[pool.submit(trial_task, parameters)] = request
        if not running:
            return session.summaries()
        finished = next(as_completed(list(running)))
        session.record(running.pop(finished), finished.result())


@flow(name="fashion-mnist-pipeline")
def full_pipeline(config: PipelineConfig = PipelineConfig()) -> Path:  # noqa: B008
    """Train and compare every configured model; return the run's report directory."""
    logger = get_run_logger()
    run_id = new_run_id(config.profile)
    cache, refresh = config.cache_dir, config.refresh

    logger.info("stage 1/5: ingest and validate the Fashion-MNIST files")
    raw = ingest_task(config.data_dir, cache, refresh)
    validation = validate_task(raw, cache, refresh)

    logger.info("stage 2/5: preprocess (scale, split)")
    data = preprocess_task(
        raw,
        cache,
        config.validation_size,
        config.seed,
        config.train_subset_size,
        config.test_subset_size,
        refresh,
    )

    # Each model is evaluated as soon as it is trained, so evaluation never holds a
    # worker waiting for a model.
    logger.info(
        "stage 3/5: train %s, %d at a time (%s)",
        ", ".join(config.models), config.parallel_models, config.task_runner,
    )  # fmt: skip
    threads, params, tuning = config.model_threads, config.params, []
    with training_runner(config) as pool:
        if config.tune.enabled:
            logger.info(
                "tuning %s on the validation split, %.1f min each, %d trials at a time",
                ", ".join(config.models), config.tune.budget_minutes, config.parallel_models,
            )  # fmt: skip
            tuning = tune_models(pool, config, data, cache / "tuning" / run_id)
            params = tuned_params(params, tuning)
            if config.tune.save_profile:
                write_profile(config.tune.save_profile, tuning)
                logger.info("wrote the tuned parameters to %s", config.tune.save_profile)
        trainings = [
            pool.submit(
                train_task,
                {
                    "name": name,
                    "params": params,
                    "data": data,
                    "cache_dir": cache,
                    "seed": config.seed,
                    "threads": threads,
                    "refresh": refresh,
                },
            )
            for name in config.models
        ]
        evaluations = [
            pool.submit(
                evaluate_task,
                {
                    "trained": trained.result(),
                    "data": data,
                    "cache_dir": cache,
                    "threads": threads,
                    "refresh": refresh,
                },
            )
            for trained in as_completed(trainings)
        ]
        logger.info("stage 4/5: evaluate on the test set as models finish")
        results = [evaluation.result() for evaluation in evaluations]

    logger.info("stage 5/5: compare and write the report")
    if min(config.ensemble_size, len(results)) >= 2:
        ensemble = ensemble_task(results, data, cache, config.ensemble_size, refresh)
        results = [*results, ensemble]
    context = run_context(config, raw, validation, data)
    return report_task(results, data, config.output_dir, run_id, context, config.seed, tuning)


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
    board = pd.read_csv(report_dir / "leaderboard.csv", usecols=CONSOLE_COLUMNS)
    print(board.to_string(index=False, float_format=lambda value: f"{value:.4f}"))
    print(f"report: {report_dir / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
