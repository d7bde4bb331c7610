"""Dask Variables by name, made once per process: a value the flow and its Dask workers
share through the cluster itself (the CNN's share of the cores)."""

from __future__ import annotations

from typing import Any

_variables: dict[str, Any] = {}


def dask_variable(name: str, client: Any = None) -> Any:
    """The Dask Variable `name`, made once per process: in a worker, first in the task's
    own thread, where Dask finds the worker's client (a thread it starts does not)."""
    if name not in _variables:
        from distributed import Variable

        _variables[name] = Variable(name, client=client)
    return _variables[name]


def forget_dask_variable(name: str) -> Any:
    """The Dask Variable `name`, no longer kept here."""
    return _variables.pop(name)
