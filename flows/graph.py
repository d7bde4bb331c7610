"""The stage graph, defined once: the flow runs it on Prefect, the benchmark as plain calls.

ingest -> validate -> preprocess -> [tune] -> train and evaluate each model in a pool
-> ensemble -> report. A `StageRunner` decides how a stage runs; the graph only says
which stage gets which inputs, so the flow and the benchmark can never drift apart.
A model that fails is recorded and left out; the report and the run's end name it.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from tasks.budget import (
    DEDICATED_MODEL,
    cached_plan,
    make_plan,
    measure_task,
    pinned_fields,
    plan_key,
    planned_params,
    reserve_seconds,
)
from tasks.config import PipelineConfig
from tasks.contracts import ModelEvaluation, ModelFailure, ProcessedDataset, TuningSummary
from tasks.ensemble import ENSEMBLE_NAME, ensemble_task
from tasks.errors import ModelsFailedError, RunEnvironmentError, StorageError
from tasks.evaluate import evaluate_task
from tasks.ingest import ingest_task
from tasks.planner import Plan, describe_plan
from tasks.preflight import check_run, space_needed
from tasks.preprocess import preprocess_task
from tasks.report import report_task, run_context
from tasks.stopping import RunStopped, stop_requested, stop_signal
from tasks.storage import sweep_scratch
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


def run_stages(
    config: PipelineConfig, runner: StageRunner, run_id: str, started_at: float | None = None
) -> Path:
    """Every stage of one run; returns the run's report directory.

    A model that fails is recorded and the others go on; the report names it.

    Raises:
        PipelineError: a pre-flight check failed, before any work.
        ModelsFailedError: models failed; raised after the others' report is written.
        StorageError: a write failed; the message says about how much the run writes.
        RunStopped: the run was told to stop (or TerminationSignal, KeyboardInterrupt).
    """
    started_at = started_at or time.time()
    check_run(config)
    scratch_roots = (config.cache_dir, config.output_dir)
    sweep_scratch(scratch_roots, runner.logger)  # what killed runs left
    try:
        return _run_stages(config, runner, run_id, started_at)
    except StorageError as error:
        if not error.disk_full:
            raise
        raise error.needing(space_needed(config, error.path)) from None
    finally:
        sweep_scratch(scratch_roots, runner.logger)  # what stopped worker processes left


def _run_stages(
    config: PipelineConfig, runner: StageRunner, run_id: str, started_at: float
) -> Path:
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
    tuning, failures = [], []
    with runner.pool(config) as pool:
        if config.tune.enabled:
            tuning, failures = tune_models(pool, config, data, run_id, logger)
        params = tuned_params(config.params, tuning)
        if tuning and config.tune.save_profile:
            write_profile(config.tune.save_profile, tuning)
            logger.info("wrote the tuned parameters to %s", config.tune.save_profile)
        untuned = {failure.model for failure in failures}
        models = [name for name in config.models if name not in untuned]
        plan, deadline, most_steps = None, None, {}
        if config.time_budget_minutes and models:
            plan, unmeasured = plan_training(pool, config, data, params, models, started_at, logger)
            failures += unmeasured
            params = planned_params(params, plan)
            models = [model.model for model in plan.models]
            deadline = started_at + plan.budget_seconds - plan.reserve_seconds
            most_steps = {model.model: model.max_steps for model in plan.models}
        logger.info("stage 4/5: evaluate on the test set as models finish")
        results, failed = train_and_evaluate(
            pool, config, data, params, models, logger, deadline, most_steps
        )
        failures += failed

    logger.info("stage 5/5: compare and write the report")
    if not results:
        raise ModelsFailedError(f"all {len(config.models)} models failed: {_listed(failures)}")
    if min(config.ensemble_size, len(results)) >= 2:  # of the models that succeeded
        try:
            ensemble = call(
                ensemble_task,
                evaluations=results,
                data=data,
                cache_dir=cache,
                size=config.ensemble_size,
                refresh=refresh,
            )
        except Exception as error:
            failures.append(isolated(ENSEMBLE_NAME, "ensemble", error, logger))
        else:
            results = [*results, ensemble]
    report_dir = call(
        report_task,
        evaluations=results,
        data=data,
        output_dir=config.output_dir,
        run_id=run_id,
        context=run_context(config, raw, validation, data) | {"plan": plan and plan.as_dict()},
        seed=config.seed,
        tuning=tuning,
        failures=failures,
    )
    if failures:
        failed = [failure for failure in failures if failure.model != ENSEMBLE_NAME]
        which = f"{len(failed)} of {len(config.models)} models" if failed else "the ensemble"
        raise ModelsFailedError(
            f"{which} failed: {_listed(failures)}; a rerun retrains only what failed",
            report_dir,
        )
    return report_dir


def _listed(failures: list[ModelFailure]) -> str:
    return "; ".join(map(str, failures))


def isolated(model: str, stage: str, error: Exception, logger: Any) -> ModelFailure:
    """The record of a model that failed, so that the run goes on without it, unless the
    error is not the model's: a stop request, or a machine that cannot store results."""
    if isinstance(error, RunStopped):  # a worker process was told to stop
        raise error
    if stop_requested():  # a task that failed because the run is stopping
        raise RunStopped(stop_signal()) from error
    if isinstance(error, RunEnvironmentError):
        raise error
    failure = ModelFailure.from_exception(model, stage, error)
    logger.error("%s failed in %s: %s", model, stage, failure.error)
    return failure


def plan_training(
    pool: Pool,
    config: PipelineConfig,
    data: ProcessedDataset,
    params: Any,
    models: list[str],
    started_at: float,
    logger: Any,
) -> tuple[Plan, list[ModelFailure]]:
    """Measure the models' costs here, the CNN beside the others as they will train, and
    plan them to the budget; a rerun reuses the plan, and so the models it trained. A model
    whose measurement fails is left out of the plan and returned as a failure."""
    key = plan_key(config, data, params, pool.threads_per_model)

    def measure_and_plan() -> tuple[Plan, list[ModelFailure]]:
        pinned = {name: pinned_fields(config, name) for name in models}
        groups = [
            [n for n in models if n == DEDICATED_MODEL],
            [n for n in models if n != DEDICATED_MODEL],
        ]
        left = config.time_budget_minutes * 60 - (time.time() - started_at)
        common = {"params": params, "pinned": pinned, "data": data, "seed": config.seed}
        common["seconds"] = left - reserve_seconds(len(models))
        futures = [
            submit(pool, measure_task, names=group, threads=pool.threads_per_model, **common)
            for group in groups
            if group
        ]
        measured, failures = {}, []
        for future in futures:
            found, failed = future.result()
            measured |= found
            failures += failed  # logged by the task; a stop or a full disk raised instead
        if not measured:
            raise ModelsFailedError(f"all {len(models)} models failed: {_listed(failures)}")
        return make_plan(config, measured, time.time() - started_at), failures

    plan, failures = cached_plan(
        config.cache_dir / "plans" / key, measure_and_plan, config.refresh, logger
    )
    for line in describe_plan(plan):
        logger.info(line)
    return plan, failures


def train_and_evaluate(
    pool: Pool,
    config: PipelineConfig,
    data: ProcessedDataset,
    params: Any,
    models: list[str],
    logger: Any,
    deadline: float | None = None,
    most_steps: dict[str, int | None] | None = None,
) -> tuple[list[ModelEvaluation], list[ModelFailure]]:
    """Each model is evaluated as soon as it is trained, so evaluation never holds a worker
    waiting for a model; each evaluation declares the training it depends on. A model
    whose training or evaluation fails is recorded and the others go on."""
    common = {"data": data, "cache_dir": config.cache_dir, "refresh": config.refresh}
    common["threads"] = pool.threads_per_model
    trainings = {
        submit(
            pool,
            train_task,
            name=name,
            params=params,
            seed=config.seed,
            deadline=deadline,
            most_steps=(most_steps or {}).get(name),
            **common,
        ): name
        for name in models
    }
    evaluations, failures = {}, []
    for trained in pool.as_completed(trainings):
        try:
            model = trained.result()
        except Exception as error:
            failures.append(isolated(trainings[trained], "training", error, logger))
            continue
        evaluation = submit(pool, evaluate_task, wait_for=[trained], trained=model, **common)
        evaluations[evaluation] = model.name
    results = []
    for evaluation, name in evaluations.items():
        try:
            results.append(evaluation.result())
        except Exception as error:
            failures.append(isolated(name, "evaluation", error, logger))
    return results, failures


def tune_models(
    pool: Pool, config: PipelineConfig, data: ProcessedDataset, run_id: str, logger: Any
) -> tuple[list[TuningSummary], list[ModelFailure]]:
    """Run the session's trials `parallel_models` at a time until every model's budget
    is used; trials are tasks of the same pool the models train in. A model whose trial
    fails gets no more trials; without a completed one it is not trained."""
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
            failures = [
                ModelFailure(model, "tuning", error) for model, error in session.failures().items()
            ]
            return session.summaries(), failures
        finished = next(pool.as_completed(list(running)))
        request = running.pop(finished)
        try:
            outcome = finished.result()
        except Exception as error:
            session.fail(request, isolated(request.model, "tuning", error, logger).error)
        else:
            session.record(request, outcome)
