"""The history stage: compare the run with the previous one of its profile, alert on
regressions, and record the run once its report is written.

`since_previous_run` goes into metrics.json and opens the report. Each regression, a
significant drop beyond `regression_tolerance`, is also a Prefect event, which an
automation can notify on (automations/model-regressed.yaml).
"""

from __future__ import annotations

from pathlib import Path

from tasks.core.contracts import ModelEvaluation, ProcessedDataset, RawDataset
from tasks.core.errors import RegressionError
from tasks.history.changes import change_text, compare_runs, regressions
from tasks.history.db import previous_run, record_snapshot, snapshot_run


def compare_with_previous(
    history_db: Path,
    profile: str,
    run_id: str,
    raw: RawDataset,
    data: ProcessedDataset,
    evaluations: list[ModelEvaluation],
    tolerance: float,
) -> dict | None:
    """`since_previous_run`: this run against the last completed run of its profile in
    `history_db`, or None when there is none."""
    previous = previous_run(history_db, profile, run_id)
    if previous is None:
        return None
    current = snapshot_run(run_id, profile, raw, data, evaluations)
    return compare_runs(previous, current, tolerance)


def record_run(
    history_db: Path,
    run_id: str,
    profile: str,
    raw: RawDataset,
    data: ProcessedDataset,
    evaluations: list[ModelEvaluation],
) -> None:
    """Record a completed run, for the next run of its profile to compare with."""
    record_snapshot(history_db, snapshot_run(run_id, profile, raw, data, evaluations))


def regression_error(since: dict, report_dir: Path | None = None) -> RegressionError:
    """The error a run asked to fail on regressions ends with; `since` must hold some."""
    found = regressions(since)
    models = "; ".join(f"{row['model']} {change_text(row)}" for row in found)
    return RegressionError(
        f"{len(found)} model{'s' if len(found) > 1 else ''} regressed since run "
        f"{since['previous_run_id']} (accuracy down more than "
        f"{since['regression_tolerance']:g}, p < 0.05): {models}",
        report_dir,
    )
