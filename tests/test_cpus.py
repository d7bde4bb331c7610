"""Usable cores: the CPU affinity, capped by a cgroup v1 or v2 CPU quota, at least one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tasks.run.config
from tasks.core.cpus import (
    Cores,
    cgroup_cpu_quota,
    cpu_model,
    read_cpuinfo,
    usable_core_count,
)
from tasks.core.devices import detect_devices
from tasks.run.config import PipelineConfig
from tests.support.servers import REPO


def cgroup_tree(tmp_path: Path, self_cgroup: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A made-up /sys/fs/cgroup with `files` (relative path: content), and the process's
    /proc/self/cgroup reading `self_cgroup`."""
    root = tmp_path / "cgroup"
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    proc = tmp_path / "self-cgroup"
    proc.write_text(self_cgroup)
    return root, proc


def test_a_cgroup_v2_quota_is_the_smallest_along_the_process_cgroup_and_its_ancestors(tmp_path):
    root, proc = cgroup_tree(tmp_path, "0::/kubepods/pod1/box\n", {
        "cpu.max": "max 100000\n",
        "kubepods/pod1/cpu.max": "150000 100000\n",  # the pod's limit: 1.5 cores
        "kubepods/pod1/box/cpu.max": "400000 100000\n",
    })  # fmt: skip
    assert cgroup_cpu_quota(root, proc) == 1.5
    assert usable_core_count(allowed=8, quota=1.5) == 1


def test_a_container_that_sees_only_its_own_cgroup_reads_the_root(tmp_path):
    root, proc = cgroup_tree(tmp_path, "0::/\n", {"cpu.max": "250000 100000\n"})
    assert cgroup_cpu_quota(root, proc) == 2.5
    root, proc = cgroup_tree(tmp_path / "gone", "0::/docker/abc\n", {"cpu.max": "50000 100000"})
    assert cgroup_cpu_quota(root, proc) == 0.5  # its path is not mounted: the root holds it
    assert usable_core_count(allowed=4, quota=0.5) == 1  # at least one core


def test_a_cgroup_v1_quota_is_read_from_the_cpu_controller(tmp_path):
    self_cgroup = "4:memory:/box\n2:cpu,cpuacct:/box\n1:cpuset:/\n0::/\n"
    root, proc = cgroup_tree(tmp_path, self_cgroup, {
        "cpu,cpuacct/box/cpu.cfs_quota_us": "300000\n",
        "cpu,cpuacct/box/cpu.cfs_period_us": "100000\n",
        "memory/box/cpu.cfs_quota_us": "100000\n",  # not the cpu controller's: ignored
        "memory/box/cpu.cfs_period_us": "100000\n",
    })  # fmt: skip
    assert cgroup_cpu_quota(root, proc) == 3.0
    assert usable_core_count(allowed=16, quota=3.0) == 3
    assert usable_core_count(allowed=2, quota=3.0) == 2


def test_no_quota_leaves_the_affinity(tmp_path):
    root, proc = cgroup_tree(tmp_path, "1:cpu:/\n0::/\n", {
        "cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n",
    })  # fmt: skip
    assert cgroup_cpu_quota(root, proc) is None
    assert cgroup_cpu_quota(root, tmp_path / "no-proc") is None  # not Linux
    proc.write_text("garbled\n1:cpu:/\n")
    assert cgroup_cpu_quota(root, proc) is None
    assert usable_core_count(allowed=64, quota=None) == 64


def test_cores_say_what_holds_them():
    assert str(Cores(usable=2, host=2, allowed=2, quota=None)) == "2 of 2 cores usable"
    held = Cores(usable=1, host=16, allowed=4, quota=1.5)
    assert str(held) == (
        "1 of 16 cores usable, held by CPU affinity (4 CPUs) and a cgroup CPU quota of 1.5 cores"
    )


def test_cpu_model_names_the_cpu_and_bfloat16(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor: 0\nmodel name\t: AMD EPYC\nflags\t: avx2 avx512_bf16\n")
    assert cpu_model(cpuinfo) == "AMD EPYC avx512_bf16"
    cpuinfo.write_text("model name\t: Intel(R) Xeon(R) Processor\nflags\t: avx512_bf16 amx_bf16\n")
    assert cpu_model(cpuinfo) == "Intel(R) Xeon(R) Processor avx512_bf16 amx_bf16"
    assert cpu_model(tmp_path / "none") == "unknown"


def test_cpuinfo_is_read_from_the_first_cpus_entry(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    first = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t: fpu avx2 amx_bf16\n"
    cpuinfo.write_text(first + "\nprocessor\t: 1\nmodel name\t: other\nflags\t: fpu\n")
    info = read_cpuinfo(cpuinfo)
    assert (info.name, info.flags) == ("Intel(R) Xeon(R) Processor", {"fpu", "avx2", "amx_bf16"})
    assert (info.bfloat16_flags, info.fastest_for_cnn) == (("amx_bf16",), "AMX BF16")
    # A field the first entry lacks is not taken from another CPU's.
    cpuinfo.write_text("processor\t: 0\nmodel name\t: first\n\nprocessor\t: 1\nflags\t: avx2\n")
    assert read_cpuinfo(cpuinfo).flags == frozenset()
    assert read_cpuinfo(tmp_path / "none").fastest_for_cnn == "no AVX2"


PROBE = """
import json
import tasks.run.config
from tasks.core.cpus import machine_facts
from tasks.run.config import PipelineConfig
config = PipelineConfig()
schedule = config.core_schedule()
threads = max(schedule.threads.values())
print(json.dumps(machine_facts() | {"threads": threads, "lanes": schedule.lanes}))
"""


@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset is Linux's (util-linux)")
def test_under_taskset_one_core_one_model_trains_at_a_time_on_one_thread():
    command = ["taskset", "-c", "0", sys.executable, "-c", PROBE]
    env = os.environ | {"PYTHONPATH": str(REPO)}
    facts = json.loads(subprocess.run(command, env=env, capture_output=True, text=True,
                                      check=True).stdout)  # fmt: skip
    assert (facts["usable_cores"], facts["allowed_cpus"]) == (1, 1)
    assert (facts["lanes"], facts["threads"]) == (1, 1)  # one lane: nothing time-shares the core
    held = ", held by CPU affinity (1 CPU)" if os.cpu_count() > 1 else ""
    usable = f"1 of {os.cpu_count()} cores usable{held}"
    assert facts["summary"].endswith(f"{usable}; {detect_devices().summary}")


@pytest.mark.parametrize(
    ("cores", "parallel_models", "lanes", "threads"),
    [(1, None, 1, 1), (2, None, 2, 1), (16, 4, 4, 4), (1, 2, 2, 1)],
)  # fmt: skip
def test_lanes_and_threads_follow_the_usable_cores(
    monkeypatch, cores, parallel_models, lanes, threads
):
    monkeypatch.setattr(tasks.run.config, "usable_cores", lambda: cores)
    schedule = PipelineConfig(parallel_models=parallel_models).core_schedule()
    assert schedule.lanes == lanes
    assert set(schedule.threads.values()) == {threads}
