"""Training: fit one registered model on the training split, or reuse the one fitted before.

Thread counts are explicit so that the models trained side by side share the cores
without oversubscribing them. The models themselves live in `tasks.models`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from tasks.config import ModelParams
from tasks.contracts import TRAINING_ARRAYS, LearningCurve, ProcessedDataset, TrainedModel
from tasks.cores import CoreShare, held_to_lane
from tasks.models import build_model, model_spec
from tasks.models.base import PARAMS_FILE, TrainingContext
from tasks.runtime import in_task_run, stage_logger
from tasks.stopping import check_stop, run_until_stopped
from tasks.storage import (
    PROJECT_PACKAGE,
    cached_stage,
    code_version,
    content_key,
    project_code_version,
)


def model_code_version(name: str, package_dir: Path = PROJECT_PACKAGE) -> str:
    """Hash of the code that fits and saves a model: its own module with the project modules
    it imports, and this stage. Editing one model's code retrains that model only."""
    fitting = project_code_version(model_spec(name).module, package_dir)
    return content_key(fitting, code_version(package_dir / "train.py"))


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
    code; the thread count is left out as it changes only speed.
    """
    context = replace(context, classes=len(data.class_names))
    logger = context.logger
    model_params = getattr(params, name).model_dump(mode="json")
    inputs = {array: data.arrays[array].sha256 for array in TRAINING_ARRAYS}
    key = content_key(inputs, context.classes, model_params, context.seed, model_code_version(name))

    def fit_and_save(staging: Path) -> None:
        classifier = build_model(name, params, context)
        x_train, y_train, x_val, y_val = data.load(*TRAINING_ARRAYS)
        logger.info(
            "training %s on %d images with %d thread(s)", name, len(y_train), context.threads
        )
        started, cpu_started = time.perf_counter(), time.process_time()
        # In a thread of its own, so that a stop request ends this task within a moment.
        curve = run_until_stopped(classifier.fit, x_train, y_train, x_val, y_val)
        fit_seconds = time.perf_counter() - started
        fit_cpu_seconds = time.process_time() - cpu_started
        classifier.save(staging)
        record = {"model": name, "seed": context.seed, "threads": context.threads}
        record |= {"params": model_params, "fit_seconds": fit_seconds}
        record |= {"fit_cpu_seconds": fit_cpu_seconds, "curve": curve and asdict(curve)}
        (staging / PARAMS_FILE).write_text(json.dumps(record, indent=2))
        logger.info("trained %s in %.1f s", name, fit_seconds)

    target = cache_dir / "models" / name / key
    trained = cached_stage(target, fit_and_save, read_trained_model, name, refresh, logger)
    context.report_progress(1.0)
    return trained


def artifact_key(text: str) -> str:
    """Prefect artifact keys take lowercase letters, digits and dashes only."""
    return text.lower().replace("_", "-")


# No retries: a fit that failed fails the same way again (same data, parameters and
# seed), and would cost its whole training time again before saying so.
@task(name="train-model", task_run_name="train-{name}")
def train_task(
    name: str,
    params: ModelParams,
    data: ProcessedDataset,
    cache_dir: Path,
    seed: int,
    threads: int,
    refresh: bool,
    deadline: float | None = None,
    most_steps: int | None = None,
    cores: CoreShare | None = None,
    alone_from: float | None = None,
    speedup_alone: float = 1.0,
) -> TrainedModel:
    """With `cores`, the model's threads are sized to every core and held to its lane's
    until the other models are done: the plan expects that at `alone_from`, after which
    its steps are `speedup_alone` times as fast."""
    threads = cores.threads if cores else threads
    context = TrainingContext(
        seed, threads, stage_logger(), check_stop=check_stop, deadline=deadline,
        most_steps=most_steps, alone_from=alone_from, speedup_alone=speedup_alone,
    )  # fmt: skip
    if cores:
        context = replace(context, alone=lambda: cores.released)
    if in_task_run():  # a progress bar in the UI; none when the benchmark calls this plainly
        progress = create_progress_artifact(
            progress=0.0, key=artifact_key(f"training-{name}"), description=f"Training {name}"
        )
        context = replace(
            context,
            report_progress=lambda fraction: update_progress_artifact(progress, 100 * fraction),
        )
    with held_to_lane(cores, context.logger):
        return train_model(name, params, data, cache_dir, context, refresh)
