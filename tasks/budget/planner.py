"""Planning a run to its time budget, from what its work was measured to cost here.

Plain functions over the measured costs: which variant of each model to train, how many
epochs or boosting rounds, and which models to leave out, so that every lane of the
training pool ends by the deadline and none idles long before the others.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from functools import partial

from tasks.budget.plan_types import ModelPlan, Plan, Variant
from tasks.core.errors import UsageError
from tasks.training.cores import CoreHandover

# What the estimates may be off by, before a model would run past the deadline; the
# CNN and XGBoost also stop at the deadline itself, the one-shot fits cannot.
SAFETY = 0.9

# The most of the steps the model with a lane of its own would train with every core from
# the start that the models beside it may cost it: while they hold their lanes its steps
# take `speedup` times as long (the small network's 27 s an epoch against 15, on the AVX2
# EPYC). Re-planned from that CPU's measured runs, they cost it 10 to 27 % at 15 and 30
# minutes, left as they were (measured in a slow moment, XGBoost loses rounds at 15 too),
# and half its 12 epochs at 5, where this gives them 147 s of the 216 and it 9
# (`docs/time_budget.md`).
MOST_STEPS_GIVEN_UP = 0.3


class BudgetTooSmallError(UsageError):
    """Not even the cheapest useful plan fits the time budget."""


def lanes_of(durations: list[float], lanes: int) -> tuple[list[int], list[float]]:
    """Longest-first list scheduling, as the training pool runs its queue: each task goes
    to the lane that frees up first. Returns each task's lane and each lane's load."""
    loads, placed = [0.0] * lanes, [0] * len(durations)
    for index in sorted(range(len(durations)), key=lambda i: -durations[i]):
        lane = loads.index(min(loads))
        placed[index], loads[lane] = lane, loads[lane] + durations[index]
    return placed, loads


def lane_seconds(models: Iterable[ModelPlan], lanes: int) -> list[float]:
    """Each of the `lanes` lanes' seconds: its models' estimates, one after the other."""
    loads = [0.0] * lanes
    for plan in models:
        loads[plan.lane] += plan.estimated_seconds
    return loads


def plan_run(
    variants: dict[str, list[Variant]],
    budget_seconds: float,
    elapsed_seconds: float,
    reserve_seconds: float,
    lanes: int,
    drop_order: tuple[str, ...],
    dedicated: str | None = None,
) -> Plan:
    """Fit the models to the time left: `budget - elapsed - reserve`, on `lanes` lanes.

    Args:
        variants: each model's ways to train, most accurate first.
        reserve_seconds: what comes after training (ensemble, report).
        drop_order: which models to leave out first when the others do not fit.
        dedicated: a model that gets a lane of its own when there are two or more (the
            CNN: it gains the most from the time, and trains best on a core of its own);
            the others hold their lanes beside it no longer than costs it
            `MOST_STEPS_GIVEN_UP` of its steps.

    Raises:
        BudgetTooSmallError: not even the cheapest model fits; the message names the
            budget that would.
    """
    window = (budget_seconds - elapsed_seconds - reserve_seconds) * SAFETY
    cheapest = min(
        (v.cost.seconds(v.min_steps), name) for name, options in variants.items() for v in options
    )
    if cheapest[0] > window:
        minimum = elapsed_seconds + reserve_seconds + cheapest[0] / SAFETY
        raise BudgetTooSmallError(
            f"a time budget of {budget_seconds / 60:.1f} min cannot fit the cheapest useful "
            f"plan on this machine: {cheapest[1]} alone needs about {math.ceil(minimum / 60)} "
            f"min from the start (measured here; {elapsed_seconds:.0f} s have passed)"
        )
    own_lane = dedicated if dedicated in variants and lanes >= 2 else None
    others = {name: options for name, options in variants.items() if name != own_lane}
    shared_lanes = lanes - 1 if own_lane else lanes
    fill = partial(
        _fill_lanes, window=window, lanes=shared_lanes, drop_order=drop_order,
        first_lane=int(bool(own_lane)), beside=own_lane,
    )  # fmt: skip
    room, planned_own_lane = None, None
    if own_lane:
        own = variants[own_lane]
        plans, dropped, chosen, room = _plan_beside(own, others, window, fill)
        others_done = _lanes_done(plans)
        if chosen:
            plans.insert(0, _model_plan(chosen[0], chosen[1], window, 0, others_done))
            planned_own_lane = own_lane
        else:
            dropped[own_lane] = _no_room(own[-1], window)
    else:
        plans, dropped = fill(others)
    return Plan(
        budget_seconds, elapsed_seconds, reserve_seconds, window, lanes,
        tuple(plans), dropped, room, planned_own_lane,
    )  # fmt: skip


def _plan_beside(
    own: list[Variant],
    others: dict[str, list[Variant]],
    window: float,
    fill: Callable[..., tuple[list[ModelPlan], dict[str, str]]],
) -> tuple[list[ModelPlan], dict[str, str], tuple[Variant, int] | None, float | None]:
    """The others' plans, the models left out, the dedicated model's variant and steps,
    and the seconds the others were given where fewer than the window: its most accurate
    variant that still gets its fewest useful steps while the others hold their lanes no
    longer than costs it `MOST_STEPS_GIVEN_UP` of the steps it would train with every core
    from the start. Where none does (steps the user set hold a lane), the others over the
    whole window: leaving out models the user did not set would not make it fit."""
    for variant in own:
        limit = _room_beside(variant, window)
        if limit is None:
            continue
        room = limit if limit < window else None
        plans, dropped = fill(others, room=room)
        steps = _steps_that_fit(variant, window, _lanes_done(plans))
        if steps is not None:
            return plans, dropped, (variant, steps), room
    plans, dropped = fill(others)
    return plans, dropped, _best_variant(own, window, _lanes_done(plans)), None


def _room_beside(variant: Variant, window: float) -> float | None:
    """The longest the others may hold their lanes beside `variant` and cost it at most
    `MOST_STEPS_GIVEN_UP` of the steps it trains in `window` with every core from the
    start (at most its most); None where it does not get its fewest useful steps even so."""
    if _steps_that_fit(variant, window, 0.0) is None:
        return None
    cost, most = variant.cost, variant.max_steps
    least = math.ceil(cost.steps_within(window, most, 0.0) * (1 - MOST_STEPS_GIVEN_UP))
    if cost.steps_within(window, most, window) >= least:  # beside them all along
        return window
    # Its steps fall as the others' seconds grow.
    return _largest_holding(lambda shared: cost.steps_within(window, most, shared) >= least,
                            window, rounds=40)  # fmt: skip


def _largest_holding(holds: Callable[[float], bool], high: float, rounds: int) -> float:
    """The largest value in [0, `high`] at which `holds`, to `rounds` halvings: `holds` is
    true at 0 and, once false, false above."""
    low = 0.0
    for _ in range(rounds):
        middle = (low + high) / 2
        low, high = (middle, high) if holds(middle) else (low, middle)
    return low


def _lanes_done(plans: list[ModelPlan]) -> float:
    """When the last of the planned models' lanes is done, in seconds."""
    return max(lane_seconds(plans, 1 + max((plan.lane for plan in plans), default=0)))


def _best_variant(
    options: list[Variant], seconds: float, shared_seconds: float
) -> tuple[Variant, int] | None:
    """The first (most accurate) variant that gets its fewest useful steps in `seconds`,
    sharing the cores for the first `shared_seconds`, with the steps that fit, or those
    the user set; None when none does, but the cheapest where the user set the steps:
    kept, it stops at the deadline."""
    for variant in options:
        steps = _steps_that_fit(variant, seconds, shared_seconds)
        if steps is not None:
            return variant, steps
    cheapest = options[-1]
    return (cheapest, cheapest.max_steps) if cheapest.steps_pinned else None


def _steps_that_fit(variant: Variant, seconds: float, shared_seconds: float) -> int | None:
    """The steps `variant` trains in `seconds`, sharing the cores for the first
    `shared_seconds`, or those the user set; None below its fewest useful steps."""
    steps = variant.cost.steps_within(seconds, variant.max_steps, shared_seconds)
    least = variant.cost.seconds(variant.min_steps, shared_seconds)
    if least <= seconds and steps >= variant.min_steps:
        return variant.max_steps if variant.steps_pinned else steps
    return None


def _no_room(cheapest: Variant, seconds: float) -> str:
    """Why the cheapest variant of a model is left out of a lane of `seconds`."""
    steps = f"{cheapest.min_steps} {cheapest.step_field}" if cheapest.iterative else "one fit"
    return (
        f"needs about {cheapest.cost.seconds(cheapest.min_steps):.0f} s ({steps}), more than "
        f"the {seconds:.0f} s its lane has"
    )


def _fill_lanes(
    variants: dict[str, list[Variant]],
    window: float,
    lanes: int,
    drop_order: tuple[str, ...],
    first_lane: int,
    beside: str | None = None,
    room: float | None = None,
) -> tuple[list[ModelPlan], dict[str, str]]:
    """The models sharing lanes: each at its first variant, the iterative ones with as
    many steps as keep every lane within `room` (the window, or the seconds they may hold
    their lanes beside the model with one of its own, `beside`); models left out in
    `drop_order` until the others fit. Returns their plans and the models left out, with
    why."""
    limit = window if room is None else room
    span = f"the {window:.0f} s window"
    if room is not None:
        span = f"the {room:.0f} s the models beside {beside} may take"
    kept, dropped = {}, {}
    for name, options in variants.items():  # what cannot fit even alone goes first
        cheapest = min(v.cost.seconds(v.min_steps) for v in options)
        if cheapest > limit and not any(v.steps_pinned for v in options):
            dropped[name] = f"needs about {cheapest:.0f} s, more than {span}"
        else:
            kept[name] = options
    while kept:
        chosen = {name: options[0].sharing() for name, options in kept.items()}
        steps = {name: v.max_steps if v.iterative else None for name, v in chosen.items()}
        trimmable = [n for n, v in chosen.items() if v.iterative and not v.steps_pinned]
        fits = partial(_fits, chosen, window=window, limit=limit, lanes=lanes)
        if not fits(steps):
            steps = _trim_to_fit(chosen, steps, trimmable, fits)
        too_few = [n for n in trimmable if steps[n] < chosen[n].min_steps]
        droppable = [n for n in drop_order if n in kept and not chosen[n].steps_pinned]
        if (fits(steps) and not too_few) or not droppable:
            loads = _lane_loads(chosen, steps, window)
            placed, _ = lanes_of(loads, lanes)
            plans = [
                _model_plan(chosen[name], steps[name], window, lane=first_lane + lane)
                for name, lane in zip(chosen, placed, strict=True)
            ]
            # Longest first: the training pool starts them in this order, each on the lane
            # that frees up first, as `lanes_of` placed them.
            return [plans[i] for i in sorted(range(len(plans)), key=lambda i: -loads[i])], dropped
        # A cheaper variant of a model first (the SVM on fewer components), then leave
        # models out in `drop_order` until the lanes fit with every model's fewest steps.
        cheaper = next((n for n in drop_order if n in kept and len(kept[n]) > 1), None)
        if cheaper:
            first, second, *rest = kept[cheaper]
            if second.cost.seconds(second.min_steps) < first.cost.seconds(first.min_steps):
                kept[cheaper] = [second, *rest]
            else:  # measured no cheaper here
                kept[cheaper] = [first, *rest]
            continue
        victim = droppable[0]
        dropped[victim] = f"{span} cannot hold it with the models kept"
        del kept[victim]
    return [], dropped


def _fits(
    chosen: dict[str, Variant],
    steps: dict[str, int | None],
    window: float,
    limit: float,
    lanes: int,
) -> bool:
    """Whether every lane ends within `limit` seconds."""
    _, loads = lanes_of(_lane_loads(chosen, steps, window), lanes)
    return max(loads, default=0.0) <= limit


def _trim_to_fit(
    chosen: dict[str, Variant],
    steps: dict[str, int | None],
    trimmable: list[str],
    fits: Callable[[dict[str, int | None]], bool],
) -> dict[str, int | None]:
    """`steps` with the `trimmable` models' cut together, in proportion, until they `fit`."""

    def trimmed(share: float) -> dict[str, int | None]:
        return steps | {n: math.floor(chosen[n].max_steps * share) for n in trimmable}

    return trimmed(_largest_holding(lambda share: fits(trimmed(share)), 1.0, rounds=30))


def _lane_loads(
    chosen: dict[str, Variant], steps: dict[str, int | None], window: float
) -> list[float]:
    """Each model's seconds on its lane; steps the user set past `window` end at the deadline."""
    seconds = {name: variant.cost.seconds(steps[name]) for name, variant in chosen.items()}
    return [min(seconds[n], window) if v.steps_pinned else seconds[n] for n, v in chosen.items()]


def _model_plan(
    variant: Variant,
    steps: int | None,
    window: float,
    lane: int,
    alone_after: float | None = None,
) -> ModelPlan:
    cost, handover = variant.cost, None
    if alone_after is not None and cost.per_step_alone:
        handover = CoreHandover(after=alone_after, speedup=cost.speedup)
    seconds = cost.seconds(steps, alone_after if handover else None)
    notes, params = [], dict(variant.params)
    if variant.iterative:
        params[variant.step_field] = steps
        if steps < variant.max_steps:
            notes.append(f"{variant.step_field} {variant.max_steps} -> {steps} to fit the budget")
        if variant.steps_pinned and seconds > window:
            notes.append(
                f"{variant.step_field}={steps} was set explicitly: about {seconds:.0f} s, more "
                f"than the {window:.0f} s window; it stops at the deadline"
            )
    if handover:
        notes.append(f"every core after about {alone_after:.0f} s, when the others are done")
    closing = cost.closing / cost.speedup if handover else cost.closing
    if variant.iterative and closing >= 1:
        notes.append(f"training ends {closing:.0f} s before the deadline, for its predictions")
    most = variant.max_steps if variant.iterative else None
    return ModelPlan(
        variant.model, variant.label, params, steps, seconds, lane, tuple(notes), most,
        handover, closing,
    )  # fmt: skip
