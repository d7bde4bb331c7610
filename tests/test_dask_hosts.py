"""A Dask cluster sized per machine: threads per model from each host's cores over its
task slots, read where the task runs, and the CNN's cores told through Dask itself.

The loopback cluster has two "machines": worker processes listening on 127.0.0.1 and on
127.0.0.2 (both loopback on Linux), started with the `dask worker` command."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.runner import host_threads, workers_by_kind
from tasks.core.cpus import threads_here, usable_cores
from tasks.training.cores import cluster_shared_cores

REPO = Path(__file__).resolve().parents[1]


def test_threads_per_model_are_each_hosts_cores_over_all_its_task_slots():
    workers = {
        "tcp://10.0.0.5:1": {"host": "10.0.0.5", "nthreads": 1},  # 8 cores, 2 single-slot
        "tcp://10.0.0.5:2": {"host": "10.0.0.5", "nthreads": 1},  # workers: 4 threads each
        "tcp://10.0.0.7:1": {"host": "10.0.0.7", "nthreads": 4},  # 4 cores, 4 slots: 1
        "tcp://10.0.0.9:1": {"host": "10.0.0.9", "nthreads": 1},  # 2 cores, the README's
        "tcp://10.0.0.9:2": {"host": "10.0.0.9", "nthreads": 1},  # 2 workers: 1, not 2
    }
    cores = {"tcp://10.0.0.5:1": 8, "tcp://10.0.0.5:2": 8, "tcp://10.0.0.7:1": 4}
    cores |= {"tcp://10.0.0.9:1": 2, "tcp://10.0.0.9:2": 2}
    threads = host_threads(workers, cores)
    assert dict(threads.by_host) == {"10.0.0.5": 4, "10.0.0.7": 1, "10.0.0.9": 1}
    assert threads.here() == 1  # outside a worker: the fewest, never oversubscribing
    assert threads_here(3) == 3
    assert str(threads) == "per host 10.0.0.5 4, 10.0.0.7 1, 10.0.0.9 1"


def test_workers_are_grouped_by_the_kind_of_machine_they_run_on():
    kinds = {
        "tcp://10.0.0.7:1": "Intel Xeon avx512_bf16",
        "tcp://10.0.0.5:2": "AMD EPYC",
        "tcp://10.0.0.5:1": "AMD EPYC",
        "tcp://10.0.0.9:1": "AMD EPYC + NVIDIA A100",
    }
    assert workers_by_kind(kinds) == {
        "AMD EPYC": ("tcp://10.0.0.5:1", "tcp://10.0.0.5:2"),
        "AMD EPYC + NVIDIA A100": ("tcp://10.0.0.9:1",),
        "Intel Xeon avx512_bf16": ("tcp://10.0.0.7:1",),
    }


@pytest.fixture
def two_machine_cluster(tmp_path):
    """A scheduler here, two single-slot workers on 127.0.0.1 and one on 127.0.0.2."""
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=0, host="127.0.0.1", dashboard_address=None, scheduler_port=0
    )
    env = os.environ | {"PYTHONPATH": str(REPO)}
    dask = str(Path(sys.executable).with_name("dask"))
    groups = [("127.0.0.1", "2"), ("127.0.0.2", "1")]
    workers = [
        subprocess.Popen(
            [
                dask,
                "worker",
                cluster.scheduler_address,
                "--host",
                host,
                "--nworkers",
                count,
                "--nthreads",
                "1",
                "--no-dashboard",
                "--local-directory",
                str(tmp_path),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for host, count in groups
    ]
    client = distributed.Client(cluster)
    try:
        client.wait_for_workers(3, timeout=60)
        yield client
    finally:
        client.close()
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=30)
        cluster.close()


@pytest.mark.skipif(usable_cores() < 2, reason="two machines of two cores each need two")
def test_on_a_loopback_cluster_each_machine_trains_on_its_own_share(two_machine_cluster):
    client = two_machine_cluster
    workers = client.scheduler_info()["workers"]
    threads = host_threads(workers, client.run(usable_cores))
    assert dict(threads.by_host) == {"127.0.0.1": 1, "127.0.0.2": 2}
    # Read in each worker's task, as the training stages read it.
    seen = {
        info["host"]: client.submit(threads_here, threads, workers=[address], pure=False).result()
        for address, info in workers.items()
    }
    assert seen == {"127.0.0.1": 1, "127.0.0.2": 2}


def _train_on_the_lane_until_every_core(handover) -> tuple[int, int]:
    """In a worker: the CNN's stage, held to its lane's core until told it has them all;
    it says when it is held (a Variable of its own), so that the test tells it then."""
    from distributed import Variable

    local = handover.on_this_machine(1)
    with local.held_to_lane(logging.getLogger("test-dask")):
        before = len(os.sched_getaffinity(0))
        Variable(f"{handover.channel}-held").set(before)
        while len(os.sched_getaffinity(0)) < len(local.all_cores):
            time.sleep(0.05)
        return before, len(os.sched_getaffinity(0))


@pytest.mark.skipif(usable_cores() < 2, reason="growing past one core needs two")
def test_a_remote_cnn_gets_every_core_of_its_machine_when_told_through_dask(
    two_machine_cluster,
):
    from distributed import Variable

    client = two_machine_cluster
    worker = next(
        a for a, i in client.scheduler_info()["workers"].items() if i["host"] == "127.0.0.1"
    )
    with cluster_shared_cores(client) as share:
        training = client.submit(_train_on_the_lane_until_every_core, share, workers=[worker])
        held = Variable(f"{share.channel}-held", client=client).get(timeout=120)
        time.sleep(2)  # the others train; the CNN stays on its lane's core
        assert (held, training.done()) == (1, False)
        share.release()
        assert training.result(timeout=30) == (1, usable_cores())
