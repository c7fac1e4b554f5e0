"""A Faust table whose entries expire, without relying on Faust's windowed tables.

Faust's window expiry is unreliable after rebalances (faust-streaming #385, robinhood#224), and a table may only be
modified while processing an event of the key's partition. So: every value carries its write time ``t`` and the
partition ``p`` it was written from; reads ignore expired entries; and while processing an event of partition P we
delete at most 100 expired keys of P (oldest first), tracked in a per-partition FIFO that is rebuilt from the table
the first time P is seen after a (re)start. Memory stays bounded by ``ttl x event rate``.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import faust

MAX_EXPIRED_PER_EVENT = 100


class ExpiringTable:
    def __init__(self, app: faust.App, name: str, ttl_seconds: float, partitions: int, help: str = "") -> None:
        self.ttl = ttl_seconds
        self.table = app.Table(name, default=None, partitions=partitions, help=help)
        self._fifo: dict[int, deque[tuple[float, str]]] = {}

    def get(self, key: str) -> dict[str, Any] | None:
        value = self.table.get(key)
        if not value or value.get("t", 0) + self.ttl < time.time():
            return None
        return value

    def set(self, key: str, value: dict[str, Any]) -> None:
        """Write ``key`` (only inside stream processing: Faust writes the changelog of the event's partition)."""
        partition = _current_partition()
        now = time.time()
        self.table[key] = {**value, "t": now, "p": partition}
        fifo = self._partition_fifo(partition)
        fifo.append((now, key))
        self._expire(fifo, now)

    def _partition_fifo(self, partition: int) -> deque[tuple[float, str]]:
        fifo = self._fifo.get(partition)
        if fifo is None:
            entries = sorted(
                (v.get("t", 0.0), k) for k, v in list(self.table.items()) if v and v.get("p") == partition
            )
            fifo = self._fifo[partition] = deque(entries)
        return fifo

    def _expire(self, fifo: deque[tuple[float, str]], now: float) -> None:
        removed = 0
        while fifo and fifo[0][0] + self.ttl < now and removed < MAX_EXPIRED_PER_EVENT:
            written, key = fifo.popleft()
            current = self.table.get(key)
            if current and current.get("t", 0) <= written:
                del self.table[key]
                removed += 1

    def __len__(self) -> int:
        return len(self.table)


def _current_partition() -> int:
    event = faust.current_event()
    if event is None:
        raise RuntimeError("table writes are only allowed while processing an event")
    return int(event.message.partition)
