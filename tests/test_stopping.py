"""Stopping: the flag training checks, fits that give way to it, and the signal handlers."""

from __future__ import annotations

import contextvars
import json
import os
import signal
import threading
import time

import numpy as np
import pytest
import xgboost

from tasks.core.stopping import (
    RunStopped,
    abandoned_fits,
    check_stop,
    clear_stop,
    request_stop,
    run_until_stopped,
    stop_handlers,
    stop_handlers_installed,
    stop_requested,
    stop_signal,
)
from tasks.training.cores import CoreHandover
from tasks.training.models.base import TrainingContext
from tasks.training.models.xgboost_model import XGBoostParams, XGBoostProgress, build_xgboost
from tests.support.waiting import wait_until


@pytest.fixture(autouse=True)
def no_stop_left():
    clear_stop()
    yield
    clear_stop()


def test_a_fit_runs_in_its_thread_with_this_context_and_hands_back_its_outcome():
    where = contextvars.ContextVar("where")
    where.set("the task's context")
    assert run_until_stopped(lambda x: (x * 2, where.get()), 21) == (42, "the task's context")

    def fail():
        raise ValueError("bad parameter")

    with pytest.raises(ValueError, match="bad parameter"):
        run_until_stopped(fail)


def test_a_fit_without_checks_is_left_behind_once_the_run_stops(monkeypatch):
    monkeypatch.setattr("tasks.core.stopping.FIT_STOP_SECONDS", 0.5)
    fitting, release = threading.Event(), threading.Event()

    def fit() -> None:  # a scikit-learn fit: it never looks at the flag
        fitting.set()
        release.wait()

    def stop_once_fitting() -> None:
        wait_until(fitting.is_set, 30, "the fit to start")
        request_stop(signal.SIGTERM)

    stopper = threading.Thread(target=stop_once_fitting)
    stopper.start()
    try:
        with pytest.raises(RunStopped, match="stopped by SIGTERM"):
            run_until_stopped(fit)
        assert abandoned_fits() == 1  # still running, left behind by its task
    finally:
        release.set()  # it ends after all, long after the stop
        stopper.join()
    wait_until(lambda: abandoned_fits() == 0, 30, "the fit left behind to end")
    assert stop_requested()
    assert stop_signal() == signal.SIGTERM


def test_a_fit_that_finishes_while_the_run_stops_is_kept(monkeypatch):
    def last_step():
        request_stop()
        time.sleep(0.3)  # within FIT_STOP_SECONDS: the model is complete, keep it
        return "fitted"

    assert run_until_stopped(last_step) == "fitted"


def test_xgboost_stops_between_boosting_rounds():
    rounds = []

    def check_stop_after_three_rounds():
        rounds.append(1)
        if len(rounds) > 6:  # checked before and after each round
            raise RunStopped(signal.SIGTERM)

    rng = np.random.default_rng(0)
    x, y = rng.random((300, 8), dtype=np.float32), np.arange(300) % 3
    params = XGBoostParams(n_estimators=200, early_stopping_rounds=200)
    context = TrainingContext(seed=0, threads=1, check_stop=check_stop_after_three_rounds)
    with pytest.raises(RunStopped):
        build_xgboost(params, context).fit(x, y, x, y)
    assert len(rounds) == 7


def test_check_stop_raises_once_a_stop_is_requested():
    check_stop()
    request_stop(signal.SIGINT)
    with pytest.raises(RunStopped, match="stopped by SIGINT"):
        check_stop()


def test_signals_raise_a_stop_in_the_main_thread_and_the_old_handlers_come_back():
    def terminate_and_wait():
        os.kill(os.getpid(), signal.SIGTERM)
        # The handler raises in this thread as soon as it runs: while waiting for it.
        wait_until(stop_requested, 30, "the SIGTERM handler")

    before = signal.getsignal(signal.SIGTERM)
    with stop_handlers():
        assert stop_handlers_installed()
        with pytest.raises(RunStopped, match="stopped by SIGTERM"):
            terminate_and_wait()
        assert stop_requested()
    assert not stop_handlers_installed()
    assert signal.getsignal(signal.SIGTERM) is before


def test_xgboost_takes_the_threads_granted_to_it_between_rounds(tmp_path):
    share = CoreHandover(lane_cores=(0,), all_cores=(0, 1), directory=tmp_path, pinned=False)
    progress = XGBoostProgress(10, TrainingContext(seed=0, threads=1, handover=share))

    class Booster:
        def __init__(self):
            self.params = {}

        def set_param(self, name, value):
            self.params[name] = value

    booster = Booster()
    progress.before_iteration(booster, 0, {})
    assert booster.params == {}  # nothing granted yet: its own thread
    share.grant(1)
    progress.before_iteration(booster, 1, {})
    assert booster.params == {"nthread": 2}
    # A real booster takes it mid-fit, and keeps it.
    rng = np.random.default_rng(0)
    x, y = rng.random((200, 8)), np.arange(200) % 2
    grown = XGBoostProgress(10, TrainingContext(seed=0, threads=1, handover=share))
    model = xgboost.XGBClassifier(n_estimators=3, n_jobs=1, callbacks=[grown])
    model.fit(x, y, eval_set=[(x, y), (x, y)], verbose=False)
    config = json.loads(model.get_booster().save_config())
    assert config["learner"]["generic_param"]["nthread"] == "2"
