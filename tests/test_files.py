"""One file written atomically: readers see the old file or the new one, never half."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tasks.core import disk
from tasks.core.errors import StorageError
from tasks.core.files import replacing, write_atomically


def test_a_failed_write_leaves_the_previous_file_and_no_scratch_file(tmp_path):
    target = tmp_path / "predictions.csv"
    target.write_text("previous\n")

    def fail_midway(stream):
        stream.write("path,predicted_class\n")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomically(target, fail_midway)
    assert target.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.csv"]
    write_atomically(target, lambda stream: stream.write("new\n"))
    assert target.read_text() == "new\n"
    assert target.stat().st_mode & 0o777 == 0o644  # readable by the run's other users


def test_an_os_error_names_the_file_it_could_not_write(tmp_path):
    target = tmp_path / "errors.csv"

    def disk_full(stream):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StorageError, match=r"errors\.csv.*no space left on device") as raised:
        write_atomically(target, disk_full)
    assert raised.value.disk_full
    assert list(tmp_path.iterdir()) == []


def test_replacing_swaps_a_symlink_and_keeps_the_suffix(tmp_path):
    (tmp_path / "run-1").mkdir()
    (tmp_path / "run-2").mkdir()
    latest = tmp_path / "latest"
    for run in ("run-1", "run-2"):
        with replacing(latest) as staging:
            staging.symlink_to(run, target_is_directory=True)
        assert latest.resolve() == (tmp_path / run).resolve()
    with replacing(tmp_path / "images.gz", suffix=".gz") as partial:
        assert partial.suffix == ".gz"
        assert partial.name.startswith(".images.gz.")
        partial.write_bytes(b"\x1f\x8b")
    assert (tmp_path / "images.gz").read_bytes() == b"\x1f\x8b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images.gz", "latest", "run-1", "run-2"]


def test_the_file_is_on_the_disk_before_it_replaces_the_old_one(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = disk._fsync, os.replace
    monkeypatch.setattr(disk, "_fsync", lambda path: (events.append(path), real_fsync(path)))
    monkeypatch.setattr(
        os, "replace", lambda source, target: (events.append(target), real_replace(source, target))
    )
    target = tmp_path / "predictions.csv"
    write_atomically(target, lambda stream: stream.write("path,predicted_class\n"))
    partial, replaced, directory = events
    assert partial.name.startswith(".predictions.csv.staging-")
    assert (Path(replaced), directory) == (target, tmp_path)
    assert target.read_text() == "path,predicted_class\n"
