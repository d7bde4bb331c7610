from __future__ import annotations

import json

import numpy as np
import pytest

from tasks.storage import (
    MANIFEST_FILE,
    array_refs,
    cached_directory,
    entry_problem,
    save_arrays,
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
