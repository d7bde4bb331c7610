"""The CNN's share of the cores: held to its lane's while other models train, every core
once they are done, told across threads and processes."""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import flows.parallel
import tasks.training.cores
from flows.parallel import train_and_evaluate
from tasks.core.cpus import allowed_cpus, usable_cores
from tasks.run.config import build_config
from tasks.training.cores import CoreHandover, shared_cores
from tests.support.pools import FakePool
from tests.support.waiting import wait_until

pytestmark = pytest.mark.skipif(
    usable_cores() < 2, reason="sharing cores needs two; CI machines have two"
)
logger = logging.getLogger("test-cores")


def affinity() -> set[int]:
    return os.sched_getaffinity(0)  # on Linux, the calling thread's


def in_thread(function):
    """`function`'s result, run in a thread of its own (affinity is per thread)."""
    with ThreadPoolExecutor(1) as executor:
        return executor.submit(function).result(timeout=30)


def test_a_share_is_made_only_where_there_are_cores_to_give(tmp_path, monkeypatch):
    cores = allowed_cpus()
    with shared_cores(tmp_path, 1, enabled=True) as share:
        assert share.lane_cores == cores[:1]
        assert share.all_cores == cores
        assert share.threads == len(cores)
        assert share.directory.is_dir()
        assert share.directory.parent == tmp_path
        assert not share.released
    assert list(tmp_path.iterdir()) == []  # its scratch directory ends with it
    with shared_cores(tmp_path, len(cores), enabled=True) as share:
        assert share is None  # the lane has every core already
    with shared_cores(tmp_path, 1, enabled=False) as share:
        assert share is None
    # A CPU quota of one core (docker --cpus 1) on this 2-core machine: nothing to give.
    monkeypatch.setattr(tasks.training.cores, "usable_cores", lambda: 1)
    with shared_cores(tmp_path, 1, enabled=True) as share:
        assert share is None


def test_a_thread_held_to_its_lane_and_those_it_starts_get_every_core_once_released(tmp_path):
    with shared_cores(tmp_path, 1, enabled=True) as share:
        lane, every = set(share.lane_cores), set(share.all_cores)
        started, seen = threading.Event(), {}

        def pool_thread():  # as TensorFlow's pools: started by the held thread, long-lived
            seen["started"] = affinity()
            started.set()
            wait_until(lambda: affinity() == every, 10, "every core", interval=0.05)
            seen["widened"] = affinity()

        def task():
            with share.held_to_lane(logger):
                seen["held"] = affinity()
                child = threading.Thread(target=pool_thread)
                child.start()
                started.wait(5)
                share.release()
                child.join(15)
                seen["after release"] = affinity()
            return affinity()

        restored = in_thread(task)
    assert seen == {"held": lane, "started": lane, "widened": every, "after release": every}
    assert restored == every


def test_the_task_thread_gets_its_own_affinity_back_when_it_ends(tmp_path):
    with shared_cores(tmp_path, 1, enabled=True) as share:

        def task():
            with share.held_to_lane(logger):
                held = affinity()
            return held, affinity()

        held, after = in_thread(task)
    assert held == set(share.lane_cores)
    assert after == set(share.all_cores)


def test_measuring_with_every_core_waits_for_the_others_and_gives_the_lane_back(tmp_path):
    """As the CNN's measurement: its pools, started while held, are held to the lane until
    the others are measured, step with every core after `widen()`, and are held to the
    lane again after."""
    with shared_cores(tmp_path, 1, enabled=True) as share:
        lane, every = set(share.lane_cores), set(share.all_cores)
        go, seen = threading.Event(), []

        def pool_thread():
            while not go.wait(0.01):
                pass
            seen.append(affinity())

        def task():
            with share.held_to_lane(logger, until_released=False):
                child = threading.Thread(target=pool_thread)
                child.start()
                threading.Timer(0.5, share.release).start()  # the others are measured
                with share.every_core() as widen:
                    waited = share.released
                    before = affinity(), os.sched_getaffinity(child.native_id)
                    widen()
                    inside = affinity(), os.sched_getaffinity(child.native_id)
                after = affinity(), os.sched_getaffinity(child.native_id)
                go.set()
                child.join(5)
            return waited, before, inside, after

        waited, before, inside, after = in_thread(task)
    assert waited
    assert before == (lane, lane)
    assert inside == (every, every)
    assert after == (lane, lane)
    assert seen == [lane]


def test_a_step_is_timed_on_the_lane_then_with_every_core(tmp_path):
    def timed_step() -> float:  # twice as fast with every core
        return 4.0 if affinity() == set(share.lane_cores) else 2.0

    with shared_cores(tmp_path, 1, enabled=True) as share:

        def task():
            with share.held_to_lane(logger, until_released=False):
                share.release()  # the others are measured: no wait
                return share.on_lane_then_every_core(timed_step), affinity()

        timed, after = in_thread(task)
    assert timed == (4.0, 2.0)
    assert after == set(share.lane_cores)  # given back to the lane after the measurement
    assert CoreHandover().on_lane_then_every_core(timed_step) is None  # no cores to widen to


def hold_until_widened(share: CoreHandover, ready, results) -> None:
    """In a worker process: hold a thread to the lane, as a CNN training there would."""
    with share.held_to_lane(logger):
        results.put(sorted(affinity()))
        ready.set()
        wait_until(lambda: affinity() == set(share.all_cores), 20, "every core", interval=0.05)
        results.put(sorted(affinity()))


def test_a_worker_process_learns_from_the_file_that_the_others_are_done(tmp_path):
    spawn = multiprocessing.get_context("spawn")
    ready, results = spawn.Event(), spawn.Queue()
    with shared_cores(tmp_path, 1, enabled=True) as share:
        worker = spawn.Process(target=hold_until_widened, args=(share, ready, results))
        worker.start()
        assert ready.wait(60)
        assert results.get(timeout=5) == list(share.lane_cores)
        share.release()
        assert results.get(timeout=30) == list(share.all_cores)
        worker.join(10)
    assert worker.exitcode == 0


def test_the_cnn_gets_every_core_once_the_others_are_trained_and_evaluated(tmp_path, monkeypatch):
    """The CNN trains on; the other model's training and evaluation end first; only then
    is the CNN released, while it still trains."""
    events: list[str] = []

    def train(name, params, data, cache_dir, seed, threads, refresh, deadline=None,
              most_steps=None, handover=None):  # fmt: skip
        if name == "cnn":
            assert handover is not None
            assert threads == 1
            with handover.held_to_lane(logger):
                assert affinity() == set(handover.lane_cores)
                wait_until(
                    lambda: affinity() == set(handover.all_cores), 20, "every core", interval=0.05
                )
            events.append("cnn trained on every core")
        else:
            assert handover is None
            time.sleep(0.3)
            events.append(f"{name} trained")
        return type("Trained", (), {"name": name})()

    def evaluate(trained, data, cache_dir, threads, refresh):
        if trained.name != "cnn":
            time.sleep(0.5)
        events.append(f"{trained.name} evaluated with {threads} thread(s)")
        return trained.name

    monkeypatch.setattr(flows.parallel, "train_task", train)
    monkeypatch.setattr(flows.parallel, "evaluate_task", evaluate)
    config = build_config("quick", cache_dir=tmp_path)
    with shared_cores(tmp_path, 1, enabled=True) as share:
        results, failures = train_and_evaluate(
            FakePool(threads=2),
            config,
            None,
            None,
            ["cnn", "xgboost"],
            logger,
            shares={"cnn": share},
        )
    assert failures == []
    assert sorted(results) == ["cnn", "xgboost"]
    assert events == [
        "xgboost trained",
        "xgboost evaluated with 1 thread(s)",
        "cnn trained on every core",
        f"cnn evaluated with {usable_cores()} thread(s)",
    ]


def test_grants_add_up_to_every_core_and_are_taken_back_between_stages(tmp_path):
    share = CoreHandover(lane_cores=(0,), all_cores=(0, 1, 2, 3), directory=tmp_path)
    assert (share.granted, share.released) == (1, False)
    share.grant(1)
    assert share.granted == 2
    share.grant(5)  # never more than every core
    assert (share.granted, share.released) == (4, True)
    share.withhold()
    assert share.granted == 1
    assert CoreHandover().granted == 0  # unbound
    assert not CoreHandover().released


def test_a_grant_the_disk_has_no_room_for_is_a_warning_and_the_cores_stay(
    tmp_path, monkeypatch, caplog
):
    share = CoreHandover(lane_cores=(0,), all_cores=(0, 1), directory=tmp_path)

    def disk_full(path, text):
        path.touch()  # a file begun, then no room for its content
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(type(tmp_path), "write_text", disk_full)
    with caplog.at_level(logging.WARNING, "tasks.training.cores"):
        share.release()  # after a model is done: the run goes on
    assert (share.granted, share.released) == (1, False)
    assert list(tmp_path.iterdir()) == []
    assert caplog.messages == [
        f"could not hand cores over ({tmp_path / 'granted'}: No space left on device): the "
        "model keeps those it has"
    ]


def test_each_model_done_grants_its_cores_to_the_cnn_without_waiting_for_the_others(
    tmp_path, monkeypatch
):
    """Three lanes, one thread each: XGBoost done grants the CNN its core while the SVM
    is still being evaluated; the SVM done grants the last one."""
    share = CoreHandover(lane_cores=(0,), all_cores=(0, 1, 2), directory=tmp_path)
    seen = []

    def train(name, params, data, cache_dir, seed, threads, refresh, deadline=None,
              most_steps=None, handover=None):  # fmt: skip
        if name == "cnn":
            wait_until(lambda: handover.released, 20, "every core", interval=0.05)
        return type("Trained", (), {"name": name})()

    def evaluate(trained, data, cache_dir, threads, refresh):
        if trained.name == "svm_rbf":  # the CNN has XGBoost's core before the SVM is done
            wait_until(lambda: share.granted == 2, 20, "XGBoost's core", interval=0.05)
            seen.append(share.granted)
        return trained.name

    monkeypatch.setattr(flows.parallel, "train_task", train)
    monkeypatch.setattr(flows.parallel, "evaluate_task", evaluate)
    config = build_config("quick", cache_dir=tmp_path)
    models = ["cnn", "xgboost", "svm_rbf"]
    results, failures = train_and_evaluate(
        FakePool(threads=4, lanes=3), config, None, None, models, logger, shares={"cnn": share}
    )
    assert failures == []
    assert sorted(results) == sorted(models)
    assert seen == [2]
    assert share.granted == 3


def test_cores_of_models_done_go_to_the_cnn_first_then_to_xgboost_up_to_its_share(
    tmp_path, monkeypatch
):
    """Four lanes of one thread: the forest and the SVM done give the CNN their cores;
    the CNN done gives XGBoost what its share holds (one more), and nothing is lost."""
    cnn = CoreHandover(lane_cores=(0,), all_cores=(0, 1, 2, 3), directory=tmp_path / "cnn")
    xgb = CoreHandover(lane_cores=(1,), all_cores=(1, 2), directory=tmp_path / "xgb", pinned=False)
    for share in (cnn, xgb):
        share.directory.mkdir()

    def train(name, params, data, cache_dir, seed, threads, refresh, deadline=None,
              most_steps=None, handover=None):  # fmt: skip
        assert handover is {"cnn": cnn, "xgboost": xgb}.get(name)
        if name == "cnn":  # the SVM's and the forest's cores, before it is done
            wait_until(lambda: cnn.granted == 3, 20, "two more cores", interval=0.05)
        if name == "xgboost":  # the CNN's, once it is done: as many as its share holds
            wait_until(lambda: xgb.granted == 2, 20, "one more thread", interval=0.05)
        return type("Trained", (), {"name": name})()

    def evaluate(trained, data, cache_dir, threads, refresh):
        return trained.name

    monkeypatch.setattr(flows.parallel, "train_task", train)
    monkeypatch.setattr(flows.parallel, "evaluate_task", evaluate)
    config = build_config("quick", cache_dir=tmp_path)
    models = ["cnn", "xgboost", "svm_rbf", "random_forest"]
    shares = {"cnn": cnn, "xgboost": xgb}
    results, failures = train_and_evaluate(
        FakePool(threads=5, lanes=4), config, None, None, models, logger, shares=shares
    )
    assert failures == []
    assert sorted(results) == sorted(models)
    assert (cnn.granted, xgb.granted) == (3, 2)
