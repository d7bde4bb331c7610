"""Real Prefect servers and workers on loopback, started as subprocesses."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import pytest

from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))
ENDED = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
EPHEMERAL_PORTS = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_loopback_port() -> int:
    """A port free on loopback now, for a server started next. Drawn from below the
    kernel's ephemeral range where there is one: the kernel hands ports of that range to
    outgoing connections, which could take it before the server binds it."""
    ephemeral = int(EPHEMERAL_PORTS.read_text().split()[0]) if EPHEMERAL_PORTS.exists() else 0
    below = random.sample(range(10_000, ephemeral), 50) if ephemeral > 11_000 else []
    for port in below:
        with socket.socket() as probe, suppress(OSError):  # in use
            probe.bind(("127.0.0.1", port))
            return port
    with socket.socket() as probe:  # any port the kernel picks
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(command: list[str], env: dict, log: Path, cwd: Path = REPO) -> subprocess.Popen:
    """`command` in a session of its own (so that `stop` ends its children too), its
    output in `log`."""
    return subprocess.Popen(
        command, env=env, cwd=cwd, stdout=log.open("w"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip


def stop(process: subprocess.Popen, grace_seconds: float = 30) -> None:
    """SIGTERM to its process group (a Dask worker's nanny and worker too), SIGKILL after
    `grace_seconds`."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def healthy(api: str) -> bool:
    try:
        return httpx.get(f"{api}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def running_server(home: Path, **settings: str) -> Iterator[tuple[str, dict]]:
    """A real Prefect server on loopback with a database under `home`; yields its API URL
    and the environment (PREFECT_* of this process dropped, `settings` added) to use it."""
    port = free_loopback_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(home / "prefect-home"), "PREFECT_API_URL": api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_UI_ENABLED": "false",
            **settings}  # fmt: skip
    server = start([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                   env, home / "server.log")  # fmt: skip
    try:
        wait_until(lambda: healthy(api), 120, "the Prefect server", interval=0.5)
        yield api, env
    finally:
        stop(server)


def prefect_cli(env: dict, *args: str) -> str:
    """The output of a `prefect` command that must succeed."""
    command = [PREFECT, "--no-prompt", *args]
    try:
        return subprocess.check_output(command, env=env, cwd=REPO, text=True, timeout=180,
                                       stderr=subprocess.STDOUT)  # fmt: skip
    except subprocess.CalledProcessError as failed:
        pytest.fail(f"{' '.join(args)} failed: {failed.output[-3000:]}")


def flow_run_state(api: str, flow_run_id: str) -> dict:
    return httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=5).json()["state"]


def ended_state(api: str, flow_run_id: str) -> dict | None:
    """The flow run's state once it has ended (completed, failed, crashed or cancelled)."""
    state = flow_run_state(api, flow_run_id)
    return state if state["type"] in ENDED else None


class LocalPrefect:
    """One Prefect server on loopback for the tests that need a real one, with its own
    home (database, settings); `deploy` and `worker` add prefect.yaml's deployments on
    the `fashion-mnist` process pool and a worker of that pool, each once."""

    POOL = "fashion-mnist"

    def __init__(self, api: str, env: dict, home: Path):
        self.api, self.env, self.home = api, env, home
        self.deployed: set[str] = set()
        self.worker_process: subprocess.Popen | None = None
        self.worker_log = home / "worker.log"

    def cli(self, *args: str) -> str:
        """The output of a `prefect` command against this server that must succeed."""
        return prefect_cli(self.env, *args)

    def deploy(self, name: str) -> None:
        """prefect.yaml's deployment `name` on the pool (created with the first)."""
        if not self.deployed:
            self.cli("work-pool", "create", self.POOL, "--type", "process")
        if name not in self.deployed:
            self.cli("deploy", "--name", name)
            self.deployed.add(name)

    def worker(self) -> Path:
        """Start the pool's worker unless it runs; returns its log."""
        if self.worker_process is None or self.worker_process.poll() is not None:
            command = [PREFECT, "worker", "start", "--pool", self.POOL]
            self.worker_process = start(command, self.env, self.worker_log)
        return self.worker_log

    def worker_output(self, since: int = 0) -> str:
        """The worker's log from character `since` on (the flow runs' logs are in it)."""
        return self.worker_log.read_text()[since:] if self.worker_log.exists() else ""

    def run_deployment(self, deployment: str, parameters: dict) -> str:
        """Start a run of `deployment` (flow/deployment) with `parameters`; its id."""
        started = self.cli("deployment", "run", deployment, "--params", json.dumps(parameters))
        return re.search(r"UUID: ([0-9a-f-]{36})", started).group(1)

    def state(self, flow_run_id: str) -> dict:
        return flow_run_state(self.api, flow_run_id)

    def wait_for_end(self, flow_run_id: str, timeout: float) -> dict:
        """The flow run's state once it has ended."""
        return wait_until(lambda: ended_state(self.api, flow_run_id), timeout,
                          f"flow run {flow_run_id} to end", interval=1)  # fmt: skip

    def stop_worker(self) -> None:
        """Once it has run flows, the worker hands SIGTERM on as SIGINT and lingers on for
        the whole grace period: with no run left on it, 5 s are plenty."""
        if self.worker_process is not None:
            stop(self.worker_process, grace_seconds=5)
            self.worker_process = None


@contextmanager
def local_prefect(home: Path) -> Iterator[LocalPrefect]:
    """A LocalPrefect whose worker and runners poll every 2 s, so that runs start and
    cancellations land within seconds; server and worker stop when it ends."""
    home.mkdir(parents=True, exist_ok=True)
    settings = {
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
        "PWD": str(REPO),
    }  # prefect.yaml's pull step resolves {{ $PWD }} at deploy time
    with running_server(home, **settings) as (api, env):  # fmt: skip
        prefect = LocalPrefect(api, env, home)
        try:
            yield prefect
        finally:
            prefect.stop_worker()
