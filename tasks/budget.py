"""The planning stage of a run with a time budget: measure here what each model's work
costs, then plan variants, epochs and rounds so that the run ends within its budget.

`tasks.planner` does the arithmetic; this module measures, and keeps the plan as a cache
entry so that a rerun (after a cancel, or unchanged) plans the same and reuses its models.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

from prefect import task

from tasks.config import ModelParams, PipelineConfig, build_config
from tasks.contracts import TRAINING_ARRAYS, ModelFailure, ProcessedDataset
from tasks.cores import CoreShare, every_core, held_to_lane
from tasks.errors import PipelineError
from tasks.models import model_spec
from tasks.models.base import ProbeData, TrainingContext
from tasks.planner import Plan, Variant, plan_run
from tasks.runtime import stage_logger
from tasks.stopping import RunStopped, check_stop
from tasks.storage import (
    cached_stage,
    code_version,
    content_key,
    entry_problem,
    project_code_version,
)
from tasks.tune import with_overrides

# Which models to leave out first when not all fit: the forest is never the best nor
# picked by the ensemble; XGBoost costs the most per point of accuracy on AVX2 CPUs.
DROP_ORDER = ("random_forest", "xgboost", "logistic_regression", "svm_rbf", "cnn")
# The CNN trains on a lane of its own: it gains the most from every minute.
DEDICATED_MODEL = "cnn"
# What follows training (ensemble, report), measured on a full run on an AVX2 EPYC: 19 s.
REPORT_SECONDS, REPORT_SECONDS_PER_MODEL = 12.0, 3.0
PLAN_FILE = "plan.json"
# What the plan's log lines call the steps of the iterative models.
STEP_NAMES = {"cnn": "epochs", "xgboost": "boosting rounds"}


def pinned_fields(config: PipelineConfig, model: str) -> frozenset[str]:
    """The fields of a model's parameters the user changed from the profile's defaults
    (a profile file, tuned values, the flow's form): the plan keeps them as they are."""
    defaults = getattr(build_config(config.profile).params, model)
    section = getattr(config.params, model)
    return frozenset(
        name
        for name in type(section).model_fields
        if getattr(section, name) != getattr(defaults, name)
    )


def reserve_seconds(models: int) -> float:
    """What the run needs after training: the ensemble and the report."""
    return REPORT_SECONDS + REPORT_SECONDS_PER_MODEL * models


def measure_variants(
    names: list[str],
    params: ModelParams,
    pinned: dict[str, frozenset[str]],
    data: ProcessedDataset,
    context: TrainingContext,
    seconds: float | None = None,
) -> tuple[dict[str, list[Variant]], list[ModelFailure]]:
    """Each model's ways to train, most accurate first, with their cost measured here;
    and the models whose measurement failed, which the run leaves out and reports.

    The cheapest variant is measured first; a costlier one is not measured when even the
    cheaper one's steps would not fit its fewest useful ones in `seconds`. The models are
    measured predicting the data's classes, whatever `context` says.
    """
    context = replace(context, classes=len(data.class_names))
    x_train, y_train, x_val, y_val = data.load(*TRAINING_ARRAYS)
    probe = ProbeData(x_train, y_train, x_val, y_val, data.arrays["y_test"].shape[0])
    measured, failures = {}, []
    for name in names:
        try:
            measured[name] = _measure_model(name, params, pinned[name], probe, context, seconds)
        except (RunStopped, PipelineError):  # not the model's: the run stops
            raise
        except Exception as error:
            failures.append(ModelFailure.from_exception(name, "measuring", error))
            context.logger.error("%s failed in measuring: %s", name, failures[-1].error)
    return measured, failures


def _measure_model(
    name: str,
    params: ModelParams,
    pinned: frozenset[str],
    probe: ProbeData,
    context: TrainingContext,
    seconds: float | None,
) -> list[Variant]:
    """One model's variants, the cheapest measured first."""
    budgeting, section = model_spec(name).budgeting, getattr(params, name)
    field = budgeting.step_field
    most = getattr(section, field) if field else 0
    ways = budgeting.variants(section, pinned)
    # A variant that needs more steps than the run allows is not worth measuring.
    ways = [way for way in ways if way[2] <= most] or ways[-1:]
    options: list[Variant] = []
    for label, updates, min_steps in reversed(ways):
        if options and seconds and options[0].cost.seconds(min_steps) > seconds:
            context.logger.info("not measuring %s (%s): it cannot fit", name, label)
            continue
        variant_params = type(section).model_validate(section.model_dump() | updates)
        cost = budgeting.measure(variant_params, probe, context)
        context.check_stop()
        pinned_steps = field in pinned
        variant = Variant(
            name, label, updates, cost, field, min(min_steps, most), most, pinned_steps
        )
        options.insert(0, variant)
        alone = f", {cost.per_step_alone:.2f} s with every core" if cost.per_step_alone else ""
        context.logger.info(
            "measured %s (%s): %.1f s fixed, %.2f s per %s%s",
            name, label, cost.fixed, cost.per_step, field or "fit", alone,
        )  # fmt: skip
    return options


@task(name="measure-costs", task_run_name="measure-{names}")
def measure_task(
    names: list[str],
    params: ModelParams,
    pinned: dict[str, frozenset[str]],
    data: ProcessedDataset,
    seed: int,
    threads: int,
    seconds: float | None = None,
    cores: CoreShare | None = None,
) -> tuple[dict[str, list[Variant]], list[ModelFailure]]:
    """With `cores`, measured as the model will train: threads sized to every core, held
    to the lane's beside the others, then on every core once they are measured."""
    threads = cores.threads if cores else threads
    context = TrainingContext(seed, threads, stage_logger(), check_stop=check_stop)
    if cores:
        context = replace(context, every_core=partial(every_core, cores, check_stop))
    with held_to_lane(cores, context.logger, until_released=False):
        return measure_variants(names, params, pinned, data, context, seconds)


def plan_key(
    config: PipelineConfig, data: ProcessedDataset, params: ModelParams, threads: int
) -> str:
    """What a plan depends on: the budget, the models and their parameters, the data,
    the thread count, this machine's CPU and the code that measures and plans."""
    measuring = [project_code_version(model_spec(name).module) for name in config.models]
    return content_key(
        config.time_budget_minutes, config.models, params.model_dump(mode="json"),
        {name: ref.sha256 for name, ref in data.arrays.items()}, threads,
        config.parallel_models, cpu_model(), measuring,
        code_version(__file__), project_code_version("tasks.planner"),
    )  # fmt: skip


def cpu_model() -> str:
    """The CPU's model name, and whether it has AVX-512 BF16: plans do not travel."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    name = next(
        (
            line.split(":", 1)[1].strip()
            for line in info.splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    return f"{name}{' avx512_bf16' if 'avx512_bf16' in info else ''}"


def cached_plan(
    target: Path,
    make: Callable[[], tuple[Plan, list[ModelFailure]]],
    refresh: bool,
    logger: logging.Logger,
) -> tuple[Plan, list[ModelFailure]]:
    """The plan kept at `target`, or `make()`'s, kept there for reruns; not when a model
    failed to be measured, so that a rerun measures it again and plans it in."""
    if not refresh and target.exists() and entry_problem(target) is None:
        logger.info("reused plan: %s", target)
        return read_plan(target), []
    plan, failures = make()
    if not failures:

        def write(staging: Path) -> None:
            (staging / PLAN_FILE).write_text(json.dumps(plan.as_dict(), indent=2))

        cached_stage(target, write, read_plan, "plan", refresh=True, logger=logger)
    return plan, failures


def read_plan(directory: Path) -> Plan:
    return Plan.from_dict(json.loads((directory / PLAN_FILE).read_text()))


def planned_params(params: ModelParams, plan: Plan) -> ModelParams:
    """`params` with what the plan chose for each model."""
    for model in plan.models:
        params = with_overrides(params, model.model, model.params)
    return params


def make_plan(
    config: PipelineConfig, measured: dict[str, list[Variant]], elapsed_seconds: float
) -> Plan:
    return plan_run(
        measured,
        budget_seconds=config.time_budget_minutes * 60,
        elapsed_seconds=elapsed_seconds,
        reserve_seconds=reserve_seconds(len(measured)),
        lanes=config.parallel_models,
        drop_order=DROP_ORDER,
        dedicated=DEDICATED_MODEL,
    )


def training_limits(plan: Plan, started_at: float) -> dict[str, dict]:
    """What each model's training takes from the plan, as `train_task` parameters: the
    deadline (`time.time()`), the most steps it may extend to, and for the model that gets
    every core once the others are done, when the plan expects that and its speed-up."""
    deadline = started_at + plan.budget_seconds - plan.reserve_seconds
    planned_at = started_at + plan.elapsed_seconds
    limits = {}
    for model in plan.models:
        limits[model.model] = {"deadline": deadline, "most_steps": model.max_steps}
        if model.alone_after is not None:
            limits[model.model] |= {
                "alone_from": planned_at + model.alone_after,
                "speedup_alone": model.speedup_alone,
            }
    return limits


def describe_plan(plan: Plan) -> list[str]:
    """The plan in log lines: the arithmetic, then each model and each one left out."""
    lines = [
        f"time budget {plan.budget_seconds / 60:.1f} min: {plan.elapsed_seconds:.0f} s spent "
        f"before planning, {plan.reserve_seconds:.0f} s kept for the report, "
        f"{plan.window_seconds:.0f} s to train on {plan.lanes} lane(s)"
    ]
    for model in plan.models:
        steps = f", {model.steps} {STEP_NAMES.get(model.model, 'steps')}" if model.steps else ""
        notes = f" ({'; '.join(model.notes)})" if model.notes else ""
        lines.append(
            f"plan: {model.model}: {model.variant}{steps}, about "
            f"{model.estimated_seconds:.0f} s on lane {model.lane + 1}{notes}"
        )
    lines += [f"plan: {model} left out: {why}" for model, why in plan.dropped.items()]
    return lines
