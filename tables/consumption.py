"""Consumption state: (service, outbox id) -> consumed/dead and when, plus per-service counters.

Entries are kept 24 hours (duplicates arrive within the relay's lease and sweep windows, minutes). Counters are
kept per (service, partition), because a Faust table key must be written from its own partition; readers sum
them. After a worker restart the counters come back from the changelog.
"""

from __future__ import annotations

import time

import faust

from tables.expiring import ExpiringTable, _current_partition

RETENTION_SECONDS = 24 * 3600


class ConsumptionTable:
    def __init__(self, app: faust.App, partitions: int) -> None:
        self.state = ExpiringTable(app, "outbox-consumption-state", RETENTION_SECONDS, partitions,
                                   help="service:outbox_id -> consumed/dead")
        self.counters = app.Table("outbox-consumption-counters", default=dict, partitions=partitions,
                                  help="service:partition -> {status: count}")

    def terminal(self, service: str, outbox_id: int) -> str | None:
        value = self.state.get(f"{service}:{outbox_id}")
        return value.get("s") if value else None

    def record(self, service: str, outbox_id: int, status: str) -> None:
        self.state.set(f"{service}:{outbox_id}", {"s": status})
        key = f"{service}:{_current_partition()}"
        counts = dict(self.counters[key])
        counts[status] = counts.get(status, 0) + 1
        counts["at"] = time.time()
        self.counters[key] = counts

    def totals(self) -> dict[str, dict[str, int]]:
        totals: dict[str, dict[str, int]] = {}
        for key, counts in list(self.counters.items()):
            service = key.rsplit(":", 1)[0]
            bucket = totals.setdefault(service, {})
            for status, n in (counts or {}).items():
                if status != "at":
                    bucket[status] = bucket.get(status, 0) + int(n)
        return totals
