"""GPUs, decided on made-up device lists: no GPU was ever at hand to test on."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

import tasks.core.cpus
import tasks.training.models.xgboost_model
from tasks.core.cpus import cpu_model, machine_cores
from tasks.core.devices import (
    Devices,
    DriverGpu,
    cnn_on_gpu,
    detect_devices,
    device_key,
    driver_gpus,
    parse_gpu_list,
    xgboost_device,
)
from tasks.training.models.base import TrainingContext
from tasks.training.models.tensorflow_runtime import missing_gpu_note, prepare_gpus
from tasks.training.models.xgboost_model import XGBoostClassifier, XGBoostParams, build_xgboost

NVIDIA_SMI_L = """\
GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-5d2f1c3a-0000-1111-2222-333344445555)
  MIG 1g.5gb      Device  0: (UUID: MIG-0c8e4e1e-aaaa-bbbb-cccc-ddddeeeeffff)
GPU 1: Tesla T4 (UUID: GPU-8932f937-6666-7777-8888-99990000aaaa)
"""
A100, T4 = parse_gpu_list(NVIDIA_SMI_L)


def test_the_driver_listing_gives_each_gpu_and_passes_over_mig_lines():
    assert parse_gpu_list(NVIDIA_SMI_L) == (
        DriverGpu(0, "NVIDIA A100-SXM4-40GB", "GPU-5d2f1c3a-0000-1111-2222-333344445555"),
        DriverGpu(1, "Tesla T4", "GPU-8932f937-6666-7777-8888-99990000aaaa"),
    )
    assert parse_gpu_list("No devices were found\n") == ()


def test_no_gpu_leaves_every_model_on_the_cpu():
    devices = detect_devices(gpus=(), xgboost_cuda=True, environ={})
    assert devices == Devices(gpus=(), xgboost_cuda=True)
    assert (xgboost_device(devices), cnn_on_gpu(devices)) == ("cpu", False)
    assert devices.summary == "no GPU"
    assert device_key(devices) == "gpus=none xgboost=cpu"


def test_a_gpu_and_a_cuda_build_put_xgboost_and_the_cnn_on_it():
    devices = detect_devices(gpus=(A100,), xgboost_cuda=True, environ={})
    assert (xgboost_device(devices), cnn_on_gpu(devices)) == ("cuda", True)
    assert devices.summary == "GPU: NVIDIA A100-SXM4-40GB (the CNN and XGBoost train on it)"
    assert device_key(devices) == "gpus=NVIDIA A100-SXM4-40GB xgboost=cuda"


def test_a_cpu_only_xgboost_build_keeps_xgboost_on_the_cpu_beside_a_gpu():
    devices = detect_devices(gpus=(A100, T4), xgboost_cuda=False, environ={})
    assert (xgboost_device(devices), cnn_on_gpu(devices)) == ("cpu", True)
    assert devices.summary == (
        "GPU: NVIDIA A100-SXM4-40GB, Tesla T4 (the CNN trains on it; XGBoost on the CPU: "
        "its build has no CUDA)"
    )
    assert device_key(devices) != device_key(detect_devices(gpus=(A100, T4), xgboost_cuda=True,
                                                            environ={}))  # fmt: skip


@pytest.mark.parametrize(
    ("visible", "gpus"),
    [("", ()), ("-1", ()), ("1", ("Tesla T4",)), ("1,0", ("Tesla T4", "NVIDIA A100-SXM4-40GB")),
     ("0,7,1", ("NVIDIA A100-SXM4-40GB",)), ("GPU-8932f937", ("Tesla T4",)),
     ("MIG-0c8e4e1e", ())],
)  # fmt: skip
def test_cuda_visible_devices_chooses_the_gpus_as_cuda_does(visible, gpus):
    devices = detect_devices(gpus=(A100, T4), xgboost_cuda=True,
                             environ={"CUDA_VISIBLE_DEVICES": visible})  # fmt: skip
    assert devices.gpus == gpus
    assert xgboost_device(devices) == ("cuda" if gpus else "cpu")


@pytest.fixture
def fake_nvidia_smi(tmp_path, monkeypatch):
    """An `nvidia-smi` on PATH printing `output` and exiting with `status`; the driver's
    listing is read afresh for the test."""

    def install(output: str, status: int = 0) -> None:
        tool = tmp_path / "nvidia-smi"
        tool.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}EOF\nexit {status}\n")
        tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
        monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
        driver_gpus.cache_clear()

    yield install
    driver_gpus.cache_clear()


def test_the_driver_is_asked_through_nvidia_smi(fake_nvidia_smi):
    fake_nvidia_smi(NVIDIA_SMI_L)
    assert driver_gpus() == (A100, T4)


def test_a_driver_that_fails_shows_no_gpu(fake_nvidia_smi):
    fake_nvidia_smi("NVIDIA-SMI has failed because it couldn't communicate with the driver\n", 9)
    assert driver_gpus() == ()


def test_without_nvidia_smi_there_is_no_gpu(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("PATH", str(tmp_path))
    driver_gpus.cache_clear()
    try:
        assert driver_gpus() == ()
    finally:
        driver_gpus.cache_clear()


class FakeTensorFlowConfig:
    """What `prepare_gpus` calls of `tf.config`, recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.experimental = self

    def set_memory_growth(self, device, enable: bool) -> None:
        self.calls.append(("memory growth", device, enable))

    def enable_op_determinism(self) -> None:
        self.calls.append(("op determinism",))


def test_every_gpu_grows_its_memory_and_ops_are_deterministic_before_any_model():
    config = FakeTensorFlowConfig()
    prepare_gpus(config, ["GPU:0", "GPU:1"])
    assert config.calls == [
        ("memory growth", "GPU:0", True),
        ("memory growth", "GPU:1", True),
        ("op determinism",),
    ]


def test_on_the_cpu_tensorflow_is_left_as_it_was():
    config = FakeTensorFlowConfig()
    prepare_gpus(config, [])
    assert config.calls == []


def test_a_gpu_tensorflow_cannot_use_is_named_in_a_warning():
    gpu = Devices(gpus=("Tesla T4",), xgboost_cuda=True)
    assert missing_gpu_note([], gpu).startswith(
        "TensorFlow lists no GPU, though the driver shows Tesla T4: the CNN trains on the CPU"
    )
    assert missing_gpu_note(["GPU:0"], gpu) == ""
    assert missing_gpu_note([], Devices((), xgboost_cuda=False)) == ""


def fake_devices(monkeypatch, module, devices: Devices) -> None:
    monkeypatch.setattr(module, "detect_devices", lambda: devices)


def test_xgboost_is_built_and_loaded_for_the_gpu_only_with_a_cuda_build(monkeypatch, tmp_path):
    module = tasks.training.models.xgboost_model
    context = TrainingContext(seed=0, threads=1)
    fake_devices(monkeypatch, module, Devices(("Tesla T4",), xgboost_cuda=True))
    assert build_xgboost(XGBoostParams(), context).model.get_params()["device"] == "cuda"
    fake_devices(monkeypatch, module, Devices(("Tesla T4",), xgboost_cuda=False))
    classifier = build_xgboost(XGBoostParams(), context)
    assert classifier.model.get_params()["device"] == "cpu"
    assert classifier.model.get_params()["tree_method"] == "hist"

    rng = np.random.default_rng(0)
    x, y = rng.random((30, 4)), np.arange(30) % 3
    classifier.model.set_params(n_estimators=2, num_class=3, early_stopping_rounds=None,
                                callbacks=None)  # fmt: skip
    classifier.model.fit(x, y, eval_set=[(x, y)], verbose=False)
    classifier.save(tmp_path)
    fake_devices(monkeypatch, module, Devices(("Tesla T4",), xgboost_cuda=True))
    assert XGBoostClassifier.load(tmp_path, threads=1).model.get_params()["device"] == "cuda"


def test_the_report_and_metrics_name_the_gpu_beside_the_cpu(monkeypatch):
    fake_devices(monkeypatch, tasks.core.cpus, Devices(("Tesla T4",), xgboost_cuda=True))
    facts = tasks.core.cpus.machine_facts()
    cpu = f"{cpu_model()}, {machine_cores()}"
    assert facts["summary"] == f"{cpu}; GPU: Tesla T4 (the CNN and XGBoost train on it)"
    assert (facts["gpus"], facts["cnn_device"], facts["xgboost_device"]) == (
        ["Tesla T4"], "gpu", "cuda"
    )  # fmt: skip
    fake_devices(monkeypatch, tasks.core.cpus, Devices((), xgboost_cuda=True))
    facts = tasks.core.cpus.machine_facts()
    assert facts["summary"] == f"{cpu}; no GPU"
    assert (facts["gpus"], facts["cnn_device"], facts["xgboost_device"]) == ([], "cpu", "cpu")
