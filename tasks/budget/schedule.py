"""How many models train at once, and on how many threads each: planned from the cores
this process may use and how each model's work scales with threads (`Scaling`).

Plain functions of a core count, so that a simulated machine of 1 to 64 cores drives
them as the real one does (`tasks.budget.simulate`).

The rule, and why:
- fewer cores than models: one lane per core and one thread per model. A thread does
  the most work alone (every curve here is below linear), and the queue keeps every
  core busy until the last models, when the CNN gets every core (`CoreHandover`);
- as many cores as models, or more: every model starts at once. A model that uses one
  thread (libsvm's SVC) gets one; each other model an equal share of the rest, up to
  the threads it can use (`Scaling.useful_threads`); the model with a lane of its own
  (the CNN, which fills the time budget) gets what is left.
Either way, once no model waits to start, the cores of each model done go to the models
still training that take more threads (`flows.parallel.train_and_evaluate`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tasks.core.contracts import Scaling
from tasks.core.cpus import HostThreads


@dataclass(frozen=True)
class CoreSchedule:
    """Models trained at once (`lanes`), and each model's threads, on `cores` cores; on a
    Dask cluster, each host's share (`HostThreads`), and its `machines`: the workers on
    each kind of CPU, each kind measured on its own."""

    cores: int
    lanes: int
    threads: dict[str, int | HostThreads]
    machines: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def threads_for(self, model: str) -> int | HostThreads:
        return self.threads[model]

    def describe(self) -> str:
        """For the log: "5 at a time on 16 core(s), threads: cnn 7, xgboost 3, …"."""
        each = ", ".join(f"{name} {threads}" for name, threads in self.threads.items())
        return f"{self.lanes} at a time on {self.cores} core(s), threads: {each}"


def schedule_cores(
    cores: int,
    scalings: dict[str, Scaling],
    own_lane: str | None = None,
    parallel_models: int | None = None,
    threads_per_model: int | None = None,
) -> CoreSchedule:
    """The lanes and threads for the models of `scalings` (in training order) on `cores`.

    `parallel_models` and `threads_per_model`, the user's, override the plan: with
    either, every model gets the same threads (the given ones, or the cores shared evenly
    between the lanes)."""
    models = list(scalings)
    cores = max(1, cores)
    if parallel_models or threads_per_model:
        lanes = parallel_models or min(len(models), cores) or 1
        threads = threads_per_model or max(1, cores // lanes)
        return CoreSchedule(cores, lanes, dict.fromkeys(models, threads))
    if cores < len(models):
        return CoreSchedule(cores, cores, dict.fromkeys(models, 1))
    return CoreSchedule(cores, len(models), _shares(cores, scalings, own_lane))


def _shares(cores: int, scalings: dict[str, Scaling], own_lane: str | None) -> dict[str, int]:
    """Every model at once: one thread where one is all it uses; equal shares of the
    rest, up to what each can use; the remainder to `own_lane`, or else round the others."""
    threads = {name: 1 for name, scaling in scalings.items() if scaling.most_threads == 1}
    scaling_models = [name for name in scalings if name not in threads]
    if not scaling_models:
        return {name: threads[name] for name in scalings}
    rest = cores - len(threads)
    share = rest // len(scaling_models)
    for name in scaling_models:
        if name != own_lane:
            threads[name] = max(1, min(share, scalings[name].useful_threads()))
    left = rest - sum(threads[name] for name in scaling_models if name != own_lane)
    if own_lane in scaling_models:
        threads[own_lane] = max(1, left)
    else:  # no model fills the time: the rest to those that can still use it
        while left > 0 and (
            growing := [n for n in scaling_models if threads[n] < scalings[n].useful_threads()]
        ):
            for name in growing[:left]:
                threads[name] += 1
                left -= 1
    return {name: threads[name] for name in scalings}
