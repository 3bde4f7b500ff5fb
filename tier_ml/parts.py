"""Numpy work over many customers, in parts of whole customers, side by side on threads.

The batch rules engine's replay and the feature pipeline's event aggregates both
reduce rows sorted by customer. They cut the rows into parts of about
``PART_ROWS`` rows, never splitting a customer, and run the parts on ``THREADS``
threads (numpy releases the GIL in its loops).

Small parts matter as much as the threads. A part's temporaries are a few MB,
which the allocator hands out again part after part. Ten-million-row temporaries
are fresh pages that the OS must zero, and on this kind of machine they cost more
in page faults than in arithmetic. Parts also bound the memory of the work
(at most ``THREADS`` parts at once), whatever the input size.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

#: Threads for the numpy work (tests set other values; any value gives the same answer).
THREADS = 2

#: Rows per part (fewer when that leaves a thread without a part).
PART_ROWS = 262_144

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(frozen=True)
class Part:
    """Whole customers: their positions in per-customer arrays, and their rows in per-row arrays."""

    customers: slice
    rows: slice


def run_starts(keys: np.ndarray) -> np.ndarray:
    """The first row of each run of equal ``keys`` (rows sorted by customer)."""
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    return np.flatnonzero(first)


def customer_parts(starts: np.ndarray, rows: int) -> list[Part]:
    """Parts of about ``PART_ROWS`` of ``rows`` rows, where customer ``i``'s rows begin at
    ``starts[i]``; a part ends at a customer's first row, so it may be a little larger."""
    size = max(1, min(-(-rows // THREADS), PART_ROWS))
    cuts = np.searchsorted(starts, np.arange(size, rows, size))  # the first customer at or after a cut
    bounds = sorted({0, len(starts), *cuts.tolist()})
    row_bounds = np.append(starts, rows)
    return [
        Part(slice(begin, end), slice(int(row_bounds[begin]), int(row_bounds[end])))
        for begin, end in itertools.pairwise(bounds)
        if end > begin
    ]


def row_parts(rows: int) -> list[slice]:
    """Parts of about ``PART_ROWS`` of ``rows`` rows, for work where each row stands alone."""
    size = max(1, min(-(-rows // THREADS), PART_ROWS))
    return [slice(begin, min(begin + size, rows)) for begin in range(0, rows, size)]


def map_on_threads(function: Callable[[Item], Result], items: Iterable[Item]) -> list[Result]:
    """``function`` of every item, on ``THREADS`` threads, in the order of ``items``."""
    with ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="tier-ml-parts") as pool:
        return list(pool.map(function, items))
