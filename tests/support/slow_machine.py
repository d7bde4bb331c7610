"""A Dask worker preload (`dask worker --preload tests.support.slow_machine`): the worker
says it runs on another kind of CPU, on which every model costs SLOWER times as much to
train, as on a cluster whose machines differ, though all of them are this one."""

from __future__ import annotations

from dataclasses import replace

import tasks.budget.measure
import tasks.core.cpus
from tasks.training.models.measuring import measure_cost

SLOW_CPU = "Slow test CPU (AVX2)"
SLOWER = 10.0


def _slow_cpu_model(*_: object) -> str:
    return SLOW_CPU


def _slow_measure_cost(*args: object, **kwargs: object):
    cost = measure_cost(*args, **kwargs)
    alone = cost.per_step_alone and cost.per_step_alone * SLOWER
    return replace(
        cost, fixed=cost.fixed * SLOWER, per_step=cost.per_step * SLOWER, per_step_alone=alone
    )


tasks.core.cpus.cpu_model = _slow_cpu_model
tasks.budget.measure.measure_cost = _slow_measure_cost
