"""A Faust table of expiring entries, written to its changelog once per batch and partition.

Why not one table key per entry: every Faust table write is one changelog message, and on the worker's hot path
(one consumption-state entry per event, one dedupe entry per notification) those writes cost ~1 ms of CPU per
trigger, 28 % of the worker (measured with ``bench/pipeline_bench.py``: 3.5 -> 2.5 ms per event without them).
So entries are buffered per partition and written by :meth:`ExpiringTable.flush` as one *segment* value
``{"t": write time, "p": partition, "e": {entry key: value}}`` under a fresh segment key: one changelog message per
batch and partition, whatever the batch size.

Invariants and limits:
- Reads go through an in-memory index (entry key -> segment), built from the table the first time a partition is
  seen in a read or write with a current event of it (Faust recovers the table from the changelog before the agent
  gets events of a newly assigned partition): O(1) per read after that. Entries written by this process are visible
  at once, before their segment is flushed.
- An entry is ignored once ``ttl`` has passed since its write; while processing partition P, at most 100 expired
  segments of P are deleted per flush (oldest first), so memory stays bounded by ``ttl x event rate``.
- Faust only lets a table key be written while processing an event of the key's partition, so writes and flushes
  need a current event (the dispatcher flushes every partition of a batch with one of its events current).
- Accelerator only: entries buffered but not flushed when a worker dies are lost with it (its batch is
  redelivered), and after a rebalance this process's index may miss entries another worker wrote meanwhile. Both
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
_META = ("t", "p")


class ExpiringTable:
    def __init__(self, app: faust.App, name: str, ttl_seconds: float, partitions: int, help: str = "") -> None:
        self.ttl = ttl_seconds
        self.table = app.Table(name, default=None, partitions=partitions, help=help)
        self._index: dict[str, tuple[float, str, dict[str, Any]]] = {}  # entry key -> (written, segment, value)
        self._segments: dict[int, deque[tuple[float, str]]] = {}  # partition -> (written, segment), oldest first
        self._pending: dict[int, dict[str, dict[str, Any]]] = {}  # partition -> entries not yet flushed
        self._prefix = uuid.uuid4().hex[:8]
        self._seq = 0

    def get(self, key: str) -> dict[str, Any] | None:
        partition = _partition_or_none()
        if partition is not None:
            self._partition_segments(partition)
        elif not self._segments:  # outside stream processing, before any event: index what the table holds, once
            self._index_all()
        entry = self._index.get(key)
        if entry is None or entry[0] + self.ttl < time.time():
            return None
        return entry[2]

    def set(self, key: str, value: dict[str, Any]) -> None:
        """Remember ``key`` now; it reaches the changelog at the next :meth:`flush` of the current partition."""
        partition = _current_partition()
        self._partition_segments(partition)
        self._pending.setdefault(partition, {})[key] = value
        self._index[key] = (time.time(), "", value)

    def flush(self, partition: int) -> None:
        """Write ``partition``'s buffered entries as one segment and delete its expired segments; call while
        processing an event of that partition."""
        segments = self._partition_segments(partition)
        now = time.time()
        pending = self._pending.pop(partition, None)
        if pending:
            self._seq += 1
            segment = f"{partition}:{self._prefix}:{self._seq}"
            self.table[segment] = {"t": now, "p": partition, "e": pending}
            for key, value in pending.items():
                if self._index.get(key, (0.0, "", None))[1] == "":
                    self._index[key] = (now, segment, value)
            segments.append((now, segment))
        removed = 0
        while segments and segments[0][0] + self.ttl < now and removed < MAX_EXPIRED_PER_FLUSH:
            _, segment = segments.popleft()
            for key in _entries(segment, self.table.get(segment)):
                if self._index.get(key, (0.0, "", None))[1] == segment:
                    del self._index[key]
            if segment in self.table:
                del self.table[segment]
            removed += 1

    def _partition_segments(self, partition: int) -> deque[tuple[float, str]]:
        segments = self._segments.get(partition)
        if segments is None:
            found = sorted(((v.get("t", 0.0), k, v) for k, v in list(self.table.items())
                            if isinstance(v, dict) and v.get("p") == partition), key=lambda f: (f[0], f[1]))
            segments = self._segments[partition] = deque((written, segment) for written, segment, _ in found)
            for written, segment, stored in found:
                for key, value in _entries(segment, stored).items():
                    current = self._index.get(key)
                    if current is None or current[0] <= written:
                        self._index[key] = (written, segment, value)
        return segments

    def _index_all(self) -> None:
        for partition in {v.get("p") for v in list(self.table.values()) if isinstance(v, dict)}:
            if isinstance(partition, int) and partition not in self._segments:
                self._partition_segments(partition)

    def __len__(self) -> int:
        """Entries this process knows, expired ones not yet removed included."""
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
