"""The temporary Prefect server a command-line run uses when no PREFECT_API_URL is set.

Prefect would start one by itself, in the run's process group: Ctrl-C there reaches the
server too, which then dies before the run can record that it stopped, and the run
waits minutes on a vanished API. This one runs in a session of its own, with the
services Prefect's temporary server runs, and is stopped (and says so) before the
command prints its last line.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import httpx
from prefect.context import refresh_global_settings_context
from prefect.events.worker import EventsWorker
from prefect.logging import get_logger
from prefect.logging.handlers import APILogWorker
from prefect.settings import get_current_settings

from tasks.core.errors import RunEnvironmentError

STOP_SECONDS = 5
# The server runs in a session of its own, where a signal to the run's process group does
# not reach it; on Linux it still gets SIGTERM when the run's process dies, even by
# SIGKILL (PR_SET_PDEATHSIG survives the exec). Arguments: the run's pid, then python's.
_DIE_WITH_PARENT = """
import ctypes, os, signal, sys
if sys.platform.startswith("linux"):
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)
    if os.getppid() != int(sys.argv[1]):
        sys.exit(0)
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


@contextlib.contextmanager
def prefect_api(url: str | None) -> Iterator[None]:
    """The Prefect API at `url`, or without one a temporary server for the run."""
    if url:
        yield
        return
    with temporary_server() as api_url, _api_url_everywhere(api_url):
        try:
            yield
        finally:  # the run's last logs and events, while the server still listens
            APILogWorker.drain_all(timeout=STOP_SECONDS)
            EventsWorker.drain_all(timeout=STOP_SECONDS)


@contextlib.contextmanager
def _api_url_everywhere(api_url: str) -> Iterator[None]:
    """PREFECT_API_URL for this process's threads, its Prefect services' threads (a
    process pool forwards its workers' logs and events in one) and its worker processes:
    whatever has no URL would start a temporary server of its own."""
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = api_url
    refresh_global_settings_context()
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        refresh_global_settings_context()


@contextlib.contextmanager
def temporary_server() -> Iterator[str]:
    """`prefect server start` on a free loopback port, in its own session; yields its
    API URL and stops it on the way out."""
    logger = get_logger()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    api_url = f"http://127.0.0.1:{port}/api"
    command = [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), "-m", "prefect",
               "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui",
               "--analytics-off", "--no-scheduler", "--no-late-runs"]  # fmt: skip
    # The services Prefect's own temporary server runs: those that record the run.
    env = os.environ | {"PREFECT__SERVER_EPHEMERAL": "1"}
    env.pop("PREFECT_API_URL", None)
    with tempfile.TemporaryFile() as output:
        server = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            logger.info("Starting a temporary Prefect server on http://127.0.0.1:%d", port)
            _wait_until_healthy(server, api_url, output)
            yield api_url
        finally:
            logger.info("Stopping the temporary Prefect server on http://127.0.0.1:%d", port)
            _stop(server)


def _wait_until_healthy(server: subprocess.Popen, api_url: str, output) -> None:
    timeout = get_current_settings().server.ephemeral.startup_timeout_seconds
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    output.seek(0)
    lines = output.read().decode(errors="replace").strip().splitlines() or ["no output"]
    state = "did not answer within" if server.poll() is None else "exited before"
    raise RunEnvironmentError(
        f"the temporary Prefect server {state} {timeout} s ({lines[-1].strip()}); "
        "start one with `prefect server start` and set PREFECT_API_URL"
    )


def _stop(server: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()
