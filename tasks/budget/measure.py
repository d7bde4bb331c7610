"""Measuring what each model's ways to train cost on this machine, before the plan: the
cheapest variant first, a costlier one only when it could fit."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from tasks.budget.plan_types import Variant
from tasks.core.contracts import TRAINING_ARRAYS, Cost, ModelFailure, ProcessedDataset
from tasks.core.errors import PipelineError
from tasks.core.stopping import RunStopped
from tasks.run.config import ModelParams
from tasks.training.models.base import ProbeData, TrainingContext, VariantSpec
from tasks.training.models.measuring import measure_cost
from tasks.training.models.registry import model_spec


def measure_variants(
    names: list[str],
    params: ModelParams,
    pinned: dict[str, frozenset[str]],
    data: ProcessedDataset,
    context: TrainingContext,
    seconds: float | None = None,
    threads: dict[str, int] | None = None,
) -> tuple[dict[str, list[Variant]], list[ModelFailure]]:
    """Each model's ways to train, most accurate first, with their cost measured here;
    and the models whose measurement failed, which the run leaves out and reports.

    The cheapest variant is measured first; a costlier one is not measured when even the
    cheaper one's steps would not fit its fewest useful ones in `seconds`. The models are
    measured predicting the data's classes, whatever `context` says, each on its
    `threads` (default: the context's).
    """
    context = replace(context, classes=len(data.class_names))
    x_train, y_train, x_val, y_val = data.load(*TRAINING_ARRAYS)
    scored = sum(data.arrays[name].shape[0] for name in ("y_selection", "y_test"))
    probe = ProbeData(x_train, y_train, x_val, y_val, scored)
    measured, failures = {}, []
    for name in names:
        try:
            own = replace(context, threads=threads[name]) if threads else context
            measured[name] = _measure_model(name, params, pinned[name], probe, own, seconds)
        except (RunStopped, PipelineError):  # not the model's: the run stops
            raise
        except Exception as error:
            failures.append(ModelFailure.from_exception(name, "measuring", error))
            context.logger.error("%s failed in measuring: %s", name, failures[-1].error)
    return measured, failures


def most_steps(
    section: Any, field: str | None, way: VariantSpec, pinned: frozenset[str] = frozenset()
) -> int:
    """The most steps a plan may give a variant: its own most (`VariantSpec.most_steps`)
    where nobody chose the steps; the configured steps where the user or a profile did
    (the quick profile's few epochs stay its cap); 0 for a model fitted in one go."""
    if not field:
        return 0
    configured = getattr(section, field)
    chosen = field in pinned or configured != type(section).model_fields[field].default
    return configured if chosen or not way.most_steps else way.most_steps


def planned_variant(
    name: str,
    way: VariantSpec,
    cost: Cost,
    section: Any,
    field: str | None,
    pinned: frozenset[str] = frozenset(),
) -> Variant:
    """A way to train a model, with what it costs, as the planner takes it: its fewest and
    most steps, on a lane of its own and on a shared one, and whether the user set them."""
    most = most_steps(section, field, way, pinned)
    shared = None
    if way.shared_most_steps is not None:
        shared = most_steps(section, field, replace(way, most_steps=way.shared_most_steps), pinned)
    return Variant(
        name, way.label, way.params, cost, field, min(way.min_steps, most), most,
        field in pinned, shared,
    )  # fmt: skip


def _measure_model(
    name: str,
    params: ModelParams,
    pinned: frozenset[str],
    probe: ProbeData,
    context: TrainingContext,
    seconds: float | None,
) -> list[Variant]:
    """One model's variants, the cheapest measured first."""
    spec, section = model_spec(name), getattr(params, name)
    budgeting = spec.budgeting
    field = budgeting.step_field
    ways = budgeting.variants(section, pinned)
    # A variant that needs more steps than the run allows is not worth measuring.
    ways = [w for w in ways if w.min_steps <= most_steps(section, field, w, pinned)] or ways[-1:]
    options: list[Variant] = []
    for way in reversed(ways):
        if options and seconds and options[0].cost.seconds(way.min_steps) > seconds:
            context.logger.info("not measuring %s (%s): it cannot fit", name, way.label)
            continue
        variant_params = type(section).model_validate(section.model_dump() | way.params)
        cost = measure_cost(spec, variant_params, probe, context)
        context.check_stop()
        variant = planned_variant(name, way, cost, section, field, pinned)
        options.insert(0, variant)
        alone = f", {cost.per_step_alone:.2f} s with every core" if cost.per_step_alone else ""
        context.logger.info(
            "measured %s (%s): %.1f s fixed, %.2f s per %s%s",
            name, way.label, cost.fixed, cost.per_step, field or "fit", alone,
        )  # fmt: skip
    return options


def slowest_costs(
    by_kind: dict[str, dict[str, list[Variant]]],
) -> tuple[dict[str, list[Variant]], dict[str, str]]:
    """Each model's variants at the cost measured on the kind of machine where they take
    longest, for a Dask cluster whose machines differ: a model may train on any of them,
    so its plan must hold on the slowest. Only what was measured on every kind is kept
    (a model that failed on one kind fails there when it trains). Also returns, for
    each model, the kind whose costs its most accurate variant got; empty for one kind."""
    if len(by_kind) == 1:
        return next(iter(by_kind.values())), {}
    first, *others = by_kind.values()
    measured: dict[str, list[Variant]] = {}
    slowest: dict[str, str] = {}
    for name in [name for name in first if all(name in found for found in others)]:
        costs: dict[str, dict[str, Cost]] = {}
        for kind, found in by_kind.items():
            for variant in found[name]:
                costs.setdefault(variant.label, {})[kind] = variant.cost
        variants = []
        for variant in first[name]:
            on_kinds = costs[variant.label]
            if len(on_kinds) < len(by_kind):
                continue
            seconds = {kind: cost.seconds(variant.max_steps) for kind, cost in on_kinds.items()}
            kind = max(seconds, key=seconds.__getitem__)
            variants.append(replace(variant, cost=on_kinds[kind]))
            slowest.setdefault(name, kind)
        if variants:
            measured[name] = variants
    return measured, slowest
