"""The stages that run side by side in the training pool: tuning trials, measuring the
models' costs, training and evaluation. A model that fails is recorded and left out.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from typing import Any, Protocol

from tasks.budget.measure import slowest_costs
from tasks.budget.plan_types import Plan, Variant
from tasks.budget.plans import (
    cached_plan,
    describe_plan,
    make_plan,
    pinned_fields,
    plan_key,
    reserve_seconds,
)
from tasks.budget.schedule import CoreSchedule
from tasks.budget.stages import measure_task
from tasks.core.contracts import ModelEvaluation, ModelFailure, ProcessedDataset, TuningSummary
from tasks.core.cpus import threads_here
from tasks.core.errors import ModelsFailedError, RunEnvironmentError
from tasks.core.stopping import RunStopped, stop_requested, stop_signal
from tasks.evaluation.stages import evaluate_task
from tasks.run.config import PipelineConfig
from tasks.training.cores import CoreHandover
from tasks.training.models.registry import growing_models, own_lane_model
from tasks.training.stages import train_task, trial_task
from tasks.training.tune import TrialRequest, TuningSession, study_key


class Future(Protocol):
    def result(self) -> Any: ...


class Pool(Protocol):
    """Runs stages side by side: Prefect's task runner, or a process pool."""

    cores: CoreSchedule

    def submit(
        self,
        stage: Any,
        parameters: dict,
        wait_for: Iterable[Future] = (),
        workers: Collection[str] = (),
    ) -> Future:
        """Run `stage` once `wait_for` are done; on a Dask cluster, on one of `workers`
        where any are named (a pool of one machine has nowhere else to run it)."""

    def as_completed(self, futures: Iterable[Future]) -> Iterator[Future]: ...


def checked(stage: Any, parameters: dict) -> dict:
    """`parameters`, once they bind to the stage's signature: a misspelled or missing name
    fails here, before anything is submitted, not in a worker."""
    function: Callable = getattr(stage, "fn", stage)
    try:
        inspect.signature(function).bind(**parameters)
    except TypeError as error:
        raise TypeError(f"{getattr(stage, 'name', function.__name__)}: {error}") from None
    return parameters


def submit(
    pool: Pool,
    stage: Any,
    wait_for: Iterable[Future] = (),
    workers: Collection[str] = (),
    **parameters: Any,
) -> Future:
    """Submit a stage to the pool once its parameters bind to its signature."""
    return pool.submit(stage, checked(stage, parameters), wait_for, workers)


# Why a model failed when a worker process of the processes runner died: Python's process
# pool then fails every task it holds, not only the one the process ran.
WORKER_PROCESS_DIED = (
    "a worker process was killed (as the kernel's out-of-memory killer does) and the "
    "process pool failed every task it held"
)


def listed(failures: list[ModelFailure]) -> str:
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
    if isinstance(error, BrokenProcessPool):  # the pool starts afresh for the next models
        failure = replace(failure, error=WORKER_PROCESS_DIED)
    logger.error("%s failed in %s: %s", model, stage, failure.error)
    return failure


def _share_of(models: list[str], share: CoreHandover | None) -> CoreHandover | None:
    """The growing share of the cores goes to the CNN, which can use it."""
    return share if own_lane_model() in models else None


def plan_training(
    pool: Pool,
    config: PipelineConfig,
    data: ProcessedDataset,
    params: Any,
    models: list[str],
    started_at: float,
    logger: Any,
    share: CoreHandover | None = None,
) -> tuple[Plan, list[ModelFailure]]:
    """Measure the models' costs here and plan them to the budget; a rerun reuses the
    plan, and so the models it trained. The CNN is measured beside the others as they will
    train, on its lane's cores of `share`, and once they are measured on every core too.
    On a Dask cluster of several kinds of machine, each kind is measured, and the plan
    holds on the slowest. A model whose measurement fails is left out of the plan and
    returned as a failure."""
    key = plan_key(config, data, params, pool.cores)

    own_lane = own_lane_model()

    def measure_and_plan() -> tuple[Plan, list[ModelFailure]]:
        pinned = {name: pinned_fields(config, name) for name in models}
        groups = [
            [n for n in models if n == own_lane],
            [n for n in models if n != own_lane],
        ]
        # One kind of machine: wherever the pool runs it. Several: on each kind.
        kinds = pool.cores.machines if len(pool.cores.machines) > 1 else {"": ()}
        left = config.time_budget_minutes * 60 - (time.time() - started_at)
        common = {"params": params, "pinned": pinned, "data": data, "seed": config.seed}
        common["seconds"] = left - reserve_seconds(len(models))
        futures = {
            submit(
                pool,
                measure_task,
                workers=workers,
                names=group,
                handover=_share_of(group, share),
                threads={name: pool.cores.threads_for(name) for name in group},
                **common,
            ): (kind, group)
            for kind, workers in kinds.items()
            for group in groups
            if group
        }
        by_kind: dict[str, dict[str, list[Variant]]] = {kind: {} for kind in kinds}
        failures = []
        # The others' first: once they are measured, the CNN times every core.
        for future, (kind, group) in sorted(futures.items(), key=lambda f: own_lane in f[1][1]):
            if share and own_lane in group:
                share.release()
            try:
                found, failed = future.result()  # the models' failures logged by the task
            except Exception as error:  # the task's own: a killed worker process
                found, failed = {}, [isolated(n, "measuring", error, logger) for n in group]
            by_kind[kind] |= found
            if kind:  # say on which kind of machine it failed
                failed = [replace(f, stage=f"measuring on {kind}") for f in failed]
            failures += failed
        if share:
            share.withhold()  # until the others are trained
        measured, slowest = slowest_costs(by_kind)
        if slowest:
            logger.info(
                "measured on %d kinds of machine; planned for the slowest: %s",
                len(kinds), ", ".join(f"{name} on {kind}" for name, kind in slowest.items()),
            )  # fmt: skip
        if not measured:
            raise ModelsFailedError(f"all {len(models)} models failed: {listed(failures)}")
        elapsed = time.time() - started_at
        return make_plan(config, measured, elapsed, pool.cores.lanes), failures

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
    limits: dict[str, dict] | None = None,
    shares: dict[str, CoreHandover] | None = None,
) -> tuple[list[ModelEvaluation], list[ModelFailure]]:
    """`parallel_models` models train at once, in the order of `models`; each is evaluated
    as soon as it is trained, and its evaluation is submitted before the next model's
    training, so that it never waits behind that training for a worker (the plan counts a
    model's prediction on its lane, right after its fit). A model whose training or
    evaluation fails is recorded and the others go on. `limits` are the plan's for each
    model (`training_limits`), the CNN's handover among them. Once no model waits to
    start, each model done (trained and evaluated) grants its cores to the models still
    training that take them (`shares`: the CNN first, then XGBoost, each up to its share's
    cores); the last one training gets all of its share."""
    common = {"data": data, "cache_dir": config.cache_dir, "refresh": config.refresh}
    shares = shares or {}
    waiting = list(models)
    trainings: dict[Future, str] = {}
    held: dict[str, int] = {}  # the cores of each model training: its threads, and grants

    def start_next_training() -> None:
        name = waiting.pop(0)
        # The plan's handover, bound to the cores, where it counts on every core.
        limit = {"handover": shares.get(name)} | (limits or {}).get(name, {})
        threads = pool.cores.threads_for(name)
        held[name] = threads_here(threads)
        future = submit(
            pool, train_task, name=name, params=params, seed=config.seed, threads=threads,
            **limit, **common,
        )  # fmt: skip
        trainings[future] = name

    def hand_out(cores: int) -> None:
        """The cores of a model done, to the models training that take them, in turn."""
        for name in growing_models(trainings.values()):
            share = shares.get(name)
            taken = min(cores, len(share.all_cores) - held[name]) if share else 0
            if taken > 0:
                share.grant(taken)
                held[name] += taken
                cores -= taken

    while waiting and len(trainings) < pool.cores.lanes:
        start_next_training()
    evaluations, failures = {}, []
    # Evaluations whose model's cores are handed out once done: no model took its lane.
    granting: dict[Future, str] = {}
    while trainings:
        last = next(iter(trainings.values())) if len(trainings) == 1 else None
        if last in shares and not waiting and not granting and not shares[last].released:
            logger.info("the other models are done: %s may use every core it can", last)
            shares[last].release()
            held[last] = len(shares[last].all_cores)
        done = next(iter(pool.as_completed([*trainings, *granting])))
        if done in granting:
            hand_out(held.pop(granting.pop(done)))
            continue
        name = trainings.pop(done)
        lane_free = not waiting
        try:
            model = done.result()
        except Exception as error:
            failures.append(isolated(name, "training", error, logger))
            if lane_free:
                hand_out(held.pop(name))
        else:
            # The CNN predicts with the pools it trained with.
            threads = pool.cores.threads_for(model.name)
            share = shares.get(model.name)
            if share and share.pinned and share.threads:
                threads = share.threads
            evaluation = submit(
                pool, evaluate_task, wait_for=[done], trained=model, threads=threads, **common
            )
            evaluations[evaluation] = model.name
            if lane_free:
                granting[evaluation] = model.name
        if waiting:
            start_next_training()
    results = []
    for evaluation, name in evaluations.items():
        try:
            results.append(evaluation.result())
        except Exception as error:
            failures.append(isolated(name, "evaluation", error, logger))
    return results, failures


def tune_models(
    pool: Pool, config: PipelineConfig, data: ProcessedDataset, logger: Any
) -> tuple[list[TuningSummary], list[ModelFailure]]:
    """Run the session's trials `parallel_models` at a time until every model's budget
    is used; trials are tasks of the same pool the models train in. A model whose trial
    fails gets no more trials; without a completed one it is not trained."""
    tune = config.tune
    logger.info(
        "tuning %s on the validation split, %.1f min each, %d trials at a time",
        ", ".join(config.models), tune.budget_minutes, pool.cores.lanes,
    )  # fmt: skip
    key = study_key(config.models, config.params, tune.train_subset_size, config.seed, data)
    study_dir = config.cache_dir / "tuning" / key
    session = TuningSession(config.models, config.params, tune.budget_minutes, study_dir)
    if resumed := {model: trials for model, trials in session.resumed.items() if trials}:
        logger.info(
            "tuning resumes an earlier run's search (%s): %s",
            study_dir, ", ".join(f"{model} {n} trials" for model, n in resumed.items()),
        )  # fmt: skip
    running: dict[Future, TrialRequest] = {}
    while True:
        while len(running) < pool.cores.lanes and (request := session.next_trial()):
            parameters = {
                "request": request,
                "params": config.params,
                "data": data,
                "study_dir": study_dir,
                "train_subset_size": tune.train_subset_size,
                "seed": config.seed,
                "threads": pool.cores.threads_for(request.model),
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
