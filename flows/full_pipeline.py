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
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import ValidationError

from tasks.config import MODEL_NAMES, PipelineConfig, build_config
from tasks.errors import PipelineInputError
from tasks.evaluate import evaluate_task
from tasks.ingest import ingest_task
from tasks.preprocess import preprocess_task
from tasks.report import report_task, run_context
from tasks.train import train_task
from tasks.validate import validate_task


def new_run_id(profile: str) -> str:
    """Sortable by time, unique per flow run, and readable in a directory listing."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{profile}-{flow_run.get_id()[:8]}"


@flow(name="fashion-mnist-pipeline")
def full_pipeline(config: PipelineConfig = PipelineConfig()) -> Path:  # noqa: B008
    """Train and compare every configured model; return the run's report directory."""
    run_id = new_run_id(config.profile)
    run_dir = config.cache_dir / "runs" / run_id

    # Ingestion and validation: nothing is trained on data that fails its checks.
    raw = ingest_task(config.data_dir, config.cache_dir)
    validation = validate_task(raw)

    # Preprocessing: arrays written once under data/processed, passed on by reference.
    data = preprocess_task(
        raw,
        config.cache_dir,
        config.validation_size,
        config.seed,
        config.train_subset_size,
        config.test_subset_size,
    )

    # Training: `parallel_models` models at a time, each evaluated as soon as it is
    # trained, so evaluation never holds a worker waiting for a model.
    threads = config.model_threads
    with ThreadPoolTaskRunner(max_workers=config.parallel_models) as pool:
        trainings = [
            pool.submit(
                train_task,
                {
                    "name": name,
                    "params": config.params,
                    "data": data,
                    "models_dir": run_dir / "models",
                    "seed": config.seed,
                    "threads": threads,
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
                    "predictions_dir": run_dir / "predictions",
                    "threads": threads,
                },
            )
            for trained in as_completed(trainings)
        ]
        results = [evaluation.result() for evaluation in evaluations]

    # Comparison: the ranked report, published whole.
    return report_task(
        results,
        data,
        config.output_dir,
        run_id,
        run_context(config, raw, validation, data),
    )


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
    return parser.parse_args(argv)


def _describe(error: ValidationError) -> str:
    issues = []
    for issue in error.errors():
        where = ".".join(map(str, issue["loc"])) or "config"
        issues.append(f"{where}: {issue['msg'].removeprefix('Value error, ')}")
    return "; ".join(issues)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = build_config(
            args.profile,
            models=args.models,
            data_dir=args.data_dir,
            output_dir=args.output_dir,
            seed=args.seed,
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
    board = pd.read_csv(report_dir / "leaderboard.csv")
    print(board.to_string(index=False, float_format=lambda value: f"{value:.4f}"))
    print(f"report: {report_dir / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
