"""metrics.json: the findings and every model's full metrics, with what reproduces the run."""

from __future__ import annotations

import platform
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import metadata
from typing import TYPE_CHECKING

from tasks.core.contracts import (
    ModelEvaluation,
    ProcessedDataset,
    RawDataset,
    ValidationSummary,
    content_hashes,
)
from tasks.core.cpus import machine_facts
from tasks.evaluation.report.analysis import LEADERBOARD_COLUMNS, Findings
from tasks.evaluation.significance import BOOTSTRAP_RESAMPLES
from tasks.training.models.registry import model_file_digests, model_packages

if TYPE_CHECKING:
    from tasks.run.config import PipelineConfig

# The pipeline's own packages beside the orchestrator's; each model's are on its spec.
PACKAGES = ("numpy", "pandas", "pandera", "matplotlib")


def package_versions() -> dict[str, str]:
    """Python's version and the packages' the results depend on: the pipeline's and the models'."""
    versions = {"python": platform.python_version()}
    for package in ("prefect", *model_packages(), *PACKAGES):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def metrics_document(
    findings: Findings, evaluations: list[ModelEvaluation], run_id: str, context: dict
) -> dict:
    """The JSON-ready document; `context` is `run_context`'s facts about the run, and
    what the flow adds to them (the plan, `since_previous_run`)."""
    ranked = findings.leaderboard.set_index("model")
    models = {}
    for e in evaluations:
        record = asdict(e)
        per_class = {
            name: {metric: record[metric][i] for metric in ("precision", "recall", "f1", "support")}
            for i, name in enumerate(findings.class_names)
        }
        models[e.name] = {
            "rank": int(ranked.loc[e.name, "rank"]),
            **{key: float(ranked.loc[e.name, key]) for key in LEADERBOARD_COLUMNS[2:]},
            "fit_cpu_seconds": e.fit_cpu_seconds,
            "predict_cpu_seconds": e.predict_cpu_seconds,
            "per_class": per_class,
            "confusion_matrix": e.confusion,
            "params": e.params,
            "model_dir": str(e.model_dir),
            # What prediction checks the saved model against: a later retraining replaces
            # the entry, and this run's figures would no longer be its.
            "model_files_sha256": model_file_digests(e.model_dir),
            "test_predictions_sha256": e.test_predictions.sha256,
        }
    return {
        "run_id": run_id,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "class_names": list(findings.class_names),
        "since_previous_run": None,  # null on a first run; the flow's context carries it after
        **context,
        "packages": package_versions(),
        "chosen_model": findings.chosen,
        "models": models,
        "accuracy_interval": {"confidence": findings.confidence, "paired_bootstrap_resamples":
                              BOOTSTRAP_RESAMPLES},
        "mcnemar_exact": findings.comparisons.to_dict(orient="records"),
        "splits": {"decided": findings.split_roles.to_dict(orient="records"),
                   "held_out_gaps": findings.gaps.to_dict(orient="records")},
        "tuning": [asdict(summary) for summary in findings.tuning],
        "failures": [asdict(failure) for failure in findings.failures],
    }  # fmt: skip


def run_context(
    config: PipelineConfig, raw: RawDataset, validation: ValidationSummary, data: ProcessedDataset
) -> dict:
    """What metrics.json records about a run besides the models: enough to reproduce it."""
    return {
        "config": config.model_dump(mode="json"),
        "seed": config.seed,
        "data": {
            "source_dir": str(raw.source_dir),
            "file_sha256": raw.file_sha256,
            "processed_dir": str(data.directory),
            "processed_sha256": content_hashes(data.arrays),
        },
        "validation": asdict(validation),
        "machine": machine_facts(),
    }
