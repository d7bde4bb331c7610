"""Worker processes and Dask workers report to the flow's own Prefect server: checked on
real parts (a Prefect server, a `dask scheduler` and `dask worker` processes on loopback)
through the server's API."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.full_pipeline import main
from flows.runner import check_cluster_api
from tasks.core.errors import RunEnvironmentError
from tests.support.servers import REPO, free_loopback_port, start, stop
from tests.support.waiting import wait_until

BIN = Path(sys.executable).parent
QUICK = ["--profile", "quick", "--models", "xgboost,logistic_regression"]
# Where the tasks run and report is the point, not what they learn: a small subset, and
# no time budget to measure the models' costs for.
SMALL = {"train_subset_size": 2000, "validation_size": 500, "test_subset_size": 1000}
# The run's processes and the Dask workers carry this variable in their environment, so
# every process they start (a Prefect server among them) can be found, even orphaned.
MARK = "FASHION_MNIST_TEST_PROCESS"


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without Prefect settings, this checkout importable, plus `extra`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    return env | {
        "PYTHONPATH": str(REPO),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        **extra,
    }


def marked_processes(mark: str) -> dict[int, str]:
    """pid -> command line of every live process carrying `mark` in its environment."""
    found = {}
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"{MARK}={mark}".encode() in environ.read_bytes():
                command = (environ.parent / "cmdline").read_bytes().replace(b"\0", b" ")
                found[int(environ.parent.name)] = command.decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
    return found


def prefect_servers(processes: dict[int, str]) -> dict[int, str]:
    """The Prefect servers among them: `prefect server start`, or the uvicorn process of a
    temporary server Prefect starts by itself."""
    return {
        pid: command
        for pid, command in processes.items()
        if "uvicorn" in command or "server start" in command
    }


def run_pipeline(args: list[str], env: dict, cwd: Path) -> tuple[subprocess.CompletedProcess, set]:
    """The command line's quick run, and the Prefect servers its processes ran meanwhile."""
    mark = env[MARK]
    (cwd / "small.json").write_text(json.dumps(SMALL))
    small = ["--profile-file", "small.json", "--time-budget", "0"]
    with (cwd / "run.err").open("w+") as err, (cwd / "run.out").open("w+") as out:
        run = subprocess.Popen(
            [sys.executable, "-m", "flows.full_pipeline", *QUICK, *small, *args],
            env=env, cwd=cwd, stdout=out, stderr=err,
        )  # fmt: skip
        servers = set()
        deadline = time.monotonic() + 900
        while run.poll() is None and time.monotonic() < deadline:
            servers |= set(prefect_servers(marked_processes(mark)).items())
            time.sleep(0.5)
        if run.poll() is None:
            run.kill()
            pytest.fail("the quick run took more than 15 minutes")
        out.seek(0)
        err.seek(0)
        done = subprocess.CompletedProcess(run.args, run.returncode, out.read(), err.read())
    return done, servers


def at(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp)


def flow_run_of(stderr: str) -> str:
    return re.search(r"/runs/flow-run/([0-9a-f-]{36})", stderr).group(1)


def train_runs(api: str) -> list[dict]:
    """Every train-* task run on the server."""
    body = {"task_runs": {"name": {"like_": "train-"}}}
    return httpx.post(f"{api}/task_runs/filter", json=body, timeout=10).json()


def assert_one_record(api: str, flow_run_id: str) -> None:
    """The flow run completed with both models' train-* task runs Completed, each with
    its logs; and no train-* task run on the server belongs to no flow run of it."""
    flow_run = httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=10).json()
    assert flow_run["state"]["type"] == "COMPLETED"
    flow_runs = httpx.post(f"{api}/flow_runs/filter", json={}, timeout=10).json()
    every = train_runs(api)
    assert {run["flow_run_id"] for run in every} <= {run["id"] for run in flow_runs}
    ours = [run for run in every if run["flow_run_id"] == flow_run_id]
    assert sorted(run["name"] for run in ours) == ["train-logistic_regression", "train-xgboost"]
    assert {run["state"]["type"] for run in ours} == {"COMPLETED"}
    for run in ours:
        body = {"logs": {"task_run_id": {"any_": [run["id"]]}}}
        logs = httpx.post(f"{api}/logs/filter", json=body, timeout=10).json()
        assert any(log["message"].startswith("training ") for log in logs), run["name"]


@pytest.fixture
def server_api(prefect_server) -> str:
    """The API of the tests' real Prefect server on loopback."""
    return prefect_server.api


@pytest.mark.slow
@pytest.mark.parametrize("task_runner", ["processes", "dask"])
def test_local_workers_start_no_server_of_their_own(task_runner, tmp_path):
    """Without PREFECT_API_URL the run starts one temporary server, and the worker
    processes of a process pool or a local Dask cluster report to it."""
    mark = uuid.uuid4().hex
    env = clean_env(
        PREFECT_HOME=str(tmp_path / "prefect-home"),  # the temporary server's database
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",  # a fresh one, a busy machine
        **{MARK: mark},
    )
    done, servers = run_pipeline(["--task-runner", task_runner], env, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len({pid for pid, _ in servers}) == 1, servers  # the run's own (flows/server.py)
    assert all("-m prefect server start" in command for _, command in servers), servers
    assert "Starting temporary server" not in done.stderr  # Prefect's own, in a worker
    assert marked_processes(mark) == {}


@pytest.mark.slow
def test_process_workers_report_to_the_flows_server(server_api, tmp_path):
    mark = uuid.uuid4().hex
    env = clean_env(PREFECT_API_URL=server_api, PREFECT_HOME=str(tmp_path), **{MARK: mark})
    done, servers = run_pipeline(["--task-runner", "processes"], env, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert servers == set()  # no worker started a Prefect server of its own
    assert "Starting temporary server" not in done.stderr
    assert_one_record(server_api, flow_run_of(done.stderr))
    assert marked_processes(mark) == {}  # nothing of the run is left


@contextlib.contextmanager
def loopback_cluster(
    env: dict, tmp_path: Path, workers: list[tuple[str, str, dict, list[str]]]
) -> Iterator[tuple[str, dict[str, str]]]:
    """A `dask scheduler` and single-slot `dask worker` processes (name, host, environment,
    more arguments) on loopback; yields the scheduler's address and each worker's by name
    once every worker joined. Each binds a port of its own choosing: a port picked here and
    handed over is free only until another test's connection takes it. Workers start where
    the flow runs: they read its data/ by the same paths."""
    scheduler_file = tmp_path / "scheduler.json"
    logs = {"scheduler": tmp_path / "scheduler.log"}
    started = {
        "scheduler": start([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port",
                            "0", "--scheduler-file", str(scheduler_file),
                            "--dashboard-address", ":0"],
                           env, logs["scheduler"], tmp_path),
    }  # fmt: skip
    try:
        for name, host, worker_env, more in workers:
            logs[name] = tmp_path / f"worker-{name}.log"
            command = [str(BIN / "dask"), "worker", "--scheduler-file", str(scheduler_file),
                       "--name", name, "--nthreads", "1", "--host", host,
                       "--dashboard-address", ":0", *more]  # fmt: skip
            started[name] = start(command, worker_env, logs[name], tmp_path)
        address = wait_until(
            lambda: scheduler_address(scheduler_file, started, logs), 60, "the Dask scheduler"
        )
        from distributed import Client

        with Client(address, timeout=60) as client:
            addresses = wait_until(
                lambda: joined_workers(client, started, logs), 180, "the Dask workers", 1
            )
        yield address, addresses
    finally:
        for process in reversed(started.values()):
            stop(process)


def none_ended(started: dict[str, subprocess.Popen], logs: dict[str, Path]) -> None:
    """The test fails with the log of any of the processes that has ended."""
    for name, process in started.items():
        if process.poll() is not None:
            pytest.fail(f"dask {name} exited with {process.returncode}:\n"
                        f"{logs[name].read_text()[-3000:]}")  # fmt: skip


def scheduler_address(
    scheduler_file: Path, started: dict[str, subprocess.Popen], logs: dict[str, Path]
) -> str | None:
    """The address the scheduler wrote once it listens; None before."""
    none_ended(started, logs)
    try:
        return json.loads(scheduler_file.read_text())["address"]
    except (OSError, ValueError, KeyError):  # not written yet, or half
        return None


def joined_workers(
    client: Any, started: dict[str, subprocess.Popen], logs: dict[str, Path]
) -> dict[str, str] | None:
    """Each worker's address by name once all of them joined; None before."""
    none_ended(started, logs)
    info = client.scheduler_info()["workers"]
    addresses = {worker["name"]: address for address, worker in info.items()}
    return addresses if len(addresses) == len(started) - 1 else None


@pytest.mark.slow
def test_external_dask_cluster_reports_to_the_flows_server(server_api, tmp_path):
    """Two `dask worker` processes, one started with PREFECT_API_URL and one without: the
    run warns about that one in one line before training, and records everything on the
    flow's server; an API the workers cannot reach is refused."""
    mark = uuid.uuid4().hex
    env = clean_env(PREFECT_HOME=str(tmp_path), **{MARK: mark})
    workers = [
        ("set", "127.0.0.1", env | {"PREFECT_API_URL": server_api}, []),
        ("unset", "127.0.0.1", env, []),
    ]
    with loopback_cluster(env, tmp_path, workers) as (scheduler, addresses):
        from distributed import Client

        with Client(scheduler, timeout=60) as client:
            closed = f"http://127.0.0.1:{free_loopback_port()}/api"
            with pytest.raises(RunEnvironmentError) as refused:
                check_cluster_api(client, closed, logging.getLogger(__name__))
        first, second = sorted(addresses.values())
        assert str(refused.value) == (
            f"Dask workers {first}, {second} cannot reach the flow's Prefect API "
            f"at {closed} (connection refused), so training there would go unrecorded: serve "
            "it on an address the workers reach (`prefect server start --host 0.0.0.0`) and "
            "set PREFECT_API_URL to that address here and for every worker"
        )

        args = ["--task-runner", "dask", "--dask-address", scheduler]
        done, servers = run_pipeline(args, env | {"PREFECT_API_URL": server_api}, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    warnings = [line for line in done.stderr.splitlines() if "Dask workers" in line]
    assert len(warnings) == 1, done.stderr[-3000:]
    assert warnings[0].endswith(
        "Dask workers not set to report to the flow's Prefect API (worker "
        f"{addresses['unset']}: no PREFECT_API_URL): start every worker with "
        f"PREFECT_API_URL={server_api} (this run's task runs still go there: Prefect "
        "sends the flow's settings with each task)"
    )
    flow_run_id = flow_run_of(done.stderr)
    assert_one_record(server_api, flow_run_id)
    # The warning came before any training: the flow run's log against the task runs.
    body = {"logs": {"flow_run_id": {"any_": [flow_run_id]}, "level": {"ge_": 30}}}
    logs = httpx.post(f"{server_api}/logs/filter", json=body, timeout=10).json()
    warned = [at(log["timestamp"]) for log in logs if "not set to report" in log["message"]]
    ours = [run for run in train_runs(server_api) if run["flow_run_id"] == flow_run_id]
    assert len(warned) == 1
    assert all(warned[0] < at(run["start_time"]) for run in ours)
    # Two single-slot workers on this 2-core host: one thread per model, not two.
    assert "core schedule: 2 at a time on 2 core(s), threads: xgboost per host " in done.stderr
    trained = sorted(flow_run_messages(server_api, flow_run_id, "training "))
    assert trained == [
        "training logistic_regression on 1000 images with 1 thread(s)",
        "training xgboost on 1000 images with 1 thread(s)",
    ]
    workers_log = "".join(path.read_text() for path in tmp_path.glob("worker-*.log"))
    assert "Starting temporary server" not in workers_log
    assert prefect_servers(marked_processes(mark)) == {}  # none left behind by the workers
    assert servers == set()


def flow_run_messages(api: str, flow_run_id: str, start: str) -> list[str]:
    """The messages of a flow run's logs (its task runs' too) that begin with `start`."""
    body = {"logs": {"flow_run_id": {"any_": [flow_run_id]}}}
    logs = httpx.post(f"{api}/logs/filter", json=body, timeout=10).json()
    return [log["message"] for log in logs if log["message"].startswith(start)]


@pytest.mark.slow
def test_a_cluster_of_two_kinds_of_machine_is_measured_on_each_and_planned_for_the_slowest(
    server_api, tmp_path
):
    """Workers on 127.0.0.1 (this CPU) and on 127.0.0.2, a "machine" whose preload says
    it has another CPU, where every model costs ten times as much: the costs are measured
    on each kind, and the plan takes the slowest's."""
    from tests.support.slow_machine import SLOW_CPU, SLOWER

    env = clean_env(PREFECT_HOME=str(tmp_path), PREFECT_API_URL=server_api, **{MARK: "kinds"})
    workers = [
        ("this-cpu", "127.0.0.1", env, []),
        ("slow-cpu", "127.0.0.2", env, ["--preload", "tests.support.slow_machine"]),
    ]
    with loopback_cluster(env, tmp_path, workers) as (scheduler, _):
        args = ["--task-runner", "dask", "--dask-address", scheduler, "--time-budget", "3"]
        done, _ = run_pipeline(args, env, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (
        "measured on 2 kinds of machine; planned for the slowest: "
        f"xgboost on {SLOW_CPU}, logistic_regression on {SLOW_CPU}"
    ) in done.stderr
    measured = flow_run_messages(server_api, flow_run_of(done.stderr), "measured logistic_r")
    fixed = sorted(float(re.search(r": ([0-9.]+) s fixed", line)[1]) for line in measured)
    assert len(fixed) == 2, measured
    assert fixed[1] > SLOWER / 3 * fixed[0], measured  # not both measured on one kind
    (plan_file,) = (tmp_path / "data" / "plans").glob("*/plan.json")
    plans = {model["model"]: model for model in json.loads(plan_file.read_text())["models"]}
    assert plans["logistic_regression"]["estimated_seconds"] == pytest.approx(fixed[1], abs=0.06)


def test_external_cluster_without_a_server_is_refused_before_anything_runs(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        status = main([*QUICK, "--task-runner", "dask", "--dask-address", "tcp://127.0.0.1:1"])
    assert status == 1
    assert capsys.readouterr().err.strip() == (
        "error: an external Dask cluster needs a Prefect server its workers reach, not this "
        "run's temporary one (loopback only, gone after the run): start `prefect server start "
        "--host 0.0.0.0` and set PREFECT_API_URL=http://<server>:4200/api here and for every "
        "worker"
    )
    assert not (tmp_path / "reports").exists()
