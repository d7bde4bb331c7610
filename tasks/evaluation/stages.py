"""Evaluation, the ensemble and the report as Prefect tasks: thin wrappers that log each
result where the run's UI shows it, and publish the report's artifacts."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from tasks.core.contracts import (
    ModelEvaluation,
    ModelFailure,
    ProcessedDataset,
    TrainedModel,
    TuningSummary,
)
from tasks.core.cpus import HostThreads, threads_here
from tasks.core.memory import say_memory_given_back
from tasks.core.runtime import in_task_run, stage_logger
from tasks.evaluation.ensemble import build_ensemble
from tasks.evaluation.evaluate import evaluate_model
from tasks.evaluation.report.artifacts import publish_artifacts
from tasks.evaluation.report.writer import write_report


# No retries: predicting with a saved model is deterministic.
@task(name="evaluate-model", task_run_name="evaluate-{trained.name}")
def evaluate_task(
    trained: TrainedModel,
    data: ProcessedDataset,
    cache_dir: Path,
    threads: int | HostThreads,
    refresh: bool,
) -> ModelEvaluation:
    logger = stage_logger()
    evaluation = evaluate_model(trained, data, cache_dir, threads_here(threads), refresh, logger)
    say_memory_given_back(logger, f"evaluating {trained.name}")
    logger.info(
        "%s: test accuracy %.4f, macro-F1 %.4f (predicted in %.1f s)",
        evaluation.name, evaluation.test_accuracy, evaluation.macro_f1, evaluation.predict_seconds,
    )  # fmt: skip
    return evaluation


@task(name="soft-voting-ensemble")
def ensemble_task(
    evaluations: list[ModelEvaluation],
    data: ProcessedDataset,
    cache_dir: Path,
    size: int,
    refresh: bool,
) -> ModelEvaluation:
    logger = stage_logger()
    ensemble = build_ensemble(evaluations, data, cache_dir, size, refresh, logger)
    logger.info(
        "ensemble of %s with weights %s: test accuracy %.4f",
        ", ".join(ensemble.params["members"]),
        ", ".join(f"{w:.3f}" for w in ensemble.params["weights"]),
        ensemble.test_accuracy,
    )
    return ensemble


@task(name="compare-models")
def report_task(
    evaluations: list[ModelEvaluation],
    data: ProcessedDataset,
    output_dir: Path,
    run_id: str,
    context: dict,
    seed: int,
    tuning: list[TuningSummary],
    failures: list[ModelFailure],
) -> Path:
    """Write the run's report to `<output_dir>/<run_id>` and publish its artifacts."""
    report = write_report(
        evaluations=evaluations,
        data=data,
        report_dir=output_dir / run_id,
        context=context,
        seed=seed,
        tuning=tuning,
        failures=failures,
    )
    if in_task_run():  # not when the benchmark calls it without Prefect
        publish_artifacts(report.findings, report.directory)
    return report.directory
