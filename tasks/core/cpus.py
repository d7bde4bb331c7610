"""The cores this process may really use: every thread count in a run derives from here.

`os.cpu_count()` counts the host's CPUs. A process may be held to fewer by its CPU
affinity (`taskset`, a cpuset) or by a cgroup CPU quota (`docker --cpus 1`, a Kubernetes
limit): sizing threads to the host then oversubscribes the cores, and the costs the time
budget measured no longer hold. The quota is read from cgroup v2 (`cpu.max`) or v1
(`cpu.cfs_quota_us` over `cpu.cfs_period_us`), the smallest along the process's cgroup
and its ancestors, rounded down to whole cores and at least one.

The readers take their files as arguments, so tests drive them with a made-up tree.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tasks.core.devices import detect_devices, device_facts

CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")
CPUINFO = Path("/proc/cpuinfo")


def allowed_cpus() -> tuple[int, ...]:
    """The CPUs this process may run on (its affinity); none where affinity does not exist."""
    if not hasattr(os, "sched_getaffinity"):
        return ()
    return tuple(sorted(os.sched_getaffinity(0)))


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> float | None:
    """The CPU quota of this process's cgroup, in cores (1.5: one and a half cores' time
    per period); None without one, or where cgroups cannot be read."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":  # cgroup v2, the unified hierarchy
            quotas += [_v2_quota(d) for d in _cgroup_dirs(root, path)]
        elif "cpu" in controllers.split(","):
            mount = root / controllers
            mount = mount if mount.is_dir() else root / "cpu"
            quotas += [_v1_quota(d) for d in _cgroup_dirs(mount, path)]
    found = [quota for quota in quotas if quota is not None]
    return min(found) if found else None


def _cgroup_dirs(mount: Path, path: str) -> list[Path]:
    """The cgroup's directory and its ancestors' under `mount` that exist: a container
    often sees only its own cgroup, mounted as the root."""
    directory = mount / path.lstrip("/")
    return [d for d in (directory, *directory.parents) if d.is_relative_to(mount) and d.is_dir()]


def _v2_quota(directory: Path) -> float | None:
    try:
        quota, period = (directory / "cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _v1_quota(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


def usable_core_count(allowed: int, quota: float | None) -> int:
    """Whole cores a process allowed `allowed` CPUs, under a quota of `quota` cores, can
    keep busy: at least one."""
    cores = allowed if quota is None else min(allowed, math.floor(quota))
    return max(1, cores)


@dataclass(frozen=True)
class Cores:
    """What this process may use of the machine, and what limits it."""

    usable: int
    host: int
    allowed: int  # CPUs in its affinity
    quota: float | None  # cgroup CPU quota, in cores

    @property
    def limited_by(self) -> str:
        """What holds it below the host's CPUs, in words; "" when nothing does."""
        limits = []
        if self.allowed < self.host:
            limits.append(f"CPU affinity ({self.allowed} CPU{'s' if self.allowed > 1 else ''})")
        if self.quota is not None and math.floor(self.quota) < self.allowed:
            limits.append(f"a cgroup CPU quota of {self.quota:g} cores")
        return " and ".join(limits)

    def __str__(self) -> str:
        held = f", held by {self.limited_by}" if self.limited_by else ""
        return f"{self.usable} of {self.host} cores usable{held}"


def machine_cores() -> Cores:
    """This process's cores, read now: affinity and quota can change between runs."""
    host = os.cpu_count() or 1
    allowed = len(allowed_cpus()) or host
    quota = cgroup_cpu_quota()
    return Cores(usable_core_count(allowed, quota), host, allowed, quota)


def usable_cores() -> int:
    """How many threads this process can keep busy at once (`machine_cores().usable`)."""
    return machine_cores().usable


@dataclass(frozen=True)
class HostThreads:
    """Threads per model on each host of a Dask cluster, read where the task runs: Dask
    picks a task's worker after the flow has submitted it."""

    by_host: tuple[tuple[str, int], ...]

    def here(self) -> int:
        """This host's threads; the fewest of any host outside a worker."""
        hosts = dict(self.by_host)
        return hosts.get(worker_host(), min(hosts.values()))

    def __str__(self) -> str:
        return "per host " + ", ".join(f"{host} {threads}" for host, threads in self.by_host)


def worker_host() -> str | None:
    """The host of the Dask worker running this task, as the scheduler names it."""
    try:
        from distributed import get_worker

        return urlsplit(get_worker().address).hostname
    except (ImportError, ValueError):  # not in a Dask worker's task
        return None


def threads_here(threads: int | HostThreads) -> int:
    """A task's threads: as given, or its host's share on a Dask cluster."""
    return threads if isinstance(threads, int) else threads.here()


def thread_ids() -> list[int]:
    """This process's threads (Linux), to find those held to some cores by affinity."""
    try:
        return [int(task) for task in os.listdir("/proc/self/task")]
    except OSError:
        return []


def thread_affinity(task: int) -> set[int]:
    try:
        return os.sched_getaffinity(task)
    except OSError:  # a thread that ended meanwhile
        return set()


def set_thread_affinity(tasks: list[int], cores: tuple[int, ...]) -> None:
    for task in tasks:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(task, cores)


@dataclass(frozen=True)
class CpuInfo:
    """The CPU's model name and flags, as `/proc/cpuinfo` gives them (its first CPU)."""

    name: str = "unknown"
    flags: frozenset[str] = frozenset()

    @property
    def bfloat16_flags(self) -> tuple[str, ...]:
        """Its bfloat16 instructions, which oneDNN's convolutions use: AVX-512, AMX."""
        return tuple(flag for flag in ("avx512_bf16", "amx_bf16") if flag in self.flags)

    @property
    def fastest_for_cnn(self) -> str:
        """The instructions that set the CNN's speed: bfloat16 on AMX or AVX-512, several
        times faster than float32 on AVX2."""
        if "amx_bf16" in self.flags:
            return "AMX BF16"
        if "avx512_bf16" in self.flags:
            return "AVX-512 BF16"
        return "AVX2" if "avx2" in self.flags else "no AVX2"


def read_cpuinfo(cpuinfo: Path = CPUINFO) -> CpuInfo:
    """The first CPU's entry of `cpuinfo`; an unknown CPU where it cannot be read."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return CpuInfo()
    first_entry = text.strip().split("\n\n", 1)[0]  # entries are blank-line separated
    fields = dict(
        (key.strip(), value.strip())
        for key, colon, value in (line.partition(":") for line in first_entry.splitlines())
        if colon
    )
    return CpuInfo(fields.get("model name", "unknown"), frozenset(fields.get("flags", "").split()))


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's model name, and its bfloat16 instructions (AVX-512, AMX): plans do not
    travel, and a virtual machine may give two CPUs the same name."""
    info = read_cpuinfo(cpuinfo)
    return " ".join([info.name, *info.bfloat16_flags])


def machine_kind() -> str:
    """What a model's costs depend on, to tell a Dask cluster's machines apart: the CPU,
    and the GPUs where there are any."""
    return " + ".join([cpu_model(), *detect_devices().gpus])


def machine_facts() -> dict:
    """The CPU, its usable cores and the GPUs, for metrics.json and the report."""
    cores, cpu, devices = machine_cores(), cpu_model(), detect_devices()
    return {
        "cpu": cpu,
        "usable_cores": cores.usable,
        "host_cpus": cores.host,
        "allowed_cpus": cores.allowed,
        "cpu_quota_cores": cores.quota,
        **device_facts(devices),
        "summary": f"{cpu}, {cores}; {devices.summary}",
    }
