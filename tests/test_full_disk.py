"""A full disk, for real: a small tmpfs mounted for the test (root only). The run is refused
before it trains when the disk cannot hold what it writes, and a write that fails anyway
is one line naming the path, with nothing half-written left behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from flows.full_pipeline import main
from tasks.core.errors import StorageError
from tasks.core.storage import cached_directory, save_arrays
from tasks.evaluation.report.writer import write_report
from tests.support.samples import sample_evaluations, sample_split

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs at tmp_path/disk, unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def everything_under(directory: Path) -> list[str]:
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*"))


def test_a_run_whose_report_will_not_fit_is_refused_before_it_trains(
    tmp_path, small_disk, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    arguments = ["--profile", "quick", "--models", "logistic_regression,random_forest,xgboost"]
    assert main([*arguments, "--output-dir", "disk/reports"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: disk/reports: no space left on device (needs about 2 MB)"
    )
    assert everything_under(small_disk) == []
    assert not (tmp_path / "data").exists()  # nothing ran


def test_a_cache_entry_that_fills_the_disk_is_one_line_and_leaves_nothing(small_disk):
    target = small_disk / "models" / "xgboost" / "key"

    def write_two_megabytes(staging):
        save_arrays(staging, {"weights": np.zeros(2**19, dtype=np.float32)})

    with pytest.raises(StorageError) as raised:
        cached_directory(target, write_two_megabytes)
    assert str(raised.value) == f"{target}: no space left on device"
    assert everything_under(small_disk) == ["models", "models/xgboost"]


def test_a_report_that_fills_the_disk_is_one_line_and_leaves_nothing(tmp_path, small_disk):
    evaluations, data = sample_evaluations(tmp_path), sample_split(tmp_path)
    (small_disk / "filler").write_bytes(b"\0" * (1024**2 - 64 * 1024))  # 64 KB left
    report_dir = small_disk / "reports" / "run-1"
    with pytest.raises(StorageError) as raised:
        write_report(evaluations, data, report_dir, context={}, seed=0)
    assert str(raised.value) == f"{report_dir}: no space left on device"
    assert everything_under(small_disk) == ["filler", "reports"]
