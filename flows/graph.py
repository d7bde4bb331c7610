"""The stage graph, defined once: the flow runs it on Prefect, the benchmark as plain calls.

ingest -> validate -> preprocess -> [tune] -> train and evaluate each model in a pool
-> ensemble -> report. A `StageRunner` decides how a stage runs; the graph only says
which stage gets which inputs, so the flow and the benchmark can never drift apart.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from tasks.config import PipelineConfig
from tasks.contracts import ModelEvaluation, ProcessedDataset, TuningSummary
from tasks.ensemble import ensemble_task
from tasks.evaluate import evaluate_task
from tasks.ingest import ingest_task
from tasks.preprocess import preprocess_task
from tasks.report import report_task, run_context
from tasks.train import train_task
from tasks.tune import TrialRequest, TuningSession, trial_task, tuned_params, write_profile
from tasks.validate import validate_task


class Future(Protocol):
    def result(self) -> Any: ...


class Pool(Protocol):
    """Runs stages side by side: Prefect's task runner, or a process pool."""

    threads_per_model: int

    def submit(self, stage: Any, parameters: dict, wait_for: Iterable[Future] = ()) -> Future: ...

    def as_completed(self, futures: Iterable[Future]) -> Iterator[Future]: ...


class StageRunner(Protocol):
    logger: Any

    def call(self, stage: Any, parameters: dict) -> Any:
        """Run one stage here and return its result."""

    def pool(self, config: PipelineConfig) -> AbstractContextManager[Pool]: ...


def checked(stage: Any, parameters: dict) -> dict:
    """`parameters`, once they bind to the stage's signature: a misspelled or missing name
    fails here, before anything is submitted, not in a worker."""
    function: Callable = getattr(stage, "fn", stage)
    try:
        inspect.signature(function).bind(**parameters)
    except TypeError as error:
        raise TypeError(f"{getattr(stage, 'name', function.__name__)}: {error}") from None
    return parameters


def submit(pool: Pool, stage: Any, wait_for: Iterable[Future] = (), **parameters: Any) -> Future:
    """Submit a stage to the pool once its parameters bind to its signature."""
    return pool.submit(stage, checked(stage, parameters), wait_for)


def run_stages(config: PipelineConfig, runner: StageRunner, run_id: str) -> Path:
    """Every stage of one run; returns the run's report directory."""
    logger, cache, refresh = runner.logger, config.cache_dir, config.refresh

    def call(stage: Any, **parameters: Any) -> Any:
        return runner.call(stage, checked(stage, parameters))

    logger.info("stage 1/5: ingest and validate the Fashion-MNIST files")
    raw = call(ingest_task, data_dir=config.data_dir, cache_dir=cache, refresh=refresh)
    validation = call(validate_task, raw=raw, cache_dir=cache, refresh=refresh)

    logger.info("stage 2/5: preprocess (scale, split)")
    data = call(
        preprocess_task,
        raw=raw,
        cache_dir=cache,
        validation_size=config.validation_size,
        seed=config.seed,
        train_subset_size=config.train_subset_size,
        test_subset_size=config.test_subset_size,
        refresh=refresh,
    )

    logger.info(
        "stage 3/5: train %s, %d at a time (%s)",
        ", ".join(config.models), config.parallel_models, config.task_runner,
    )  # fmt: skip
    with runner.pool(config) as pool:
        tuning = tune_models(pool, config, data, run_id, logger) if config.tune.enabled else []
        params = tuned_params(config.params, tuning)
        if tuning and config.tune.save_profile:
            write_profile(config.tune.save_profile, tuning)
            logger.info("wrote the tuned parameters to %s", config.tune.save_profile)
        logger.info("stage 4/5: evaluate on the test set as models finish")
        results = train_and_evaluate(pool, config, data, params)

    logger.info("stage 5/5: compare and write the report")
    if min(config.ensemble_size, len(results)) >= 2:
        ensemble = call(
            ensemble_task,
            evaluations=results,
            data=data,
            cache_dir=cache,
            size=config.ensemble_size,
            refresh=refresh,
        )
        results = [*results, ensemble]
    return call(
        report_task,
        evaluations=results,
        data=data,
        output_dir=config.output_dir,
        run_id=run_id,
        context=run_context(config, raw, validation, data),
        seed=config.seed,
        tuning=tuning,
    )


def train_and_evaluate(
    pool: Pool, config: PipelineConfig, data: ProcessedDataset, params: Any
) -> list[ModelEvaluation]:
    """Each model is evaluated as soon as it is trained, so evaluation never holds a worker
    waiting for a model; each evaluation declares the training it depends on."""
    common = {"data": data, "cache_dir": config.cache_dir, "refresh": config.refresh}
    common["threads"] = pool.threads_per_model
    trainings = [
        submit(pool, train_task, name=name, params=params, seed=config.seed, **common)
        for name in config.models
    ]
    evaluations = [
        submit(pool, evaluate_task, wait_for=[trained], trained=trained.result(), **common)
        for trained in pool.as_completed(trainings)
    ]
    return [evaluation.result() for evaluation in evaluations]


def tune_models(
    pool: Pool, config: PipelineConfig, data: ProcessedDataset, run_id: str, logger: Any
) -> list[TuningSummary]:
    """Run the session's trials `parallel_models` at a time until every model's budget
    is used; trials are tasks of the same pool the models train in."""
    logger.info(
        "tuning %s on the validation split, %.1f min each, %d trials at a time",
        ", ".join(config.models), config.tune.budget_minutes, config.parallel_models,
    )  # fmt: skip
    study_dir = config.cache_dir / "tuning" / run_id
    session = TuningSession(config.models, config.params, config.tune.budget_minutes, study_dir)
    running: dict[Future, TrialRequest] = {}
    while True:
        while len(running) < config.parallel_models and (request := session.next_trial()):
            parameters = {
                "request": request,
                "params": config.params,
                "data": data,
                "study_dir": study_dir,
                "train_subset_size": config.tune.train_subset_size,
                "seed": config.seed,
                "threads": pool.threads_per_model,
            }
            running[submit(pool, trial_task, **parameters)] = request
        if not running:
            return session.summaries()
        finished = next(pool.as_completed(list(running)))
        session.record(running.pop(finished), finished.result())
