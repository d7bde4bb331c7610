"""The planning stage of a run with a time budget: measure here what each model's work
costs, then plan variants, epochs and rounds so that the run ends within its budget.

`tasks.budget.planner` does the arithmetic; this module measures, and keeps the plan as a cache
entry so that a rerun (after a cancel, or unchanged) plans the same and reuses its models.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from tasks.budget.plan_types import Plan, Variant
from tasks.budget.planner import MOST_STEPS_GIVEN_UP, plan_run
from tasks.budget.schedule import CoreSchedule
from tasks.core.contracts import ModelFailure, ProcessedDataset, content_hashes
from tasks.core.cpus import cpu_model
from tasks.core.devices import device_key
from tasks.core.storage import (
    cached_stage,
    code_version,
    content_key,
    entry_problem,
    project_code_version,
)
from tasks.run.config import ModelParams, PipelineConfig, build_config
from tasks.training.cores import CoreHandover
from tasks.training.models.registry import drop_order, model_spec, own_lane_model, step_name
from tasks.training.tune import with_overrides

# What follows training (ensemble, report), measured on a full run on an AVX2 EPYC: 19 s.
REPORT_SECONDS, REPORT_SECONDS_PER_MODEL = 12.0, 3.0
PLAN_FILE = "plan.json"


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


def plan_key(
    config: PipelineConfig, data: ProcessedDataset, params: ModelParams, cores: CoreSchedule
) -> str:
    """What a plan depends on: the budget, the models and their parameters, the data,
    the core schedule, this machine's CPU and devices, and the code that measures and
    plans."""
    measuring = [project_code_version(model_spec(name).module) for name in config.models]
    return content_key(
        config.time_budget_minutes, config.models, params.model_dump(mode="json"),
        content_hashes(data.arrays), cores.threads,
        cores.lanes, sorted(cores.machines) or cpu_model(), device_key(), measuring,
        code_version(__file__), project_code_version("tasks.budget.planner"),
        project_code_version("tasks.training.models.measuring"),
    )  # fmt: skip


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
    config: PipelineConfig,
    measured: dict[str, list[Variant]],
    elapsed_seconds: float,
    lanes: int,
) -> Plan:
    return plan_run(
        measured,
        budget_seconds=config.time_budget_minutes * 60,
        elapsed_seconds=elapsed_seconds,
        reserve_seconds=reserve_seconds(len(measured)),
        lanes=lanes,
        drop_order=drop_order(),
        dedicated=own_lane_model(),
    )


def training_limits(
    plan: Plan, started_at: float, share: CoreHandover | None = None
) -> dict[str, dict]:
    """What each model's training takes from the plan, as `train_task` parameters: the
    deadline (`time.time()`), which leaves the time of the models planned after it on its
    lane and of what it does after its last step (its predictions) before the report's
    reserve, the most steps it may extend to, and for the model that gets every core once
    the others are done, the plan's handover bound to `share`'s cores."""
    deadline = started_at + plan.budget_seconds - plan.reserve_seconds
    planned_at = started_at + plan.elapsed_seconds
    limits = {}
    for index, model in enumerate(plan.models):
        # The pool starts the plan's models in its order: those after it on its lane wait.
        later = plan.models[index + 1 :]
        waiting = sum(other.estimated_seconds for other in later if other.lane == model.lane)
        limits[model.model] = {
            "deadline": deadline - waiting - model.closing_seconds,
            "most_steps": model.max_steps,
        }
        if model.handover:
            limits[model.model]["handover"] = model.handover.bound_to(share, planned_at)
    return limits


def describe_plan(plan: Plan) -> list[str]:
    """The plan in log lines: the arithmetic, then each model and each one left out."""
    lines = [
        f"time budget {plan.budget_seconds / 60:.1f} min: {plan.elapsed_seconds:.0f} s spent "
        f"before planning, {plan.reserve_seconds:.0f} s kept for the report, "
        f"{plan.window_seconds:.0f} s to train on {plan.lanes} lane(s)"
    ]
    if plan.room_beside is not None and (own := plan.own_lane):
        lines.append(
            f"plan: the models beside {own} hold their lanes for at most "
            f"{plan.room_beside:.0f} s: longer would cost {own} over "
            f"{MOST_STEPS_GIVEN_UP:.0%} of the {step_name(own)} it trains with every core"
        )
    for model in plan.models:
        steps = f", {model.steps} {step_name(model.model)}" if model.steps else ""
        notes = f" ({'; '.join(model.notes)})" if model.notes else ""
        lines.append(
            f"plan: {model.model}: {model.variant}{steps}, about "
            f"{model.estimated_seconds:.0f} s on lane {model.lane + 1}{notes}"
        )
    lines += [f"plan: {model} left out: {why}" for model, why in plan.dropped.items()]
    return lines
