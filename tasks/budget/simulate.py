"""A simulated machine of N cores: the run's own core schedule and planner, fed with
the models' costs measured on one thread here and scaled by each one's `Scaling`, and
the plan replayed to see how long training takes and how busy the cores are.

What is simulated is the speed-up alone: the one-thread costs are measured figures, the
curves Amdahl's law through a measured two-thread point (`benchmarks/thread_scaling.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tasks.budget.plan_types import Plan, Variant
from tasks.budget.planner import SAFETY, plan_run
from tasks.budget.schedule import CoreSchedule, schedule_cores
from tasks.core.contracts import Cost, Scaling


@dataclass(frozen=True)
class SimulatedRun:
    """A planned run on `schedule.cores` simulated cores.

    Attributes:
        training_seconds: from the plan to the last model trained.
        held_share: core-seconds held by a training model, over the cores' seconds.
        work_share: one-thread seconds of the work done, over the cores' seconds: below
            `held_share` by what the threads lose to scaling.
        own_lane_steps: the steps (epochs) the model with a lane of its own trained.
    """

    schedule: CoreSchedule
    plan: Plan
    training_seconds: float
    held_share: float
    work_share: float
    own_lane_steps: int | None


def scaled_cost(one_thread: Cost, scaling: Scaling, threads: int, every_core: int = 0) -> Cost:
    """A one-thread cost on `threads` threads; with `every_core`, the step cost on them
    too (the model that gets every core once the others are done)."""
    speed = scaling.speedup(threads)
    alone = one_thread.per_step / scaling.speedup(every_core) if every_core else None
    return Cost(one_thread.fixed / speed, one_thread.per_step / speed, alone)


def simulate_run(
    cores: int,
    one_thread: dict[str, list[Variant]],
    scalings: dict[str, Scaling],
    budget_seconds: float,
    elapsed_seconds: float,
    reserve_seconds: float,
    drop_order: tuple[str, ...],
    own_lane: str | None,
    growing: tuple[str, ...] = (),
) -> SimulatedRun:
    """Schedule, plan and replay the models of `one_thread` (each one's variants with
    their one-thread costs, in training order) on `cores` cores; `growing` take the cores
    of the models done, in turn (`registry.growing_models`)."""
    schedule = schedule_cores(cores, scalings, own_lane)

    def on_its_threads(name: str, variant: Variant) -> Variant:
        threads = schedule.threads[name]
        grows = name == own_lane and schedule.lanes >= 2 and cores > threads
        cost = scaled_cost(variant.cost, scalings[name], threads, cores if grows else 0)
        return replace(variant, cost=cost)

    variants = {
        name: [on_its_threads(name, variant) for variant in options]
        for name, options in one_thread.items()
    }
    plan = plan_run(
        variants, budget_seconds, elapsed_seconds, reserve_seconds, schedule.lanes,
        drop_order, own_lane,
    )  # fmt: skip
    deadline = plan.window_seconds / SAFETY  # the training stops by then
    replayed = replay(plan, schedule, one_thread, scalings, own_lane, growing, deadline)
    capacity = cores * replayed.seconds if replayed.seconds else 1.0
    return SimulatedRun(
        schedule, plan, replayed.seconds, replayed.held / capacity,
        replayed.work / capacity, replayed.own_lane_steps,
    )  # fmt: skip


@dataclass(frozen=True)
class Replay:
    seconds: float
    held: float  # core-seconds held by training models
    work: float  # one-thread seconds of work done
    own_lane_steps: int | None


def replay(
    plan: Plan,
    schedule: CoreSchedule,
    one_thread: dict[str, list[Variant]],
    scalings: dict[str, Scaling],
    own_lane: str | None,
    growing: tuple[str, ...],
    deadline: float,
) -> Replay:
    """The plan run as the training pool runs it: `schedule.lanes` models at once in the
    plan's order, each on its threads; once no model waits, each model done hands its
    threads to the `growing` models still training, in turn, each up to every core (the
    model with a lane of its own) or the threads worth using, and the last one training
    gets that many. The model with a lane of its own trains on (to its most steps) until
    the deadline. Work is counted in one-thread seconds, done at the speed-up of the
    threads held."""
    threads = dict(schedule.threads)
    most = {
        name: schedule.cores if name == own_lane else min(schedule.cores, s.useful_threads())
        for name, s in scalings.items()
    }
    variants = {
        model.model: next(v for v in one_thread[model.model] if v.label == model.variant)
        for model in plan.models
    }
    steps = {model.model: model.steps for model in plan.models}
    for model in plan.models:
        if model.model == own_lane and model.handover is not None:
            steps[own_lane] = variants[own_lane].max_steps  # it extends while time is left
    left = {name: variant.cost.seconds(steps[name]) for name, variant in variants.items()}
    waiting = [model.model for model in plan.models]
    running: list[str] = []
    now = held = work = 0.0
    while waiting or running:
        while waiting and len(running) < schedule.lanes:
            running.append(waiting.pop(0))
        speed = {name: scalings[name].speedup(threads[name]) for name in running}
        finish = {name: left[name] / speed[name] for name in running}
        if own_lane in running:  # its most steps, or the deadline
            finish[own_lane] = min(finish[own_lane], max(0.0, deadline - now))
        name = min(finish, key=finish.get)
        step = finish[name]
        for running_name in running:
            left[running_name] -= speed[running_name] * step
            work += speed[running_name] * step
            held += threads[running_name] * step
        now += step
        running.remove(name)
        free = 0 if waiting else threads[name]
        for grower in (g for g in growing if g in running):
            taken = max(0, min(free, most[grower] - threads[grower]))
            threads[grower] += taken
            free -= taken
        if len(running) == 1 and not waiting and running[0] in growing:
            threads[running[0]] = max(threads[running[0]], most[running[0]])
    own = variants.get(own_lane)
    own_steps = None
    if own is not None:  # the steps it got through before its most, or the deadline
        done = own.cost.seconds(steps[own_lane]) - left[own_lane] - own.cost.fixed
        own_steps = min(steps[own_lane], int(done / own.cost.per_step + 1e-9))
    return Replay(now, held, work, own_steps)
