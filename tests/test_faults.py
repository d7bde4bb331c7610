"""The command line against faults, in subprocesses on the real data: a model that crashes
under each task runner, a worker process killed, SIGTERM and Ctrl-C while models train, two
runs sharing a cache, and a cached model altered on disk. Each asserts what the user sees
(exit status, last line) and that nothing a finished model produced is lost.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter
from prefect.client.schemas.sorting import FlowRunSort
from prefect.settings import PREFECT_API_URL

from flows.parallel import WORKER_PROCESS_DIED
from tasks.core.storage import entry_problem
from tests.support.cache import entries, scratch_left
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[1]
FAULTS = REPO / "tests" / "faults"  # a sitecustomize that makes XGBoost's fit raise
QUICK = ["--profile", "quick", "--seed", "7", "--data-dir", "/usr/share/datasets/fashion-mnist"]
XGBOOST_ERROR = "XGBoostError: injected fault: the booster could not be built"
# What a fault does to a run does not depend on how much it learns: a small subset.
SMALL = {"train_subset_size": 2000, "validation_size": 500, "test_subset_size": 1000}

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("real_data_dir")]


@pytest.fixture
def api_url(prefect_harness) -> str:
    """The test server: the command lines below run on it rather than each on its own."""
    return PREFECT_API_URL.value()


@pytest.fixture(autouse=True)
def small_profile(tmp_path) -> Path:
    """SMALL as the profile file `small.json` in the runs' working directory."""
    (tmp_path / "small.json").write_text(json.dumps(SMALL))
    return tmp_path / "small.json"


def command(*arguments: str) -> list[str]:
    """The command line's quick run on SMALL, started in the test's tmp_path."""
    small = ["--profile-file", "small.json"]
    return [sys.executable, "-m", "flows.full_pipeline", *QUICK, *small, *arguments]


def environment(api_url: str, fault: str | None = None) -> dict:
    """The runs' environment; `fault` ("xgboost" or "xgboost-killed") injects one (FAULTS)."""
    path = [str(REPO), *([str(FAULTS)] if fault else [])]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(path), "PREFECT_API_URL": api_url}
    return env | ({"FASHION_MNIST_FAULT": fault} if fault else {})


def run(workdir: Path, api_url: str, *arguments: str, fault: str | None = None):
    return subprocess.run(
        command(*arguments), cwd=workdir, env=environment(api_url, fault), capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


# With a time budget, a model's first fit is the measurement of its cost: it fails there.
@pytest.mark.parametrize("runner", ["threads", "processes", "dask"])
def test_a_model_that_crashes_is_reported_and_a_rerun_retrains_only_it(tmp_path, api_url, runner):
    models = ["--models", "logistic_regression,random_forest,xgboost", "--task-runner", runner]
    done = run(tmp_path, api_url, *models, fault="xgboost")
    assert done.returncode == 1, done.stderr[-3000:]
    assert last_line(done.stderr) == (
        f"error: 1 of 3 models failed: xgboost (measuring: {XGBOOST_ERROR}); "
        "a rerun retrains only what failed"
    )
    if runner != "dask":  # distributed logs its own tracebacks when its cluster closes
        assert "Traceback" not in done.stdout + done.stderr
    assert f"xgboost: failed in measuring: {XGBOOST_ERROR}" in done.stdout
    report = (tmp_path / "reports" / "latest").resolve()
    board = pd.read_csv(report / "leaderboard.csv")
    assert board.model.tolist()[-1] == "xgboost"
    assert board.error.tolist()[-1] == f"failed in measuring: {XGBOOST_ERROR}"
    assert "ensemble" in board.model.tolist()  # of the two models that succeeded
    failures = json.loads((report / "metrics.json").read_text())["failures"]
    assert [(f["model"], f["error"]) for f in failures] == [("xgboost", XGBOOST_ERROR)]

    if runner == "threads":  # the rerun, once: the runners share the cache code
        finished = entries(tmp_path / "data")
        assert {entry.parent.name for entry in finished} == {"logistic_regression", "random_forest"}
        rerun = run(tmp_path, api_url, *models)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        after = entries(tmp_path / "data")
        assert {entry: after[entry] for entry in finished} == finished  # reused as they were
        assert {entry.parent.name for entry in set(after) - set(finished)} == {"xgboost"}
        board = pd.read_csv(tmp_path / "reports" / "latest" / "leaderboard.csv")
        assert board.error.isna().all()
        assert "xgboost" in board.model.tolist()


def test_a_killed_worker_process_fails_the_models_of_its_pool_and_the_next_train_in_a_fresh_one(
    tmp_path, api_url
):
    # Two models at a time, without a budget: XGBoost's process is killed as its fit
    # starts, holding the lock of the queue the pool's workers send their logs through
    # (sitecustomize); the random forest, made to train for half a minute, is beside it and
    # sends its logs after; logistic regression comes after them, in new worker processes.
    # The run's exit may not wait forever on that lock. Python's pool sees the death of the
    # worker it started last only at its next event: the forest fails with the pool, or
    # first finishes.
    forest = SMALL | {"params": {"random_forest": {"n_estimators": 3000}}}
    (tmp_path / "forest.json").write_text(json.dumps(forest))
    models = ["--models", "xgboost,random_forest,logistic_regression", "--task-runner",
              "processes", "--parallel-models", "2", "--time-budget", "0",
              "--profile-file", "forest.json"]  # fmt: skip
    done = run(tmp_path, api_url, *models, fault="xgboost-killed")
    assert done.returncode == 1, done.stderr[-3000:]
    board = pd.read_csv(tmp_path / "reports" / "latest" / "leaderboard.csv")
    failed = board.model[board.error.notna()].tolist()
    assert failed in (["xgboost"], ["xgboost", "random_forest"], ["random_forest", "xgboost"])
    assert last_line(done.stderr) == (
        f"error: {len(failed)} of 3 models failed: "
        + "; ".join(f"{name} (training: {WORKER_PROCESS_DIED})" for name in failed)
        + "; a rerun retrains only what failed"
    )
    trained = {"logistic_regression"} | ({"random_forest"} if len(failed) == 1 else set())
    assert set(board.model[board.error.isna()]) - {"ensemble"} == trained
    assert board.test_accuracy[board.error.isna()].gt(0.5).all()
    assert {entry.parent.name for entry in entries(tmp_path / "data")} == trained
    assert scratch_left(tmp_path / "data") == []
    with get_client(sync_client=True) as client:
        (latest,) = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [latest.id]}))
    states = {run.name: run.state.type.value for run in runs if run.name.startswith("train")}
    # The killed process never reported its end: the run sets it Crashed, not left
    # Running. The forest's end never passed the lock: the run sets the end its future
    # brought. Its start may not have passed either: then the server has no run of it.
    assert states.pop("train-xgboost") == "CRASHED"
    forest_ended = {"COMPLETED"} if "random_forest" in trained else {"CRASHED", "FAILED"}
    assert states.pop("train-random_forest", None) in forest_ended | {None}
    assert states == {"train-logistic_regression": "COMPLETED"}


@pytest.mark.parametrize(
    ("runner", "signum", "to_group"),
    [
        ("threads", signal.SIGTERM, False),  # `kill`, `timeout`
        ("processes", signal.SIGINT, True),  # Ctrl-C: the terminal signals the whole group
        ("dask", signal.SIGTERM, False),
    ],
    ids=["threads-SIGTERM", "processes-ctrl-c", "dask-SIGTERM"],
)
def test_a_signal_while_models_train_stops_the_run_cleanly(
    tmp_path, api_url, runner, signum, to_group
):
    # XGBoost made to train for minutes, with no deadline, so that the signal finds it
    # mid-fit.
    long = SMALL | {"params": {"xgboost": {"n_estimators": 5000, "early_stopping_rounds": 5000}}}
    (tmp_path / "long.json").write_text(json.dumps(long))
    arguments = ["--models", "xgboost,logistic_regression", "--task-runner", runner,
                 "--profile-file", "long.json", "--time-budget", "0"]  # fmt: skip
    data = tmp_path / "data"
    log = (tmp_path / "run.log").open("w")
    started = subprocess.Popen(
        command(*arguments), cwd=tmp_path, env=environment(api_url), stdout=log,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:

        def xgboost_boosting() -> bool:  # and logistic regression finished
            output = (tmp_path / "run.log").read_text()
            assert started.poll() is None, output[-3000:]
            saved = list((data / "models" / "logistic_regression").glob("*/manifest.json"))
            staging = list((data / "models" / "xgboost").glob(".*staging*"))
            # Logged every 25 boosting rounds: XGBoost is inside its boosting loop.
            return bool(saved) and bool(staging) and "xgboost round 25:" in output

        wait_until(xgboost_boosting, 300, "logistic regression to finish and XGBoost to boost")
        finished = entries(data)
        sent = time.monotonic()
        (os.killpg if to_group else os.kill)(started.pid, signum)
        status = started.wait(timeout=60)  # Prefect's worker would SIGKILL after 30 s
        print(f"{runner}: {signal.Signals(signum).name} -> exit in {time.monotonic() - sent:.1f} s")
    finally:
        if started.poll() is None:
            os.killpg(started.pid, signal.SIGKILL)
            started.wait()
    output = (tmp_path / "run.log").read_text()
    assert status == 128 + signum, output[-3000:]
    name = signal.Signals(signum).name
    assert last_line(output) == (
        f"stopped by {name}; the finished models stay in data/ and a rerun resumes from them"
    )
    assert scratch_left(data) == []
    assert entries(data) == finished  # logistic regression kept, no partial XGBoost
    assert all(entry_problem(entry) is None for entry in finished)
    assert not (tmp_path / "reports").exists()
    with get_client(sync_client=True) as client:
        (latest,) = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)
    assert latest.state.is_cancelled(), latest.state


def test_two_runs_at_once_share_a_cache_and_a_cached_model_altered_on_disk_is_rebuilt(
    tmp_path, api_url
):
    arguments = command("--models", "logistic_regression,random_forest")
    runs = [
        subprocess.Popen(arguments, cwd=tmp_path, env=environment(api_url),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-2000:] for _, err in outputs]
    reports = sorted((tmp_path / "reports").glob("2*"))
    assert len(reports) == 2
    first, second = (pd.read_csv(report / "leaderboard.csv") for report in reports)
    pd.testing.assert_frame_equal(first, second)  # the same published entries, read back
    models = entries(tmp_path / "data")
    assert all(entry_problem(entry) is None for entry in models)
    assert scratch_left(tmp_path / "data") == []
    assert len(models) == 2

    (forest,) = (entry for entry in models if entry.parent.name == "random_forest")
    with (forest / "model.joblib").open("r+b") as model:
        model.seek(100)
        model.write(b"altered")
    rerun = run(tmp_path, api_url, "--models", "logistic_regression,random_forest")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "random_forest/" in rerun.stdout + rerun.stderr
    assert "cache entry is not usable (model.joblib does not match its recorded hash)" in (
        rerun.stdout + rerun.stderr
    )
    assert entry_problem(forest) is None
    rebuilt = pd.read_csv(tmp_path / "reports" / "latest" / "leaderboard.csv").set_index("model")
    before = first.set_index("model")
    assert rebuilt.test_accuracy.to_dict() == before.test_accuracy.to_dict()
