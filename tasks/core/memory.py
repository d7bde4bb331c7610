"""Memory a finished stage freed, given back to the machine.

A run's models train in threads of one process. What a model frees, glibc's malloc keeps
in its arenas for the process to reuse, so a finished model's trees and histograms stay
resident beside the next model's peak; `malloc_trim` hands the arenas' free pages back.
Elsewhere (another libc, another system) there is nothing to trim and nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging
import os
from pathlib import Path

STATM = Path("/proc/self/statm")
# Below this, a stage's freed memory goes unmentioned in its log.
WORTH_SAYING_BYTES = 16 * 2**20


def resident_bytes(statm: Path = STATM) -> int | None:
    """This process's resident memory; None where /proc cannot tell."""
    try:
        return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return None


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def give_back_freed_memory() -> tuple[int, int] | None:
    """Collect Python's garbage and trim malloc's free pages: the resident bytes this gave
    back and those still resident; None where malloc cannot be trimmed or /proc not read."""
    trim = _malloc_trim()
    before = resident_bytes()
    if trim is None or before is None:
        return None
    gc.collect()
    trim(0)
    after = resident_bytes() or before
    return max(before - after, 0), after


def say_memory_given_back(logger: logging.Logger | logging.LoggerAdapter, after: str) -> None:
    """Give back what the stage `after` freed, and say so in its log where it is much."""
    given = give_back_freed_memory()
    if given and given[0] >= WORTH_SAYING_BYTES:
        logger.info(
            "gave back %.0f MB freed by %s; %.2f GB resident", given[0] / 2**20, after,
            given[1] / 1e9,
        )  # fmt: skip
