"""The stage graph, defined once: the flow runs it on Prefect, the benchmark as plain calls.

ingest -> validate -> preprocess -> [tune] -> measure and plan -> train and evaluate each
model in a pool (flows/parallel.py) -> ensemble -> compare with the previous run -> report
-> record the run in the history. A `StageRunner` decides how a stage runs; the graph only says
which stage gets which inputs, so the flow and the benchmark can never drift apart.
A model that fails is recorded and left out; the report and the run's end name it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from flows.parallel import (
    Pool,
    checked,
    isolated,
    listed,
    plan_training,
    train_and_evaluate,
    tune_models,
)
from tasks.budget.plans import planned_params, training_limits
from tasks.core.contracts import (
    ENSEMBLE_NAME,
    ProcessedDataset,
    RawDataset,
    ValidationSummary,
)
from tasks.core.cpus import machine_cores
from tasks.core.devices import detect_devices
from tasks.core.errors import ModelsFailedError, StorageError
from tasks.core.storage import sweep_scratch
from tasks.data.stages import ingest_task, preprocess_task, validate_task
from tasks.evaluation.report.metrics import run_context
from tasks.evaluation.stages import ensemble_task, report_task
from tasks.history.changes import regressions
from tasks.history.runs import regression_error
from tasks.history.stages import record_run_task, since_previous_run_task
from tasks.run.config import PipelineConfig
from tasks.run.preflight import check_run, space_needed
from tasks.training.cores import cluster_shared_cores, shared_cores
from tasks.training.models.registry import growing_models, model_spec, own_lane_model
from tasks.training.tune import tuned_params, write_profile


class StageRunner(Protocol):
    logger: Any

    def call(self, stage: Any, parameters: dict) -> Any:
        """Run one stage here and return its result."""

    def pool(self, config: PipelineConfig) -> contextlib.AbstractContextManager[Pool]: ...


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


@contextlib.contextmanager
def core_shares(pool: Any, config: PipelineConfig, enabled: bool) -> Iterator[dict]:
    """The shares of the cores of the models that take those of the models done: the
    CNN's, told by a file on this machine or through the Dask cluster when it may train
    on another of its machines; the others' (XGBoost's), up to the threads worth using,
    on this machine only."""
    own_lane = own_lane_model()
    with contextlib.ExitStack() as stack:
        shares = {}
        for name in growing_models(config.models) if enabled else []:
            if name == own_lane and config.dask_address:
                share = cluster_shared_cores(pool.client)
            elif name == own_lane:
                share = shared_cores(config.cache_dir, pool.cores.threads[name], enabled=True)
            elif not config.dask_address:
                most = model_spec(name).scaling.useful_threads()
                threads = pool.cores.threads[name]
                share = shared_cores(config.cache_dir, threads, True, most, pinned=False)
            else:
                continue
            if (entered := stack.enter_context(share)) is not None:
                shares[name] = entered
        yield shares


def _run_stages(
    config: PipelineConfig, runner: StageRunner, run_id: str, started_at: float
) -> Path:
    logger, cache, refresh = runner.logger, config.cache_dir, config.refresh

    def call(stage: Any, **parameters: Any) -> Any:
        return runner.call(stage, checked(stage, parameters))

    raw, validation, data = prepare_data(call, config, logger)

    logger.info(
        "stage 3/5: train %s (%s) on %s; %s",
        ", ".join(config.models), config.task_runner, machine_cores(), detect_devices().summary,
    )  # fmt: skip
    tuning, failures = [], []
    # The CNN and XGBoost get the others' cores as they are done, where they can be told so.
    sharing = len(config.models) > 1
    with runner.pool(config) as pool, core_shares(pool, config, sharing) as shares:
        logger.info("core schedule: %s", pool.cores.describe())
        share = shares.get(own_lane_model())
        if config.tune.enabled:
            tuning, failures = tune_models(pool, config, data, logger)
        params = tuned_params(config.params, tuning)
        if tuning and config.tune.save_profile:
            write_profile(config.tune.save_profile, tuning)
            logger.info("wrote the tuned parameters to %s", config.tune.save_profile)
        untuned = {failure.model for failure in failures}
        models = [name for name in config.models if name not in untuned]
        plan, limits = None, {}
        if config.time_budget_minutes and models:
            plan, unmeasured = plan_training(
                pool, config, data, params, models, started_at, logger, share
            )
            failures += unmeasured
            params = planned_params(params, plan)
            models = [model.model for model in plan.models]
            limits = training_limits(plan, started_at, share)
        logger.info("stage 4/5: evaluate on the test set as models finish")
        results, failed = train_and_evaluate(
            pool, config, data, params, models, logger, limits, shares
        )
        failures += failed

    logger.info("stage 5/5: compare and write the report")
    if not results:
        raise ModelsFailedError(f"all {len(config.models)} models failed: {listed(failures)}")
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
    history = {"output_dir": config.output_dir, "run_id": run_id, "profile": config.profile}
    history |= {"raw": raw, "data": data, "evaluations": results}
    since = call(
        since_previous_run_task, **history, regression_tolerance=config.regression_tolerance,
        baseline=config.baseline,
    )  # fmt: skip
    context = run_context(config, raw, validation, data)
    context |= {"plan": plan and plan.as_dict(), "since_previous_run": since}
    report_dir = call(
        report_task,
        evaluations=results,
        data=data,
        output_dir=config.output_dir,
        run_id=run_id,
        context=context,
        seed=config.seed,
        tuning=tuning,
        failures=failures,
    )
    call(record_run_task, **history, regressed=bool(regressions(since)))
    if config.fail_on_regression and regressions(since):
        raise regression_error(since, report_dir)
    if failures:
        failed = [failure for failure in failures if failure.model != ENSEMBLE_NAME]
        which = f"{len(failed)} of {len(config.models)} models" if failed else "the ensemble"
        raise ModelsFailedError(
            f"{which} failed: {listed(failures)}; a rerun retrains only what failed",
            report_dir,
        )
    return report_dir


def prepare_data(
    call: Callable, config: PipelineConfig, logger: Any
) -> tuple[RawDataset, ValidationSummary, ProcessedDataset]:
    """Stages 1 and 2: the data found, checked, and split; nothing is trained on data
    that fails its checks."""
    logger.info("stage 1/5: ingest and validate the data")
    cache, refresh = config.cache_dir, config.refresh
    raw = call(
        ingest_task,
        data_dir=config.data.dir,
        cache_dir=cache,
        test_fraction=config.data.test_fraction,
        seed=config.seed,
        refresh=refresh,
    )
    validation = call(
        validate_task,
        raw=raw,
        cache_dir=cache,
        output_dir=config.output_dir,
        min_images_per_class=config.data.min_images_per_class,
        max_duplicate_fraction=config.data.max_duplicate_fraction,
        refresh=refresh,
    )
    logger.info("stage 2/5: preprocess (scale, split)")
    data = call(
        preprocess_task,
        raw=raw,
        cache_dir=cache,
        validation_size=config.validation_size,
        seed=config.seed,
        train_subset_size=config.train_subset_size,
        test_subset_size=config.test_subset_size,
        selection_size=config.selection_size,
        refresh=refresh,
    )
    return raw, validation, data
