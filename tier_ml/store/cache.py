"""A per-process cache of customers' ledger events, already read as engine events, and of
their rules replay checkpoints.

Every batch re-evaluates the customers it touches from their *whole* history,
and reading that history again (rows and their conversion under the policy)
costs about as much as the replay itself. The ledger is append-only, so a
process can keep what it read and ask the database only for a customer's rows
after the last id it saw.

Why that is exact: a customer's events are only inserted by a transaction that
holds the customer's lock (SQLite: the single write lock; PostgreSQL: the
customer's row, ``FOR UPDATE``), so once a reader holds the lock, every event
of the customer with an id below the ids it will see later is committed and
was read. Entries are keyed by the policy's fingerprint (another policy reads
the same rows differently) and are only stored after the transaction that read
them commits (a rolled-back batch leaves nothing behind). The cache is bounded
(least recently used customers are dropped first) and shared by the threads of
one process.

With the events, an entry keeps the checkpoint of the customer's last rules
replay (``tier_ml.rules.ReplayCheckpoint``): the next evaluation replays only
the instants from the customer's latest event on instead of the whole history.
``replay`` itself checks that the checkpoint still holds (same policy, the same
events before it) and replays everything otherwise, so a stale checkpoint can
cost time but never change a tier.
"""

from __future__ import annotations

import gc
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import Engine

from tier_ml.events import OrderEvent
from tier_ml.rules import ReplayCheckpoint

#: Events kept per process and engine (about 0.3 GB at the bound).
MAX_CACHED_EVENTS = 1_000_000
#: The collector's youngest-generation threshold during a bounded run (Python's default: 700).
BULK_GC_THRESHOLD = 50_000


@dataclass(frozen=True, slots=True)
class CachedLedger:
    """What a process knows of one customer's ledger under one policy."""

    fingerprint: str
    last_id: int  # the highest ledger id read for the customer
    size: int  # ledger rows read, including those the policy cannot read
    events: tuple[OrderEvent, ...]
    #: The rules replay's state at the customer's last evaluation (``tier_ml.rules.replay``
    #: checks it still holds before resuming from it).
    checkpoint: ReplayCheckpoint | None = None


class LedgerCache:
    """Customers' ledger events by customer id, least recently used dropped first."""

    def __init__(self, max_events: int = MAX_CACHED_EVENTS) -> None:
        self.max_events = max_events
        self._entries: OrderedDict[str, CachedLedger] = OrderedDict()
        self._events = 0
        self._lock = threading.Lock()

    def lookup(self, customer_ids: Iterable[str], fingerprint: str) -> dict[str, CachedLedger]:
        with self._lock:
            found = {}
            for customer_id in customer_ids:
                entry = self._entries.get(customer_id)
                if entry is not None and entry.fingerprint == fingerprint:
                    self._entries.move_to_end(customer_id)
                    found[customer_id] = entry
            return found

    def store(self, entries: Mapping[str, CachedLedger]) -> None:
        """Keep entries read by a committed transaction (never older than what is kept)."""
        with self._lock:
            for customer_id, entry in entries.items():
                kept = self._entries.get(customer_id)
                if kept is not None:
                    if kept.fingerprint == entry.fingerprint and kept.last_id > entry.last_id:
                        continue
                    self._events -= len(kept.events)
                self._entries[customer_id] = entry
                self._entries.move_to_end(customer_id)
                self._events += len(entry.events)
            while self._events > self.max_events and self._entries:
                _, dropped = self._entries.popitem(last=False)
                self._events -= len(dropped.events)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._events = 0

    def __len__(self) -> int:
        return len(self._entries)


_caches: weakref.WeakKeyDictionary[Engine, LedgerCache] = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def ledger_cache(engine: Engine) -> LedgerCache:
    """The cache of this process for the store behind ``engine``."""
    with _caches_lock:
        cache = _caches.get(engine)
        if cache is None:
            cache = _caches[engine] = LedgerCache()
        return cache


def freeze_long_lived() -> None:
    """Keep what is alive now out of the garbage collector's full collections.

    A batch ingest holds millions of long-lived objects (its input rows, this
    cache); every full collection walks all of them, which cost 20-25 % of the
    ingest time of a 1M-event stream. After a young collection (so a batch's own
    cyclic garbage is freed first) the survivors move to the permanent
    generation. They are still freed by reference counting when dropped; only
    one that later becomes part of a garbage *cycle* would never be collected,
    so this is for bounded runs (``tier-ml ingest``), not the long-running worker.
    For the run it also collects the youngest generation every ``BULK_GC_THRESHOLD``
    allocations instead of every 700 (a batch allocates hundreds of thousands of
    short-lived objects, nearly all freed by reference counting: the default
    threshold spent 6 % of the ingest's CPU in young collections, this 1.3 %).
    Call :func:`thaw_long_lived` at the end of the run.
    """
    global _saved_threshold
    if _saved_threshold is None:
        _saved_threshold = gc.get_threshold()
        gc.set_threshold(BULK_GC_THRESHOLD, *_saved_threshold[1:])
    gc.collect(1)
    gc.freeze()


def thaw_long_lived() -> None:
    """Hand frozen objects back to the collector and restore its thresholds (the end of a
    bounded run)."""
    global _saved_threshold
    gc.unfreeze()
    if _saved_threshold is not None:
        gc.set_threshold(*_saved_threshold)
        _saved_threshold = None


_saved_threshold: tuple[int, ...] | None = None
