from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tasks.core import disk
from tasks.core.contracts import content_hashes
from tasks.core.errors import StorageError
from tasks.core.storage import (
    MANIFEST_FILE,
    CorruptArrayError,
    array_refs,
    cached_directory,
    entry_problem,
    save_arrays,
    scratch_name,
    sha256_file,
    sweep_scratch,
    write_new_directory,
)


def write_numbers(calls: list):
    def write(staging):
        calls.append(staging)
        save_arrays(staging, {"numbers": np.arange(10)})

    return write


def test_entry_is_built_once_then_reused(tmp_path):
    calls = []
    target = tmp_path / "cache" / "key"
    assert cached_directory(target, write_numbers(calls)) is False
    assert cached_directory(target, write_numbers(calls)) is True
    assert len(calls) == 1
    manifest = json.loads((target / MANIFEST_FILE).read_text())
    assert set(manifest) == {"numbers.npy"}
    (ref,) = array_refs(target, ["numbers"]).values()
    assert ref.sha256 == manifest["numbers.npy"]
    np.testing.assert_array_equal(ref.load(), np.arange(10))
    assert [p.name for p in target.parent.iterdir()] == ["key"]


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda d: (d / "numbers.npy").write_bytes(b"x"), "numbers.npy does not match"),
        (lambda d: (d / "numbers.npy").unlink(), "numbers.npy is missing"),
        (lambda d: (d / MANIFEST_FILE).write_text("{"), "manifest unreadable"),
    ],
    ids=["changed", "missing", "bad-manifest"],
)
def test_damaged_entry_is_rebuilt_never_used(tmp_path, damage, problem, caplog):
    calls = []
    target = tmp_path / "key"
    cached_directory(target, write_numbers(calls))
    damage(target)
    assert problem in entry_problem(target)
    assert cached_directory(target, write_numbers(calls)) is False
    assert f"cache entry is not usable ({problem}" in caplog.text
    assert len(calls) == 2
    assert entry_problem(target) is None


def test_refresh_rebuilds_a_good_entry(tmp_path):
    calls = []
    cached_directory(tmp_path / "key", write_numbers(calls))
    assert cached_directory(tmp_path / "key", write_numbers(calls), refresh=True) is False
    assert len(calls) == 2


def test_failed_build_leaves_nothing(tmp_path):
    def fail(staging):
        (staging / "half.npy").write_bytes(b"half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        cached_directory(tmp_path / "key", fail)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="killed mid-write"):
        write_new_directory(tmp_path / "report", fail)
    assert list(tmp_path.iterdir()) == []


def test_an_os_error_while_writing_is_one_line_naming_the_path_and_nothing_is_left(tmp_path):
    def full_disk(staging):
        (staging / "half.npy").write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(StorageError) as raised:
        cached_directory(tmp_path / "models" / "key", full_disk)
    assert str(raised.value) == f"{tmp_path / 'models' / 'key'}: no space left on device"
    assert raised.value.disk_full
    assert str(raised.value.needing(12.4)).endswith("no space left on device (needs about 12 MB)")
    assert list((tmp_path / "models").iterdir()) == []


def record_disk_writes(monkeypatch) -> list[tuple[str, str]]:
    """("synced", name) for every file or directory written to the disk, ("renamed",
    name) for every rename, in order."""
    events = []
    real_fsync, real_rename = disk._fsync, os.rename

    def fsync(path):
        events.append(("synced", path.name))
        real_fsync(path)

    def rename(source, target):
        events.append(("renamed", Path(target).name))
        real_rename(source, target)

    monkeypatch.setattr(disk, "_fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    return events


def test_an_entry_is_on_the_disk_before_it_gets_its_name(tmp_path, monkeypatch):
    events = record_disk_writes(monkeypatch)

    def write(staging):
        save_arrays(staging, {"numbers": np.arange(10)})
        (staging / "model").mkdir()
        (staging / "model" / "weights.bin").write_bytes(b"w")
        (staging / "model" / "latest").symlink_to("weights.bin")

    cached_directory(tmp_path / "cache" / "key", write)
    published = events.index(("renamed", "key"))
    synced = {name for _, name in events[:published]}
    assert {"numbers.npy", "manifest.json", "model", "weights.bin"} <= synced
    assert "latest" not in synced  # a symlink is saved by its directory's sync
    assert any(name.startswith(".key.staging-") for name in synced)
    assert events[published + 1 :] == [("synced", "cache")]  # the rename itself


def test_a_disk_that_refuses_the_data_when_synced_fails_the_write_and_publishes_nothing(
    tmp_path, monkeypatch
):
    def refused(path):  # a network or overlay file system reports a full disk only here
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(disk, "_fsync", refused)
    with pytest.raises(StorageError, match="no space left on device") as raised:
        cached_directory(tmp_path / "models" / "key", write_numbers([]))
    assert raised.value.disk_full
    assert list((tmp_path / "models").iterdir()) == []


def test_a_rebuild_that_fails_while_publishing_puts_the_old_entry_back(tmp_path, monkeypatch):
    calls = []
    target = tmp_path / "key"
    cached_directory(target, write_numbers(calls))

    def interrupted(staging, entry, keep_existing):  # after the old entry was moved aside
        raise RuntimeError("stopped between the two renames")

    monkeypatch.setattr("tasks.core.storage._publish", interrupted)
    with pytest.raises(RuntimeError, match="stopped between the two renames"):
        cached_directory(target, write_numbers(calls), refresh=True)
    assert entry_problem(target) is None
    assert [p.name for p in tmp_path.iterdir()] == ["key"]


def test_an_entry_another_run_published_meanwhile_is_kept(tmp_path):
    target = tmp_path / "key"

    def slower_run(staging):  # the other run publishes while this one writes
        cached_directory(target, write_numbers([]))
        (staging / "numbers.npy").write_bytes(b"this run's copy")

    assert cached_directory(target, slower_run) is False
    assert entry_problem(target) is None  # theirs, complete: this run's copy is dropped
    np.testing.assert_array_equal(np.load(target / "numbers.npy"), np.arange(10))
    assert [p.name for p in tmp_path.iterdir()] == ["key"]


def test_scratch_left_by_killed_runs_is_swept_and_live_runs_scratch_is_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    models = tmp_path / "models" / "cnn"
    models.mkdir(parents=True)
    killed = models / scratch_name(models / "key").replace(f"-{os.getpid()}-", f"-{dead.pid}-")
    killed.mkdir()
    (killed / "model.keras").write_bytes(b"half")
    live = models / scratch_name(models / "other")
    live.mkdir()
    elsewhere = models / f".key.staging-othermachine-{dead.pid}-0123abcd"
    elsewhere.mkdir()
    published = models / "key"
    published.mkdir()
    raw = tmp_path / "raw"  # a download killed midway: a file, with its target's suffix
    raw.mkdir()
    download = raw / "t10k-images-idx3-ubyte.gz"
    half = raw / (scratch_name(download).replace(f"-{os.getpid()}-", f"-{dead.pid}-") + ".gz")
    half.write_bytes(b"\x1f\x8b half")

    assert sorted(sweep_scratch([tmp_path])) == sorted([killed, half])
    assert sorted(p.name for p in models.iterdir()) == sorted(
        [live.name, elsewhere.name, published.name]
    )
    assert list(raw.iterdir()) == []


def test_stages_loading_one_array_at_once_share_its_mapping_and_every_load_is_checked(tmp_path):
    save_arrays(tmp_path, {"pixels": np.arange(4096, dtype=np.float32)})
    (ref,) = array_refs(tmp_path, ["pixels"]).values()
    first, second = ref.load(), ref.load()
    assert second is first
    maps = Path("/proc/self/maps").read_text().splitlines()
    assert sum(line.endswith(str(ref.path.resolve())) for line in maps) == 1
    assert float(second[4095]) == 4095.0
    del first, second
    np.save(ref.path, np.zeros(4096, dtype=np.float32))  # changed once nobody holds it
    with pytest.raises(CorruptArrayError, match=r"pixels.npy: content hash"):
        ref.load()


def test_content_hashes_are_the_files_hashes_of_the_arrays_named_in_that_order(tmp_path):
    save_arrays(tmp_path, {"a": np.arange(3), "b": np.ones(2), "c": np.zeros(5)})
    refs = array_refs(tmp_path, ["a", "b", "c"])
    assert content_hashes(refs) == {name: sha256_file(tmp_path / f"{name}.npy") for name in "abc"}
    assert list(content_hashes(refs, ["c", "a"]).items()) == [
        ("c", sha256_file(tmp_path / "c.npy")),
        ("a", sha256_file(tmp_path / "a.npy")),
    ]
