"""``smartflow replay SERVICE``: republish finished outbox rows of one service by id range or time range.

A replay writes a *copy* of each selected row as a new ``pending`` row (same event type, key, topic and event
shell, so the same ``event_id`` and payload; a new outbox id, ``created_at`` now, ``retry_count`` 0), in id order,
and the relay publishes the copies as it publishes any row. The originals are not changed: ``consumed`` and
``dead`` stay terminal (the repository's invariant), their history stays readable. Why not move the originals back
to ``pending``: the worker's consumption-state table remembers a finished outbox id for
``worker.consumption_state_seconds`` (15 min) and would drop the republished message as a duplicate without touching
the row, which would then sit ``published`` until the stale sweep and finally go ``dead``; a new id is never known.

Invariants and limits:
- Dry run by default: :func:`plan` only counts and samples (first :data:`SAMPLE` ids); :func:`execute` runs only
  with ``--execute``. Both are audited (``outbox_admin_audit``, actions ``replay-dry-run`` / ``replay``, with the
  selection, the count and the id span of the copies).
- A selection needs a bound: an id range (``--from-id``/``--to-id``, inclusive) and/or a time range on
  ``created_at`` (``--since`` inclusive, ``--until`` exclusive, DB wall-clock time in ``time_zone``). Only rows in
  the chosen statuses are copied (default ``consumed``; ``dead`` on request); ``pending``/``published`` rows are
  already on their way and are never copied.
- Bounded: rows are copied in chunks of :data:`CHUNK` (1000), one short transaction each (read the chunk, one
  multi-row INSERT); per message key the copies keep the originals' order.
- Side effects stay single, because consumers dedupe by business key, not only by outbox id: a replayed
  ``notification.feishu.requested`` meets its notification record (one per channel and dedupe key; ``sent``,
  ``dead`` and ``skipped`` are terminal) and is consumed without a POST; a replayed ``active_schedule.triggered``
  meets its trigger already finished and writes no second preview or notification. Limit: once retention has
  deleted a notification record (``retention.notification_record_days``), a replay of its event sends again.
"""

from __future__ import annotations

import argparse
import getpass
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from smartflow_streams.core import clock
from smartflow_streams.catalog import RouteRegistry, registry as default_registry
from smartflow_streams.db.models import outbox_table
from smartflow_streams.outbox.admin import write_audit

CHUNK = 1000
SAMPLE = 20
REPLAYABLE = ("consumed", "dead")


class ReplayError(ValueError):
    """The selection is invalid (no bound, unknown status, empty range); nothing was changed."""


@dataclass(frozen=True)
class Selection:
    service: str
    from_id: int | None = None
    to_id: int | None = None
    since: datetime | None = None  # naive, DB wall-clock
    until: datetime | None = None
    statuses: tuple[str, ...] = ("consumed",)

    def check(self) -> None:
        if self.from_id is None and self.to_id is None and self.since is None and self.until is None:
            raise ReplayError("give an id range (--from-id/--to-id) or a time range (--since/--until)")
        bad = [s for s in self.statuses if s not in REPLAYABLE]
        if bad or not self.statuses:
            raise ReplayError(f"replayable statuses are {', '.join(REPLAYABLE)}; got {', '.join(bad) or 'none'}")
        if self.from_id is not None and self.to_id is not None and self.from_id > self.to_id:
            raise ReplayError(f"--from-id {self.from_id} is after --to-id {self.to_id}")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ReplayError("--since must be before --until")

    def describe(self) -> dict[str, Any]:
        return {"from_id": self.from_id, "to_id": self.to_id, "since": self.since, "until": self.until,
                "statuses": list(self.statuses)}


@dataclass
class Plan:
    service: str
    table: str
    selection: dict[str, Any]
    matched: int
    by_status: dict[str, int] = field(default_factory=dict)
    first_id: int | None = None
    last_id: int | None = None
    sample_ids: list[int] = field(default_factory=list)
    by_event_type: dict[str, int] = field(default_factory=dict)


def _table(sel: Selection, reg: RouteRegistry | None) -> sa.Table:
    return outbox_table((reg or default_registry).service_route(sel.service).table)


def _where(t: sa.Table, sel: Selection) -> list[sa.ColumnElement[bool]]:
    cond: list[sa.ColumnElement[bool]] = [t.c.status.in_(sel.statuses)]
    if sel.from_id is not None:
        cond.append(t.c.id >= sel.from_id)
    if sel.to_id is not None:
        cond.append(t.c.id <= sel.to_id)
    if sel.since is not None:
        cond.append(t.c.created_at >= sel.since)
    if sel.until is not None:
        cond.append(t.c.created_at < sel.until)
    # a shared table holds other services' rows too: replay only this service's (legacy rows: service_name '')
    cond.append(sa.or_(t.c.service_name == sel.service, t.c.service_name == ""))
    return cond


async def plan(engine: AsyncEngine, sel: Selection, *, actor: str, reg: RouteRegistry | None = None) -> Plan:
    """The dry run: what :func:`execute` would move (counts per status and event type, id span, sample); audited."""
    sel.check()
    t = _table(sel, reg)
    where = _where(t, sel)
    async with engine.begin() as conn:
        by_status = {str(k): int(v) for k, v in (await conn.execute(
            sa.select(t.c.status, sa.func.count()).where(*where).group_by(t.c.status))).all()}
        by_type = {str(k): int(v) for k, v in (await conn.execute(
            sa.select(t.c.biz_type, sa.func.count()).where(*where).group_by(t.c.biz_type))).all()}
        first, last = (await conn.execute(sa.select(sa.func.min(t.c.id), sa.func.max(t.c.id)).where(*where))).one()
        sample = [int(i) for i in (await conn.execute(
            sa.select(t.c.id).where(*where).order_by(t.c.id).limit(SAMPLE))).scalars()]
        result = Plan(sel.service, t.name, sel.describe(), sum(by_status.values()), by_status,
                      int(first) if first is not None else None, int(last) if last is not None else None, sample,
                      by_type)
        await write_audit(conn, sel.service, "replay-dry-run", actor,
                          {**sel.describe(), "matched": result.matched}, None)
    return result


async def execute(engine: AsyncEngine, sel: Selection, *, actor: str, reg: RouteRegistry | None = None) -> int:
    """Copy the selected rows as new ``pending`` rows (module note), in chunks of :data:`CHUNK`; returns the number
    of copies. Audited with the selection, the count and the id span of the originals."""
    sel.check()
    t = _table(sel, reg)
    where = _where(t, sel)
    copied, after, first = 0, 0, None
    cols = [t.c.id, t.c.biz_type, t.c.service_name, t.c.topic, t.c.message_key, t.c.payload, t.c.max_retry]
    async with engine.connect() as conn:  # the copies (higher ids) must never be selected themselves
        upper = (await conn.execute(sa.select(sa.func.max(t.c.id)).where(*where))).scalar()
    where.append(t.c.id <= (upper if upper is not None else 0))
    while True:
        async with engine.begin() as conn:
            rows = (await conn.execute(
                sa.select(*cols).where(*where, t.c.id > after).order_by(t.c.id).limit(CHUNK))).all()
            if rows:
                now = clock.db_now()
                await conn.execute(sa.insert(t), [
                    dict(biz_type=r.biz_type, service_name=r.service_name, topic=r.topic, message_key=r.message_key,
                         payload=r.payload, status="pending", retry_count=0, max_retry=r.max_retry,
                         next_retry_at=now, created_at=now, updated_at=now) for r in rows])
                copied += len(rows)
                first = first if first is not None else int(rows[0].id)
                after = int(rows[-1].id)
        if len(rows) < CHUNK:
            break
    async with engine.begin() as conn:
        await write_audit(conn, sel.service, "replay", actor,
                          {**sel.describe(), "copied": copied, "first_id": first, "last_id": after or None}, None)
    return copied


# -- command line -----------------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("service")
    p.add_argument("--from-id", type=int, help="first outbox id (inclusive)")
    p.add_argument("--to-id", type=int, help="last outbox id (inclusive)")
    p.add_argument("--since", help="created_at from (inclusive), e.g. '2026-12-01 08:00' (DB time zone) or ISO 8601 "
                                   "with offset")
    p.add_argument("--until", help="created_at before (exclusive)")
    p.add_argument("--status", default="consumed", help="comma-separated: consumed (default), dead")
    p.add_argument("--execute", action="store_true", help="really copy the rows (default: dry run)")
    p.add_argument("--actor", default=f"cli:{getpass.getuser()}")


def selection_from_args(args: argparse.Namespace, zone: ZoneInfo) -> Selection:
    return Selection(args.service, args.from_id, args.to_id, _parse_time(args.since, zone),
                     _parse_time(args.until, zone),
                     tuple(s.strip() for s in args.status.split(",") if s.strip()))


def _parse_time(text: str | None, zone: ZoneInfo) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise ReplayError(f"not a date/time: {text!r} (use e.g. '2026-12-01 08:00:00')") from exc
    return value.astimezone(zone).replace(tzinfo=None) if value.tzinfo is not None else value


async def run_command(engine: AsyncEngine, args: argparse.Namespace, zone: ZoneInfo) -> int:
    """``smartflow replay``: print the plan; with ``--execute`` copy the rows. Exit code 0, or 2 on a bad
    selection (nothing changed)."""
    import json
    import sys

    try:
        sel = selection_from_args(args, zone)
        result = await plan(engine, sel, actor=args.actor)
    except ReplayError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"dry_run": not args.execute, **result.__dict__}, ensure_ascii=False, indent=2, default=str))
    if not args.execute:
        print(f"dry run: {result.matched} row(s) would be republished; run again with --execute to do it")
        return 0
    copied = await execute(engine, sel, actor=args.actor)
    print(f"replayed {copied} row(s) of {result.service} as new pending rows; the relay publishes them")
    return 0
