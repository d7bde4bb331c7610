"""Training: fit one registered model on the training split, or reuse the one fitted before.

Thread counts are explicit so that the models trained side by side share the cores
without oversubscribing them. The models themselves live in `tasks.training.models`;
`registry` lists them.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

from tasks.core.contracts import (
    TRAINING_ARRAYS,
    LearningCurve,
    ProcessedDataset,
    TrainedModel,
    content_hashes,
)
from tasks.core.stopping import run_until_stopped
from tasks.core.storage import (
    PROJECT_PACKAGE,
    cached_stage,
    code_version,
    content_key,
    project_code_version,
)
from tasks.training.models.base import PARAMS_FILE, TrainingContext
from tasks.training.models.registry import ModelParams, build_model, model_spec


def model_code_version(name: str, package_dir: Path = PROJECT_PACKAGE) -> str:
    """Hash of the code that fits and saves a model: its own module with the project modules
    it imports, and this stage. Editing one model's code retrains that model only."""
    fitting = project_code_version(model_spec(name).module, package_dir)
    return content_key(fitting, code_version(package_dir / "training" / "train.py"))


def read_trained_model(directory: Path) -> TrainedModel:
    record = json.loads((directory / PARAMS_FILE).read_text())
    curve = record["curve"] and LearningCurve(**record["curve"])
    return TrainedModel(
        record["model"], directory, record["fit_seconds"], record["fit_cpu_seconds"],
        record["params"], curve,
    )  # fmt: skip


def train_model(
    name: str,
    params: ModelParams,
    data: ProcessedDataset,
    cache_dir: Path,
    context: TrainingContext,
    refresh: bool = False,
) -> TrainedModel:
    """Fit one model and save it next to its parameters, or reuse the one fitted before.

    The model predicts the data's classes, whatever `context` says. The cache key covers
    the training data's hashes and classes, the model's parameters, the seed and its
    code, and for an epoch or round model under a time budget the most steps it may
    extend to: such a fit stops at the deadline rather than on a plateau, so an unbudgeted
    run with the same parameters trains another model (a one-go fit is the same either
    way). The thread count and the deadline's time are left out: they change only speed,
    and a rerun after a cancel must find the models already trained.
    """
    context = replace(context, classes=len(data.class_names))
    logger = context.logger
    model_params = getattr(params, name).model_dump(mode="json")
    inputs = content_hashes(data.arrays, TRAINING_ARRAYS)
    parts = [inputs, context.classes, model_params, context.seed, model_code_version(name)]
    if context.deadline is not None and context.most_steps is not None:
        parts.append({"budgeted, most steps": context.most_steps})
    key = content_key(*parts)

    target = cache_dir / "models" / name / key
    # Beside the entry, hidden from the cache's listings; removed once the entry is published.
    resume_dir = target.parent / f".{key}.resume" if model_spec(name).keeps_epochs else None
    fitting = replace(context, resume_dir=resume_dir)
    if refresh and resume_dir:
        shutil.rmtree(resume_dir, ignore_errors=True)

    def fit_and_save(staging: Path) -> None:
        classifier = build_model(name, params, fitting)
        x_train, y_train, x_val, y_val = data.load(*TRAINING_ARRAYS)
        logger.info(
            "training %s on %d images with %d thread(s)", name, len(y_train), context.threads
        )
        started, cpu_started = time.perf_counter(), time.process_time()
        # In a thread of its own, so that a stop request ends this task within a moment.
        curve = run_until_stopped(classifier.fit, x_train, y_train, x_val, y_val)
        # A fit taken up from an earlier run's kept epochs counts that run's seconds too.
        earlier_seconds, earlier_cpu_seconds = fitting.resumed_seconds()
        fit_seconds = earlier_seconds + time.perf_counter() - started
        fit_cpu_seconds = earlier_cpu_seconds + time.process_time() - cpu_started
        classifier.save(staging)
        record = {"model": name, "seed": context.seed, "threads": context.threads}
        record |= {"params": model_params, "fit_seconds": fit_seconds}
        record |= {"fit_cpu_seconds": fit_cpu_seconds, "curve": curve and asdict(curve)}
        (staging / PARAMS_FILE).write_text(json.dumps(record, indent=2))
        logger.info("trained %s in %.1f s", name, fit_seconds)

    trained = cached_stage(target, fit_and_save, read_trained_model, name, refresh, logger)
    if resume_dir:
        shutil.rmtree(resume_dir, ignore_errors=True)
    context.report_progress(1.0)
    return trained
