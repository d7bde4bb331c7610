"""One fake of flows/parallel.py's `Pool` protocol for the stage-graph tests."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import as_completed as futures_completed
from typing import Any

from tasks.budget.schedule import CoreSchedule


class _OneThreadEach(dict):
    def __missing__(self, model: str) -> int:
        return 1


class FakePool:
    """Runs the stages it is given without Prefect, recording each submission as
    (stage name, parameters, the futures it waits for).

    With `threads=0` each stage runs at once in this thread, in the order submitted, and
    `as_completed` hands the futures back in that order. With `threads=n` they run on n
    threads taking the submissions in turn, as a task runner's queue does (one thread:
    strictly in turn; two: models side by side, as on Prefect's). `lanes` models train
    at once, each on one thread.

    A Prefect task runs as its plain function (`.fn`); a stage the test replaced with a
    plain function runs as it is. A stage's exception is handed back in its future, as a
    worker would hand it back.
    """

    def __init__(self, threads: int = 0, lanes: int = 2) -> None:
        self.cores = CoreSchedule(lanes, lanes, _OneThreadEach())
        self.submitted: list[tuple[str, dict, list]] = []
        self.executor = ThreadPoolExecutor(threads) if threads else None

    def submit(
        self,
        stage: Any,
        parameters: dict,
        wait_for: Iterable[Future] = (),
        workers: Collection[str] = (),
    ) -> Future:
        self.submitted.append((getattr(stage, "name", stage.__name__), parameters, list(wait_for)))
        function = getattr(stage, "fn", stage)
        if self.executor is not None:
            return self.executor.submit(function, **parameters)
        future: Future = Future()
        try:
            future.set_result(function(**parameters))
        except Exception as error:  # as a worker would hand it back
            future.set_exception(error)
        return future

    def as_completed(self, futures: Iterable[Future]) -> Iterator[Future]:
        if self.executor is None:
            return iter(list(futures))
        return futures_completed(list(futures))
