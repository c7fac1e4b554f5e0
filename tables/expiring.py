"""A Faust table of expiring entries, written to its changelog in segments: at most one per partition per second.

Why not one table key per entry: every Faust table write is one changelog message, and on the worker's hot path
(one consumption-state entry per event, one dedupe entry per notification) those writes cost ~1 ms of CPU per
trigger, 28 % of the worker (measured with ``bench/pipeline_bench.py``: 3.5 -> 2.5 ms per event without them).
So entries are buffered per partition and written by :meth:`ExpiringTable.flush` as one *segment* value
``{"t": write time, "p": partition, "e": {entry key: value}}`` under a fresh segment key.

Why segments are coalesced (``flush_every_seconds``, 1 s): a segment costs ~600 bytes of its own (two dicts, its key,
its bookkeeping) whatever it holds, and agents take small batches at light load (one event each when the agent is
free), so one segment per batch made the state ~1.4 KB per trigger instead of ~0.2 KB (gc census of a worker at 80
triggers/s, 2026-12-03). A flush therefore writes only when the partition's buffer is ``flush_every_seconds`` old or
holds ``flush_max_entries`` (500).

Invariants and limits:
- Reads go through an in-memory index (entry key -> its segment key, a shared string, or the partition number while
  the entry is buffered: one home per entry), built from the table the first time a partition is seen in a read or
  write with a current event of it (Faust recovers the table from the changelog before the agent gets events of a
  newly assigned partition): O(1) per read after that. Entries written by this process are visible at once, before
  their segment is written.
- Memory: ~150-200 bytes per live entry (its key string, shared by the index and its segment, and one slot in each)
  plus ~600 bytes per segment; values are shared objects (:func:`status_value`). Bounded by ``ttl`` x entry rate:
  an entry is ignored once ``ttl`` has passed since its write, and while processing partition P at most 100 expired
  segments of P are deleted per flush (oldest first).
- Faust only lets a table key be written while processing an event of the key's partition, so writes and flushes
  need a current event (the dispatcher calls :meth:`flush` for every partition of a batch with one of its events
  current). Buffered entries of a partition that gets no further events stay buffered (visible here, not in the
  changelog) until its next event; past ``ttl`` they are ignored like written ones.
- Accelerator only: entries buffered but not written when a worker dies are lost with it (at most ~1 s of them per
  partition), and after a rebalance this process's index may miss entries another worker wrote meanwhile. Both
  cost one database read, never a wrong answer: only decisions the database already committed are stored.
- Tables written by the previous layout (one key per entry, ``{"t", "p", ...}``) are read as one-entry segments
  and expire the same way, so a rolling upgrade keeps them.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from typing import Any

import faust

MAX_EXPIRED_PER_FLUSH = 100
FLUSH_EVERY_SECONDS = 1.0
FLUSH_MAX_ENTRIES = 500
_META = ("t", "p")


class ExpiringTable:
    def __init__(self, app: faust.App, name: str, ttl_seconds: float, partitions: int, help: str = "",
                 flush_every_seconds: float = FLUSH_EVERY_SECONDS, flush_max_entries: int = FLUSH_MAX_ENTRIES) -> None:
        self.ttl = ttl_seconds
        self.flush_every = flush_every_seconds
        self.flush_max = flush_max_entries
        self.table = app.Table(name, default=None, partitions=partitions, help=help)
        self._index: dict[str, str | int] = {}  # entry key -> segment key holding its value, or (int) the partition
        # whose buffer holds it until the next write
        self._written: dict[str, float] = {}  # segment key -> write time
        self._segments: dict[int, deque[str]] = {}  # partition -> segment keys, oldest first
        self._pending: dict[int, dict[str, dict[str, Any]]] = {}  # partition -> entries not yet written
        self._pending_since: dict[int, float] = {}  # partition -> time of its oldest buffered entry
        self._prefix = uuid.uuid4().hex[:8]
        self._seq = 0

    def get(self, key: str) -> dict[str, Any] | None:
        partition = _partition_or_none()
        if partition is not None:
            self._partition_segments(partition)
        elif not self._segments:  # outside stream processing, before any event: index what the table holds, once
            self._index_all()
        now = time.time()
        where = self._index.get(key)
        if where is None:
            return None
        if isinstance(where, int):  # buffered in partition ``where``
            if self._pending_since.get(where, now) + self.ttl < now:
                return None
            return self._pending.get(where, {}).get(key)
        if self._written.get(where, 0.0) + self.ttl < now:
            return None
        return _entries(where, self.table.get(where)).get(key)

    def set(self, key: str, value: dict[str, Any]) -> None:
        """Remember ``key`` now; it reaches the changelog at a :meth:`flush` of the current partition."""
        partition = _current_partition()
        self._partition_segments(partition)
        pending = self._pending.setdefault(partition, {})
        if not pending:
            self._pending_since[partition] = time.time()
        pending[key] = value
        self._index[key] = partition

    def flush(self, partition: int, force: bool = False) -> None:
        """Write ``partition``'s buffered entries as one segment when they are ``flush_every_seconds`` old or
        ``flush_max_entries`` many (``force``: now), and delete its expired segments; call while processing an
        event of that partition."""
        segments = self._partition_segments(partition)
        now = time.time()
        pending = self._pending.get(partition)
        if pending and (force or len(pending) >= self.flush_max
                        or now - self._pending_since.get(partition, now) >= self.flush_every):
            del self._pending[partition]
            self._seq += 1
            segment = f"{partition}:{self._prefix}:{self._seq}"
            self.table[segment] = {"t": now, "p": partition, "e": pending}
            self._written[segment] = now
            for key in pending:
                self._index[key] = segment
            segments.append(segment)
        removed = 0
        while segments and self._written.get(segments[0], 0.0) + self.ttl < now and removed < MAX_EXPIRED_PER_FLUSH:
            segment = segments.popleft()
            for key in _entries(segment, self.table.get(segment)):
                if self._index.get(key) == segment:
                    del self._index[key]
            if segment in self.table:
                del self.table[segment]
            self._written.pop(segment, None)
            removed += 1

    def _partition_segments(self, partition: int) -> deque[str]:
        segments = self._segments.get(partition)
        if segments is None:
            found = sorted(((v.get("t", 0.0), k, v) for k, v in list(self.table.items())
                            if isinstance(v, dict) and v.get("p") == partition), key=lambda f: (f[0], f[1]))
            segments = self._segments[partition] = deque(segment for _, segment, _ in found)
            for written, segment, stored in found:
                self._written[segment] = written
                for key in _entries(segment, stored):
                    current = self._index.get(key)
                    if current is None or (isinstance(current, str) and self._written.get(current, 0.0) <= written):
                        self._index[key] = segment
        return segments

    def _index_all(self) -> None:
        for partition in {v.get("p") for v in list(self.table.values()) if isinstance(v, dict)}:
            if isinstance(partition, int) and partition not in self._segments:
                self._partition_segments(partition)

    def __len__(self) -> int:
        """Entries this process knows, expired ones not yet removed and buffered ones included."""
        return len(self._index)


def status_value(status: str) -> dict[str, str]:
    """The entry value ``{"s": status}``, one shared object per status (entry values are never mutated): ~0.2 KB
    less per entry than a dict each."""
    return _STATUS_VALUES.setdefault(status, {"s": status})


_STATUS_VALUES: dict[str, dict[str, str]] = {}


def _entries(segment: str, value: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict):
        return {}
    if "e" in value:
        return value["e"] if isinstance(value["e"], dict) else {}
    return {segment: {k: v for k, v in value.items() if k not in _META}}  # previous layout: key = entry key


def _partition_or_none() -> int | None:
    event = faust.current_event()
    return None if event is None else int(event.message.partition)


def _current_partition() -> int:
    partition = _partition_or_none()
    if partition is None:
        raise RuntimeError("table writes are only allowed while processing an event")
    return partition
