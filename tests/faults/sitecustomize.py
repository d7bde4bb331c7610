"""A crash injected into XGBoost's fit, for the tests of failure isolation.

Python imports `sitecustomize` from PYTHONPATH when any interpreter starts, so putting
this directory on PYTHONPATH reaches every process of a run: the command line's, and the
worker processes the processes and dask runners spawn. With FASHION_MNIST_FAULT=xgboost,
`xgboost.XGBClassifier.fit` raises XGBoost's own error, as the library does when it
refuses a model; with FASHION_MNIST_FAULT=xgboost-killed, it kills its own process with
SIGKILL, as the kernel's out-of-memory killer would, at the worst moment: while it holds
the write lock of the queue that the process pool's workers send their logs through.
Nothing in the pipeline knows about it. The patch is applied when xgboost is imported, so
processes that never import it are unchanged.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import signal
import sys

MESSAGE = "injected fault: the booster could not be built"


class _PatchXGBoostOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "xgboost.sklearn":
            return None
        sys.meta_path.remove(self)  # find the real module, then wrap its loader
        spec = importlib.util.find_spec(name)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            from xgboost.core import XGBoostError

            def fit(self, *args, **kwargs):
                if os.environ["FASHION_MNIST_FAULT"] == "xgboost-killed":
                    _hold_the_log_queue()
                    os.kill(os.getpid(), signal.SIGKILL)
                raise XGBoostError(MESSAGE)

            module.XGBClassifier.fit = fit

        spec.loader.exec_module = exec_module
        return spec


def _hold_the_log_queue() -> None:
    """As a worker killed in the middle of sending a log: the processes runner's workers
    send theirs through Prefect's log sink, `partial(enqueue, queue)`."""
    from prefect.logging import handlers

    if handlers._api_log_sink is not None:
        handlers._api_log_sink.args[0]._wlock.acquire()


if os.environ.get("FASHION_MNIST_FAULT", "").startswith("xgboost"):
    sys.meta_path.insert(0, _PatchXGBoostOnImport())
