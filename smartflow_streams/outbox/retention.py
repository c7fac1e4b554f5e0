"""Scheduled retention: delete old finished rows in bounded batches, from one active instance at a time.

What is deleted (``SMARTFLOW_RETENTION__*``; off by default, see docs/observability-retention-replay.md):
- outbox rows of every catalog table with ``status='consumed'`` and ``consumed_at`` older than
  ``consumed_outbox_days`` (7). Pending, published and dead rows are never touched (dead ones wait for an operator).
- ``notification_records`` in a terminal status (sent, dead, skipped) whose ``updated_at`` is older than
  ``notification_record_days`` (30). ``pending``/``failed``/``sending`` records are never touched.
- ``outbox_dead_messages`` copies whose ``created_at`` is older than ``dead_message_days`` (30).

Invariants and limits:
- One runner at a time across all relays: it holds the lease row ``retention`` in ``outbox_relay_leases`` (the
  relay's table lease, :class:`outbox_relay.lease.TableLease`, ``lease_seconds`` 300 s) and checks it before
  every batch; a runner that lost it, or whose relay is stopping, ends the run before the next batch. The others
  stand by and take over after the TTL.
- Bounded: each DELETE removes at most ``batch_size`` (1000) rows picked by primary key in one short transaction
  (its condition is repeated in the DELETE, so a row that changed status in between is kept); at most
  ``max_batches_per_run`` (100) batches per table and run, ``pause_seconds`` (0.05 s) between batches. A run
  therefore deletes at most 100,000 rows per table; a larger backlog is worked off over the next runs.
- Every run that deleted something writes one ``outbox_admin_audit`` row per table (action ``retention``, actor
  ``retention:<owner>``, detail with table, cutoff and count) and counts ``smartflow_retention_deleted_total{table}``.
- A failing run (database down) is logged and retried at the next interval; the loop never ends on an error.
- Deleting a consumed row is safe for replays: a later copy of its Kafka message finds no row (``not_found``) and
  runs nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from config import Settings
from outbox_relay.lease import TableLease
from smartflow_streams.core import clock, metrics
from smartflow_streams.catalog import RouteRegistry, registry as default_registry
from smartflow_streams.db.models import notification_records, outbox_dead_messages, outbox_table
from smartflow_streams.db.schema import outbox_table_names
from smartflow_streams.notification.records import TERMINAL as TERMINAL_RECORDS
from smartflow_streams.outbox.admin import write_audit

log = logging.getLogger(__name__)

LEASE_NAME = "retention"


@dataclass(frozen=True)
class Target:
    """One table's retention rule: rows matching ``condition(cutoff)`` are deleted."""

    table: sa.Table
    service: str  # audit service_name
    days: float
    condition: Callable[[datetime], sa.ColumnElement[bool]]


@dataclass
class RunReport:
    deleted: dict[str, int] = field(default_factory=dict)
    complete: bool = True  # False: the lease was lost or a table still has rows over max_batches_per_run


def targets(settings: Settings, reg: RouteRegistry | None = None) -> list[Target]:
    reg = reg or default_registry
    cfg = settings.retention
    service_of = {reg.service_route(s).table: s for s in reversed(reg.services())}
    out: list[Target] = []
    for name in outbox_table_names(reg):
        t = outbox_table(name)
        out.append(Target(t, service_of.get(name, name), cfg.consumed_outbox_days,
                          lambda cutoff, t=t: sa.and_(t.c.status == "consumed", t.c.consumed_at < cutoff)))
    r = notification_records
    out.append(Target(r, "notification", cfg.notification_record_days,
                      lambda cutoff: sa.and_(r.c.status.in_(TERMINAL_RECORDS), r.c.updated_at < cutoff)))
    d = outbox_dead_messages
    out.append(Target(d, "dead-messages", cfg.dead_message_days, lambda cutoff: d.c.created_at < cutoff))
    return out


async def run_once(engine: AsyncEngine, settings: Settings, *, actor: str,
                   still_held: Callable[[], object] | None = None, reg: RouteRegistry | None = None) -> RunReport:
    """One retention pass over every target (see the module note). ``still_held``: awaited before each batch;
    a falsy answer stops the pass (the lease was lost)."""
    cfg = settings.retention
    report = RunReport()
    now = clock.db_now()
    for target in targets(settings, reg):
        cutoff = now - timedelta(days=target.days)
        t = target.table
        deleted = 0
        for batch in range(cfg.max_batches_per_run):
            if still_held is not None and not await still_held():  # type: ignore[misc]
                report.complete = False
                break
            async with engine.begin() as conn:
                ids = list((await conn.execute(
                    sa.select(t.c.id).where(target.condition(cutoff)).order_by(t.c.id).limit(cfg.batch_size)
                )).scalars())
                if ids:
                    result = await conn.execute(sa.delete(t).where(t.c.id.in_(ids), target.condition(cutoff)))
                    deleted += int(result.rowcount or 0)
            if len(ids) < cfg.batch_size:
                break
            if batch == cfg.max_batches_per_run - 1:
                report.complete = False
            elif cfg.pause_seconds:
                await asyncio.sleep(cfg.pause_seconds)
        if deleted:
            metrics.retention_deleted.labels(t.name).inc(deleted)
            async with engine.begin() as conn:
                await write_audit(conn, target.service, "retention", actor,
                                  {"table": t.name, "older_than_days": target.days, "cutoff": cutoff,
                                   "deleted": deleted}, None)
            log.info("retention: deleted %d row(s) of %s older than %g day(s)", deleted, t.name, target.days)
        report.deleted[t.name] = deleted
        if not report.complete and still_held is not None and not await still_held():  # type: ignore[misc]
            break
    return report


class RetentionRunner:
    """The schedule: every ``retention.interval_seconds``, if this instance holds the retention lease, one
    :func:`run_once`. Started by the relay process when ``retention.enabled``."""

    def __init__(self, settings: Settings, engine: AsyncEngine, owner: str, stop: asyncio.Event,
                 reg: RouteRegistry | None = None) -> None:
        self.settings, self.engine, self.owner, self.stop, self.reg = settings, engine, owner, stop, reg
        self.lease = TableLease(engine, LEASE_NAME, owner, settings.retention.lease_seconds)
        self.last: RunReport | None = None

    async def run(self) -> None:
        interval = self.settings.retention.interval_seconds
        log.info("retention on: every %g s, consumed outbox > %g d, notification records > %g d, dead messages "
                 "> %g d", interval, self.settings.retention.consumed_outbox_days,
                 self.settings.retention.notification_record_days, self.settings.retention.dead_message_days)
        while not self.stop.is_set():
            try:
                if await self.lease.hold():
                    self.last = await run_once(self.engine, self.settings, actor=f"retention:{self.owner}",
                                               still_held=self._may_go_on, reg=self.reg)
            except Exception as exc:  # noqa: BLE001 - a DB outage must not end the schedule
                log.warning("retention run failed (%s: %s); next try in %g s", type(exc).__name__, exc, interval)
            try:
                await asyncio.wait_for(self.stop.wait(), interval)
            except asyncio.TimeoutError:
                pass
        try:
            await self.lease.release()
        except Exception:  # noqa: BLE001 - the lease simply expires
            pass

    async def _may_go_on(self) -> bool:
        """Checked before every batch: still leader, and not stopping (a SIGTERM waits for one batch at most)."""
        return not self.stop.is_set() and await self.lease.hold()
