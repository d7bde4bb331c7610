"""Memory a finished stage freed goes back to the machine, and its log says how much."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

from tasks.core import memory
from tasks.core.memory import give_back_freed_memory, resident_bytes, say_memory_given_back

MB = 2**20


def test_freed_memory_held_by_malloc_is_given_back():
    # Blocks of 32 KB, each followed by a small one kept: freed, the blocks cannot merge
    # (nor, below 64 KB, make free() trim), and 128 MB of free pages stay resident between
    # the kept ones until trimmed, all but each block's part-pages.
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks, kept = [], []
    for _ in range(4000):
        blocks.append(libc.malloc(32 * 1024))
        ctypes.memset(blocks[-1], 1, 32 * 1024)  # resident
        kept.append(libc.malloc(64))
    for block in blocks:
        libc.free(block)
    before = resident_bytes()
    given, after = give_back_freed_memory()
    for pin in kept:
        libc.free(pin)
    assert given > 90 * MB
    assert after <= before - 90 * MB


def test_resident_memory_is_none_where_proc_cannot_tell(tmp_path):
    assert resident_bytes(tmp_path / "none") is None
    assert resident_bytes() > 10 * MB  # this Python, its imports included


def test_the_log_says_how_much_was_given_back_only_where_it_is_much(monkeypatch, caplog):
    logger = logging.getLogger("test_memory")
    for given, said in [((300 * MB, 1.5e9), True), ((MB, 1.5e9), False), (None, False)]:
        monkeypatch.setattr(memory, "give_back_freed_memory", lambda given=given: given)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="test_memory"):
            say_memory_given_back(logger, "training xgboost")
        expected = "gave back 300 MB freed by training xgboost; 1.50 GB resident"
        assert (expected in caplog.text) is said
        assert bool(caplog.text) is said
