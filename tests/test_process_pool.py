"""The processes runner after a worker process was killed while it sent a log: the run
ends, where Prefect's own process pool leaves it waiting forever (seen as a run that
printed its report and never exited), and the task runs whose ends were lost are set."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from types import SimpleNamespace

import pytest
from prefect.states import Completed

from flows.runner import end_of_pool_task
from tests.support.servers import REPO
from tests.support.waiting import wait_until

# A process of the pool's kind killed (SIGKILL) holding the write lock of the queue the
# workers send their logs through, as a worker killed in the middle of sending one does.
SCRIPT = textwrap.dedent(
    """
    import multiprocessing, os, signal, sys

    def die_holding_the_write_lock(queue):
        queue._wlock.acquire()
        os.kill(os.getpid(), signal.SIGKILL)

    if __name__ == "__main__":  # not in the dying process, which imports this module
        from prefect.task_runners import ProcessPoolTaskRunner
        from flows.process_pool import KillSafeProcessPool

        pool = {"kill-safe": KillSafeProcessPool, "prefect": ProcessPoolTaskRunner}[sys.argv[1]]
        with pool(max_workers=1) as runner:
            dying = multiprocessing.get_context("spawn").Process(
                target=die_holding_the_write_lock, args=(runner._subprocess_message_queue,)
            )
            dying.start()
            dying.join()
            assert dying.exitcode == -signal.SIGKILL
        print("left the pool", flush=True)
    """
)


def started(tmp_path, pool: str) -> subprocess.Popen:
    """SCRIPT with `pool` ("kill-safe" or "prefect"), its output in output.txt."""
    (tmp_path / "pool_exit.py").write_text(SCRIPT)
    with (tmp_path / "output.txt").open("w") as output:
        return subprocess.Popen(
            [sys.executable, "pool_exit.py", pool], cwd=tmp_path, stdout=output,
            stderr=subprocess.STDOUT, env=os.environ | {"PYTHONPATH": str(REPO)},
        )  # fmt: skip


def test_the_processes_runner_exits_after_a_worker_died_holding_its_log_queue(tmp_path):
    process = started(tmp_path, "kill-safe")
    try:
        assert process.wait(timeout=120) == 0, (tmp_path / "output.txt").read_text()
    finally:
        process.kill()
    assert "left the pool" in (tmp_path / "output.txt").read_text()


def test_prefects_own_process_pool_would_never_exit(tmp_path):
    """Why the runner is not Prefect's own: should this fail, Prefect fixed it."""
    process = started(tmp_path, "prefect")
    try:
        left = lambda: "left the pool" in (tmp_path / "output.txt").read_text()  # noqa: E731
        wait_until(left, 120, "the script to leave Prefect's pool")
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=10)  # its interpreter waits to send to the lock's holder
    finally:
        process.kill()
        process.wait()


def test_a_task_run_of_a_broken_pool_is_set_to_the_end_its_future_brought():
    """What `record_lost_ends` sets for a task run the server still shows Running: the end the
    task's future brought (its events lost behind a killed worker's lock), or Crashed."""
    completed, killed, running = Future(), Future(), Future()
    completed.set_result(Completed(message="trained"))
    killed.set_exception(BrokenProcessPool("A process in the process pool was terminated"))
    ends = [
        end_of_pool_task(SimpleNamespace(wrapped_future=f)) for f in (completed, killed, running)
    ]
    assert [(end.type.value, end.message) for end in ends] == [
        ("COMPLETED", "trained"),
        ("CRASHED", "its worker process ended abruptly (killed)"),
        ("CRASHED", "its worker process ended abruptly (killed)"),
    ]
    assert ends[0].data is None  # the result stays where the task stored it
