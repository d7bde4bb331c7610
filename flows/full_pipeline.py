"""The full pipeline: ingest -> validate -> preprocess -> train in parallel -> compare.

python -m flows.full_pipeline [--profile quick|full] [--models cnn,xgboost] ...
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from prefect import flow
from prefect.runtime import flow_run
from prefect.settings import get_current_settings
from prefect.states import Cancelled, State
from pydantic import ValidationError

from flows.graph import run_stages
from flows.runner import STOPS, PrefectStages, quiet_tracebacks, stop_signal_of
from flows.server import prefect_api
from tasks.core.errors import PipelineError
from tasks.core.stopping import (
    RunStopped,
    abandoned_fits,
    clear_stop,
    request_stop,
    signal_name,
    stop_handlers,
    stop_handlers_installed,
    stop_signal,
)
from tasks.evaluation.report.tables import console_table
from tasks.run.config import MODEL_NAMES, PipelineConfig, build_config
from tasks.run.preflight import check_cluster_server, check_run


def new_run_id(profile: str) -> str:
    """Sortable by time, unique per flow run, and readable in a directory listing."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{profile}-{flow_run.get_id()[:8]}"


@flow(name="fashion-mnist-pipeline")
def full_pipeline(
    config: PipelineConfig = PipelineConfig(),  # noqa: B008
    started_at: float | None = None,
) -> Path:
    """Train and compare every configured model; return the run's report directory.

    `started_at` (a `time.time()`) is when the run's time budget began: the command's
    process's start; a deployment's run counts from its flow run's start.

    SIGTERM (a worker cancelling the run, `timeout`, systemd) or SIGINT (Ctrl-C) stops
    it within seconds and ends it Cancelled; the finished models stay in the cache.
    """
    quiet_tracebacks()
    try:
        return run_stages(config, PrefectStages(), new_run_id(config.profile), started_at)
    except STOPS as stop:
        request_stop(stop_signal_of(stop))
        if not stop_handlers_installed():
            # A worker's engine runs this flow: Prefect records the cancellation it was
            # asked for (Crashed, for a SIGTERM nobody asked Prefect for) and exits.
            raise
        return Cancelled(
            message=f"stopped by {signal_name(stop_signal())}; the finished models stay "
            f"in {config.cache_dir}/ and a rerun resumes from them"
        )


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
        "--data-dir",
        type=Path,
        help="your data, used alone: four IDX files, Kaggle's two CSV files, or "
        "train/<class>/ (and test/<class>/) image folders",
    )
    parser.add_argument(
        "--output-dir", type=Path, help="where run reports are written (default: reports/)"
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        metavar="MINUTES",
        help="minutes the whole run may take (default: 15 for full, 3 for quick; 0: none); "
        "the run measures what its models cost here and plans to finish in time",
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
        "--parallel-models",
        type=int,
        metavar="N",
        help="models trained at the same time (default: one per usable core, up to the "
        "number of models)",
    )
    parser.add_argument(
        "--dask-address", help="scheduler of an existing Dask cluster, e.g. tcp://10.0.0.5:8786"
    )
    parser.add_argument(
        "--fail-on-regression",
        action="store_true",
        help="exit with status 4 (the flow run Failed) when a model got significantly worse "
        "since the profile's champion run",
    )
    parser.add_argument(
        "--baseline",
        metavar="RUN_ID",
        help="compare with this earlier run of the profile and make it the champion, "
        "accepting it (default: the champion, the last run without a regression)",
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


def command_started_at() -> float:
    """When this process started, as a `time.time()`: the command's time budget counts the
    interpreter's start and the imports, as a clock around the command does (the imports
    took 8.8 s on the AVX2 EPYC in a slow hour, where a 30-minute run counted from `main()`
    took 30:05.7 by the clock)."""
    return psutil.Process().create_time()


def main(argv: list[str] | None = None) -> int:
    # As the command (its own argv), the budget counts from the process's start; called
    # from Python with arguments, from this call.
    started_at = command_started_at() if argv is None else time.time()
    args = parse_args(argv)
    with stop_handlers():
        try:
            status = _run(args, started_at)
        except RunStopped as stop:  # before the flow run started, or after it ended
            print(f"stopped by {signal_name(stop.signum)}", file=sys.stderr)
            status = 128 + (stop.signum or signal.SIGINT)
    if abandoned_fits():
        # A scikit-learn fit that cannot be interrupted still runs in a thread: end the
        # process now, rather than let the interpreter's exit wait on or tear down it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def _run(args: argparse.Namespace, started_at: float) -> int:
    clear_stop()
    try:
        config = build_config(
            args.profile,
            models=args.models,
            data={"dir": args.data_dir} if args.data_dir else None,
            output_dir=args.output_dir,
            seed=args.seed,
            time_budget_minutes=args.time_budget,
            refresh=args.refresh or None,
            fail_on_regression=args.fail_on_regression or None,
            baseline=args.baseline,
            task_runner=args.task_runner,
            parallel_models=args.parallel_models,
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
    try:
        api_url = get_current_settings().api.url
        check_run(config, api_url)  # before a temporary server starts, or anything else
        check_cluster_server(config, api_url)
        with prefect_api(api_url):
            state = full_pipeline(config, started_at, return_state=True)
            outcome = state.result(raise_on_failure=False)
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_status
    return _print_outcome(state, outcome)


def _print_outcome(state: State, outcome: Any) -> int:
    """The leaderboard and the report's path, then one line for what went wrong, if
    anything did; returns the exit status."""
    if state.is_cancelled():
        print(state.message, file=sys.stderr)
        signum = stop_signal()
        return 128 + signum if signum else 1
    report_dir = getattr(outcome, "report_dir", outcome)  # a failure after the report
    if isinstance(report_dir, Path):
        print(console_table(report_dir))
        print(f"report: {report_dir / 'report.md'}")
    if isinstance(outcome, PipelineError):
        print(f"error: {outcome}", file=sys.stderr)
        return outcome.exit_status
    if isinstance(outcome, BaseException):
        raise outcome  # a bug: its traceback is what helps
    return 0


if __name__ == "__main__":
    sys.exit(main())
