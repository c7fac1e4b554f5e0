"""Consumption state: (service, outbox id) -> consumed/dead and when, plus per-service counters.

Entries are kept ``worker.consumption_state_seconds`` (15 minutes): relay duplicates arrive within its table lease
and stale-published sweep windows (seconds to 10 minutes), and anything older (a consumer group reset to the
beginning) is decided by the database's row status, as every duplicate is. Memory: ~0.4 KB per entry in a running
worker (RSS slope of ``bench/chain_bench.py``'s soak, :mod:`tables.expiring`), bounded by retention x event rate
(300 events/s for 15 min: 270,000 entries, ~95 MB); values are shared objects, one per status. Counters are
kept per (service, partition), because a Faust table key must be written from its own partition; readers sum
them. After a worker restart the counters come back from the changelog.

Cost: state entries and counts are buffered; :meth:`flush` runs once per (service, partition) per agent batch and
writes the counters key, and a state segment at most once per partition per second (:mod:`tables.expiring`)
instead of one changelog message per event. What was recorded but not yet written when a worker dies is lost with
it (its batch may already be acked: those duplicates are then decided by the database; counters may undercount by
at most one batch).
"""

from __future__ import annotations

import time

import faust

from tables.expiring import ExpiringTable, _current_partition, status_value


class ConsumptionTable:
    def __init__(self, app: faust.App, partitions: int, retention_seconds: float) -> None:
        self.state = ExpiringTable(app, "outbox-consumption-state", retention_seconds, partitions,
                                   help="service:outbox_id -> consumed/dead")
        self.counters = app.Table("outbox-consumption-counters", default=dict, partitions=partitions,
                                  help="service:partition -> {status: count}")
        self._pending: dict[tuple[str, int], dict[str, int]] = {}

    def terminal(self, service: str, outbox_id: int) -> str | None:
        value = self.state.get(f"{service}:{outbox_id}")
        return value.get("s") if value else None

    def record(self, service: str, outbox_id: int, status: str, counted: bool = True) -> None:
        """Remember the row's terminal status; ``counted``: it became terminal just now (not a duplicate)."""
        self.state.set(f"{service}:{outbox_id}", status_value(status))
        if not counted:
            return
        pending = self._pending.setdefault((service, _current_partition()), {})
        pending[status] = pending.get(status, 0) + 1

    def flush(self, service: str, partition: int) -> None:
        """Write the buffered state entries of ``partition`` and add the buffered counts of (service, partition) to
        its counters key; call while processing an event of that partition (Faust writes the changelog of the
        current event's partition)."""
        self.state.flush(partition)
        pending = self._pending.pop((service, partition), None)
        if not pending:
            return
        key = f"{service}:{partition}"
        counts = dict(self.counters[key])
        for status, n in pending.items():
            counts[status] = counts.get(status, 0) + n
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
