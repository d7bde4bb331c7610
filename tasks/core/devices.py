"""The GPUs this process may use, and which models train on them.

GPUs are found through the NVIDIA driver (`nvidia-smi -L`), not TensorFlow: importing
TensorFlow takes seconds and most of a gigabyte, and the processes that plan, report or
train only scikit-learn models have no other use for it. `CUDA_VISIBLE_DEVICES` is
applied the way CUDA applies it ("" or "-1": none). Whether TensorFlow can really use a
GPU the driver shows (its CUDA libraries installed) is known only once it is started:
`tensorflow_runtime.start_tensorflow` checks its own device list then, and says so when
it differs. XGBoost uses a GPU only when its build has CUDA (`xgboost.build_info()`).

The decisions are plain functions of a `Devices` record, so tests give them made-up ones.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# One line of `nvidia-smi -L`: "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-5d2f...)".
GPU_LINE = re.compile(r"^GPU (?P<index>\d+): (?P<name>.+?) \(UUID: (?P<uuid>[^)]+)\)$")


@dataclass(frozen=True)
class DriverGpu:
    """A GPU as the NVIDIA driver lists it."""

    index: int
    name: str
    uuid: str


@dataclass(frozen=True)
class Devices:
    """What the models may compute on besides the CPU."""

    gpus: tuple[str, ...]  # names of the GPUs this process may use
    xgboost_cuda: bool  # XGBoost was built with CUDA

    @property
    def summary(self) -> str:
        """The GPU and which models train on it, for the log, the report and metrics.json."""
        if not self.gpus:
            return "no GPU"
        names = ", ".join(self.gpus)
        if xgboost_device(self) == "cuda":
            return f"GPU: {names} (the CNN and XGBoost train on it)"
        return f"GPU: {names} (the CNN trains on it; XGBoost on the CPU: its build has no CUDA)"


def parse_gpu_list(listing: str) -> tuple[DriverGpu, ...]:
    """The GPUs in `nvidia-smi -L`'s output; its indented MIG lines are passed over."""
    found = (GPU_LINE.match(line.strip()) for line in listing.splitlines() if line[:4] == "GPU ")
    return tuple(DriverGpu(int(m["index"]), m["name"], m["uuid"]) for m in found if m)


@functools.cache
def driver_gpus() -> tuple[DriverGpu, ...]:
    """The GPUs the NVIDIA driver shows this machine; none without the driver or its tool.

    Read once per process: GPUs do not come and go while it runs.
    """
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return ()
    try:
        listed = subprocess.run([tool, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    # Without a working driver it prints "NVIDIA-SMI has failed ..." and exits non-zero.
    return parse_gpu_list(listed.stdout) if listed.returncode == 0 else ()


def visible_gpus(gpus: Sequence[DriverGpu], cuda_visible_devices: str | None) -> tuple[str, ...]:
    """The names of `gpus` that CUDA lets a process with this `CUDA_VISIBLE_DEVICES` use.

    Unset, every GPU. Else its entries, indices or (prefixes of) UUIDs, in order, up to the
    first one that names no GPU: CUDA ignores that one and all after it, so "" and "-1"
    leave none. MIG instances, named by their own UUIDs, are not recognised and read as
    none.
    """
    if cuda_visible_devices is None:
        return tuple(gpu.name for gpu in gpus)
    chosen = []
    for entry in (entry.strip() for entry in cuda_visible_devices.split(",")):
        gpu = next((gpu for gpu in gpus if _is_named_by(entry, gpu)), None)
        if gpu is None:
            break
        chosen.append(gpu.name)
    return tuple(chosen)


def _is_named_by(entry: str, gpu: DriverGpu) -> bool:
    if entry.isdigit():
        return int(entry) == gpu.index
    return entry.startswith("GPU-") and gpu.uuid.startswith(entry)


def xgboost_has_cuda() -> bool:
    """Whether the installed XGBoost was built with CUDA (the `xgboost-cpu` wheel is not)."""
    import xgboost

    return bool(xgboost.build_info().get("USE_CUDA", False))


def detect_devices(
    gpus: Sequence[DriverGpu] | None = None,
    xgboost_cuda: bool | None = None,
    environ: Mapping[str, str] | None = None,
) -> Devices:
    """This process's devices; tests give the driver's GPUs, the XGBoost build and the
    environment instead of reading them."""
    gpus = driver_gpus() if gpus is None else gpus
    environ = os.environ if environ is None else environ
    visible = visible_gpus(gpus, environ.get("CUDA_VISIBLE_DEVICES"))
    return Devices(visible, xgboost_has_cuda() if xgboost_cuda is None else xgboost_cuda)


def xgboost_device(devices: Devices) -> str:
    """XGBoost's `device`: "cuda" with a GPU and a CUDA build, else "cpu"."""
    return "cuda" if devices.gpus and devices.xgboost_cuda else "cpu"


def cnn_on_gpu(devices: Devices) -> bool:
    """Whether the CNN is expected to train on a GPU: TensorFlow places it on the first
    one it lists, and its Linux wheels are CUDA builds. `start_tensorflow` warns when
    TensorFlow then lists none."""
    return bool(devices.gpus)


def device_key(devices: Devices | None = None) -> str:
    """The devices in a few words for a cache key: a plan made for a GPU does not hold on
    a CPU, nor for another GPU. Only what the driver and the builds say, so the key is
    the same whether or not TensorFlow is loaded in the asking process."""
    devices = detect_devices() if devices is None else devices
    return f"gpus={'+'.join(devices.gpus) or 'none'} xgboost={xgboost_device(devices)}"


def device_facts(devices: Devices) -> dict:
    """The devices and which models train on them, for metrics.json's `machine`."""
    return {
        "gpus": list(devices.gpus),
        "xgboost_cuda_build": devices.xgboost_cuda,
        "cnn_device": "gpu" if cnn_on_gpu(devices) else "cpu",
        "xgboost_device": xgboost_device(devices),
    }
