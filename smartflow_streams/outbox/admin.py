"""Operator actions on outbox tables: status overview, dead-letter listing, requeue, purge; all audited.

Invariants:
- Requeue only moves ``dead`` rows, to ``pending`` due now with ``retry_count`` 0 and the claim cleared; every
  requeue and purge writes one ``outbox_admin_audit`` row per call (actor, ids, count, when).
- Purge deletes only ``consumed`` rows whose ``consumed_at`` is older than N days (N >= 1), in chunks of 1000 ids
  so a large purge never holds long locks.
- Listings cap at 500 rows per call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from smartflow_streams.core import clock
from smartflow_streams.catalog import RouteRegistry, registry as default_registry
from smartflow_streams.db.models import outbox_admin_audit, outbox_dead_messages, outbox_table
from smartflow_streams.outbox.backlog import STATUSES, read_backlog  # noqa: F401 - STATUSES kept importable here

MAX_LIST = 500
PURGE_CHUNK = 1000


@dataclass
class ServiceOverview:
    service: str
    table: str
    topic: str
    counts: dict[str, int]
    oldest_pending_seconds: float
    recent_dead: list[dict[str, Any]]


def _table(service: str, reg: RouteRegistry | None) -> sa.Table:
    return outbox_table((reg or default_registry).service_route(service).table)


async def overview(engine: AsyncEngine, services: list[str] | None = None, *, dead_limit: int = 5,
                   reg: RouteRegistry | None = None) -> list[ServiceOverview]:
    reg = reg or default_registry
    result = []
    now = clock.db_now()
    async with engine.connect() as conn:
        for service in services or reg.services():
            route = reg.service_route(service)
            t = outbox_table(route.table)
            if not await conn.run_sync(lambda c, n=route.table: sa.inspect(c).has_table(n)):
                continue
            backlog = await read_backlog(conn, t)
            dead = await _dead_rows(conn, t, limit=dead_limit)
            result.append(ServiceOverview(service, route.table, route.topic, backlog.all_counts(),
                                          backlog.oldest_pending_seconds(now), dead))
    return result


async def _dead_rows(conn: Any, t: sa.Table, *, limit: int, event_type: str | None = None,
                     since: datetime | None = None, reason_contains: str | None = None) -> list[dict[str, Any]]:
    stmt = sa.select(t.c.id, t.c.biz_type, t.c.message_key, t.c.retry_count, t.c.last_error, t.c.updated_at,
                     t.c.created_at).where(t.c.status == "dead")
    if event_type:
        stmt = stmt.where(t.c.biz_type == event_type)
    if since:
        stmt = stmt.where(t.c.updated_at >= since)
    if reason_contains:
        stmt = stmt.where(t.c.last_error.contains(reason_contains, autoescape=True))
    rows = (await conn.execute(stmt.order_by(t.c.id.desc()).limit(min(limit, MAX_LIST)))).mappings()
    return [_jsonable(dict(r)) for r in rows]


async def list_dead(engine: AsyncEngine, service: str, *, limit: int = 100, event_type: str | None = None,
                    since: datetime | None = None, reason_contains: str | None = None,
                    reg: RouteRegistry | None = None) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        return await _dead_rows(conn, _table(service, reg), limit=limit, event_type=event_type, since=since,
                                reason_contains=reason_contains)


async def requeue(engine: AsyncEngine, service: str, ids: list[int] | None, *, actor: str,
                  reg: RouteRegistry | None = None) -> int:
    """Requeue the given dead rows, or every dead row of the service when ``ids`` is None. Returns rows moved."""
    t = _table(service, reg)
    now = clock.db_now()
    cond = [t.c.status == "dead"]
    if ids is not None:
        if not ids:
            return 0
        cond.append(t.c.id.in_(ids))
    async with engine.begin() as conn:
        result = await conn.execute(sa.update(t).where(*cond).values(
            status="pending", retry_count=0, next_retry_at=now, claim_token=None, updated_at=now,
            last_error=sa.literal(f"requeued by {actor}; was: ", sa.Text) + sa.func.coalesce(t.c.last_error, "")))
        moved = int(result.rowcount or 0)
        await _audit(conn, service, "requeue", actor, {"ids": ids if ids is not None else "all", "moved": moved},
                     ids[0] if ids and len(ids) == 1 else None)
    return moved


async def purge_consumed(engine: AsyncEngine, service: str, older_than_days: float, *, actor: str,
                         reg: RouteRegistry | None = None) -> int:
    if older_than_days < 1:
        raise ValueError("older_than_days must be at least 1")
    t = _table(service, reg)
    cutoff = clock.db_now() - timedelta(days=older_than_days)
    deleted = 0
    while True:
        async with engine.begin() as conn:
            ids = list((await conn.execute(sa.select(t.c.id).where(
                t.c.status == "consumed", t.c.consumed_at < cutoff).limit(PURGE_CHUNK))).scalars())
            if ids:
                await conn.execute(sa.delete(t).where(t.c.id.in_(ids), t.c.status == "consumed"))
            deleted += len(ids)
        if len(ids) < PURGE_CHUNK:
            break
    async with engine.begin() as conn:
        await _audit(conn, service, "purge", actor, {"older_than_days": older_than_days, "deleted": deleted}, None)
    return deleted


async def list_dead_messages(engine: AsyncEngine, limit: int = 100) -> list[dict[str, Any]]:
    d = outbox_dead_messages
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(d.c.id, d.c.service_name, d.c.topic, d.c.kafka_partition,
                                             d.c.kafka_offset, d.c.reason, d.c.created_at)
                                   .order_by(d.c.id.desc()).limit(min(limit, MAX_LIST)))).mappings()
        return [_jsonable(dict(r)) for r in rows]


async def audit_log(engine: AsyncEngine, limit: int = 50) -> list[dict[str, Any]]:
    a = outbox_admin_audit
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(a).order_by(a.c.id.desc()).limit(min(limit, MAX_LIST)))).mappings()
        return [_jsonable(dict(r)) for r in rows]


async def _audit(conn: Any, service: str, action: str, actor: str, detail: dict[str, Any], outbox_id: int | None) -> None:
    await conn.execute(sa.insert(outbox_admin_audit).values(
        service_name=service, outbox_id=outbox_id, action=action, actor=actor[:128],
        detail=json.dumps(detail, default=str), created_at=clock.db_now()))


write_audit = _audit
"""One ``outbox_admin_audit`` row in the caller's transaction (also used by retention and replay)."""


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat(sep=" ") if isinstance(v, datetime) else v) for k, v in row.items()}
