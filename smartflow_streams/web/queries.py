"""Read-only database queries behind the worker's operations views (status snapshot, table checks).

Invariants: nothing here writes; free text read from rows (``last_error``, ``reason``) is returned scrubbed with
:func:`smartflow_streams.core.masking.scrub_error` (secrets, DB passwords, SQL parameters); every listing is bounded (outbox admin caps at 500 rows).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from smartflow_streams.core import metrics
from smartflow_streams.catalog import registry
from smartflow_streams.db.models import notification_records, outbox_dead_messages
from smartflow_streams.core.masking import scrub_error
from smartflow_streams.outbox import admin as outbox_admin

NOTIFICATION_STATUSES = ("pending", "sending", "sent", "failed", "dead", "skipped")
NOTIFICATION_SERVICE = "notification"


def scrub_rows(rows: list[dict[str, Any]], *fields: str) -> list[dict[str, Any]]:
    for row in rows:
        for name in fields:
            if isinstance(row.get(name), str):
                row[name] = scrub_error(row[name])
    return rows


async def notification_counts(engine: AsyncEngine) -> dict[str, int]:
    """``notification_records`` by status; every known status present (0 when none)."""
    t = notification_records
    counts = {s: 0 for s in NOTIFICATION_STATUSES}
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(t.c.status, sa.func.count()).group_by(t.c.status))).all()
    counts.update({str(status): int(n) for status, n in rows})
    return counts


async def dead_message_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(outbox_dead_messages))).scalar() or 0)


async def service_has_table(engine: AsyncEngine, service: str) -> bool:
    """True when ``service`` is in the catalog and its outbox table exists."""
    if service not in registry.services():
        return False
    table = registry.service_route(service).table
    async with engine.connect() as conn:
        return bool(await conn.run_sync(lambda c: sa.inspect(c).has_table(table)))


def _counter_values(counter: Any, *labels: str) -> dict[str, Any]:
    """A labelled prometheus Counter of this process as nested dicts (``{label1: {label2: value}}``)."""
    out: dict[str, Any] = {}
    for metric in counter.collect():
        for sample in metric.samples:
            if not sample.name.endswith("_total"):
                continue
            node = out
            for name in labels[:-1]:
                node = node.setdefault(sample.labels.get(name, ""), {})
            node[sample.labels.get(labels[-1], "")] = int(sample.value)
    return out


async def snapshot(engine: AsyncEngine, consumption: Any, worker_services: list[str], *,
                   dead_limit: int = 20) -> dict[str, Any]:
    """The ``/outbox/`` document: per-service counts, oldest pending age, recent dead rows (scrubbed), this
    worker group's consumption counters, notification records by status, where every consumed notification event
    went (:func:`notification_events`) and this process's outcome and dedupe counters (since it started)."""
    overviews = await outbox_admin.overview(engine, dead_limit=dead_limit)
    totals: dict[str, dict[str, int]] | None = None
    if consumption is not None:
        try:
            totals = consumption.totals()
        except Exception:  # noqa: BLE001 - a table still recovering must not break the overview
            totals = None
    services = []
    for ov in overviews:
        services.append({
            "service": ov.service, "table": ov.table, "topic": ov.topic,
            "consumed_by_this_worker": ov.service in worker_services,
            "counts": ov.counts, "oldest_pending_seconds": round(ov.oldest_pending_seconds, 3),
            "recent_dead": scrub_rows(ov.recent_dead, "last_error"),
            "consumption": (totals or {}).get(ov.service, {}),
        })
    records = await notification_counts(engine)
    notification_rows = next((ov.counts for ov in overviews if ov.service == NOTIFICATION_SERVICE), {})
    return {
        "generated_at": time.time(),
        "services": services,
        "consumption": totals,
        "notifications": {"records": records, "events": notification_events(notification_rows, records)},
        "dead_messages": await dead_message_count(engine),
        "worker": {
            "services": list(worker_services),
            "consumed_total": _counter_values(metrics.consumed, "service", "outcome"),
            "notifications_total": _counter_values(metrics.notifications, "status"),
            "notification_dedupe_hits_total": _counter_values(metrics.notification_dedupe_hits, "layer"),
        },
    }


def notification_events(outbox_counts: dict[str, int], records: dict[str, int]) -> dict[str, int]:
    """Where every consumed notification event went, from the database (all time).

    Each consumed ``notification.feishu.requested`` event either created a ``notification_records`` row (the first
    event of its dedupe key; the row's status is its outcome) or found one and was deduplicated, so
    ``deduplicated = consumed - records`` (never below 0). Limits: records whose events were purged from the
    outbox (``smartflow purge``) or written by another producer make ``deduplicated`` too small; ``dead`` events
    (handler failed, outbox row ``dead``) were not consumed and are counted apart.
    """
    consumed = int(outbox_counts.get("consumed", 0))
    recorded = sum(records.values())
    return {"consumed": consumed, "recorded": recorded, "deduplicated": max(0, consumed - recorded),
            "dead_in_outbox": int(outbox_counts.get("dead", 0))}


OUTBOX_VIEW_CACHE_SECONDS = 2.0


class SnapshotCache:
    """The ``/outbox/`` document, read at most once per ``ttl`` seconds (2 s, as the ``/metrics`` gauges): the
    open view costs ~37 statements per read on the agents' pool, so a client polling it in a loop must not multiply
    that. Concurrent requests share one read (a lock); a failed read is not cached (the next request retries).
    The document's ``generated_at`` tells its age."""

    def __init__(self, ttl: float = OUTBOX_VIEW_CACHE_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._lock = asyncio.Lock()
        self._value: dict[str, Any] | None = None
        self._expires = 0.0

    async def get(self, engine: AsyncEngine, consumption: Any, worker_services: list[str]) -> dict[str, Any]:
        async with self._lock:
            if self._value is None or self._clock() >= self._expires:
                self._value = await snapshot(engine, consumption, worker_services)
                self._expires = self._clock() + self.ttl
            return self._value
