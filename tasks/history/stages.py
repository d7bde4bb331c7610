"""The history stages as Prefect tasks: compare with the previous run, record this one,
and emit each regression as a Prefect event, which an automation can notify on
(automations/model-regressed.yaml)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.events import Event, emit_event

from tasks.core.contracts import ModelEvaluation, ProcessedDataset, RawDataset
from tasks.core.errors import RunEnvironmentError
from tasks.core.runtime import in_task_run, stage_logger
from tasks.history.changes import regressions
from tasks.history.db import history_path
from tasks.history.runs import compare_with_previous, record_run

REGRESSED_EVENT = "fashion-mnist.model.regressed"


def emit_regression_events(since: dict | None, run_id: str) -> list[Event]:
    """One `fashion-mnist.model.regressed` event per regressed model.

    Events are queued and sent by Prefect's events worker, which a process drains when
    it exits; inside a run the worker relates them to the flow and task run.

    Returns:
        The events emitted: none without regressions or without a Prefect API.
    """
    emitted = []
    for found in regressions(since):
        event = emit_event(
            event=REGRESSED_EVENT,
            resource={
                "prefect.resource.id": f"fashion-mnist.model.{found['model']}",
                "prefect.resource.name": found["model"],
            },
            payload={
                "model": found["model"],
                "previous_accuracy": found["previous_accuracy"],
                "accuracy": found["accuracy"],
                "change": found["change"],
                "p_value": found["p_value"],
                "test": found["test"],
                "regression_tolerance": since["regression_tolerance"],
                "run_id": run_id,
                "previous_run_id": since["previous_run_id"],
            },
        )
        if event is not None:
            emitted.append(event)
    return emitted


@task(name="compare-with-previous-run", cache_policy=NO_CACHE)
def since_previous_run_task(
    output_dir: Path,
    profile: str,
    run_id: str,
    raw: RawDataset,
    data: ProcessedDataset,
    evaluations: list[ModelEvaluation],
    regression_tolerance: float,
    baseline: str | None = None,
) -> dict | None:
    """`since_previous_run` for metrics.json and the report: this run against its
    profile's champion (`baseline`, when given, is promoted to champion first); emits the
    regression events. A history that cannot be read costs the comparison, not the run's
    report."""
    logger = stage_logger()
    history_db = history_path(output_dir)
    try:
        since = compare_with_previous(
            history_db, profile, run_id, raw, data, evaluations, regression_tolerance, baseline
        )
    except RunEnvironmentError as error:
        logger.warning("no comparison with the previous run: %s", error)
        return None
    if since is None:
        logger.info("no earlier %s run in %s to compare with", profile, history_db)
        return None
    logger.info("since run %s (%s):", since["previous_run_id"], since["previous_chosen"])
    for sentence in since["summary"]:
        logger.info(sentence)
    if in_task_run():  # the benchmark's plain calls have no Prefect API to send them to
        for event in emit_regression_events(since, run_id):
            logger.warning("emitted %s for %s", event.event, event.payload["model"])
    return since


@task(name="record-run", cache_policy=NO_CACHE)
def record_run_task(
    output_dir: Path,
    run_id: str,
    profile: str,
    raw: RawDataset,
    data: ProcessedDataset,
    evaluations: list[ModelEvaluation],
    regressed: bool = False,
) -> Path:
    """Record the run in `<output_dir>/history.sqlite`, as its profile's champion unless
    it `regressed`; returns the database's path. A history that cannot be written is a
    warning: the report is already written."""
    history_db = history_path(output_dir)
    try:
        record_run(history_db, run_id, profile, raw, data, evaluations, regressed)
    except RunEnvironmentError as error:
        stage_logger().warning("run %s not recorded in the history: %s", run_id, error)
    else:
        stage_logger().info("recorded run %s in %s", run_id, history_db)
    return history_db
