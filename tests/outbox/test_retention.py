"""Scheduled retention on real MariaDB and SQLite: what goes, what stays, batch bounds, the lease, metric, audit."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import sqlalchemy as sa

import config
from smartflow_streams.core import clock, metrics
from smartflow_streams.db.models import (
    notification_records, outbox_admin_audit, outbox_dead_messages, outbox_relay_leases, outbox_table,
)
from smartflow_streams.outbox.retention import LEASE_NAME, RetentionRunner, run_once

N_TABLE = outbox_table("notification_outbox_messages")
AS_TABLE = outbox_table("active_scheduler_outbox_messages")


def retention_settings(db, **retention: object) -> config.Settings:
    settings = config.load_settings(database_url=db.url, retention={"enabled": True, **retention})
    config.set_settings(settings)
    return settings


async def add_outbox(db, table: sa.Table, status: str, age_days: float, n: int = 1) -> None:
    at = clock.db_now() - timedelta(days=age_days)
    rows = [dict(biz_type="notification.feishu.requested", service_name="notification", topic="t", message_key="1",
                 payload="{}", status=status, retry_count=0, max_retry=20, created_at=at, updated_at=at,
                 consumed_at=at if status == "consumed" else None, published_at=at) for _ in range(n)]
    async with db.engine.begin() as conn:
        await conn.execute(sa.insert(table), rows)


async def add_records(db, status: str, age_days: float, n: int = 1) -> None:
    at = clock.db_now() - timedelta(days=age_days)
    async with db.engine.begin() as conn:
        start = (await conn.execute(sa.select(sa.func.count()).select_from(notification_records))).scalar() or 0
        await conn.execute(sa.insert(notification_records), [
            dict(channel="feishu_webhook", user_id=1, trigger_id=f"t{start + i}", preview_id=f"p{start + i}",
                 trigger_type="x", target_type="y", target_id=1, dedupe_key=f"k{start + i}", target_url="u",
                 status=status, created_at=at, updated_at=at) for i in range(n)])


async def add_dead_messages(db, age_days: float, n: int = 1) -> None:
    at = clock.db_now() - timedelta(days=age_days)
    async with db.engine.begin() as conn:
        start = (await conn.execute(sa.select(sa.func.count()).select_from(outbox_dead_messages))).scalar() or 0
        await conn.execute(sa.insert(outbox_dead_messages), [
            dict(service_name="notification", topic="t", kafka_partition=0, kafka_offset=start + i, reason="bad",
                 raw_value="x", created_at=at) for i in range(n)])


async def counts(db, table: sa.Table, column: str = "status") -> dict[str, int]:
    async with db.engine.connect() as conn:
        if column not in table.c:
            return {"all": int((await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar() or 0)}
        return {str(k): int(v) for k, v in (await conn.execute(
            sa.select(table.c[column], sa.func.count()).group_by(table.c[column]))).all()}


async def audits(db) -> list[dict]:
    async with db.engine.connect() as conn:
        rows = (await conn.execute(sa.select(outbox_admin_audit).where(
            outbox_admin_audit.c.action == "retention").order_by(outbox_admin_audit.c.id))).mappings().all()
    return [dict(r) for r in rows]


def deleted_metric(table: str) -> float:
    return metrics.retention_deleted.labels(table)._value.get()


async def test_deletes_only_old_finished_rows_in_batches_with_metric_and_audit(db) -> None:
    settings = retention_settings(db, batch_size=4, pause_seconds=0)
    await add_outbox(db, N_TABLE, "consumed", 8, n=10)  # old enough: deleted (3 batches of <= 4)
    await add_outbox(db, N_TABLE, "consumed", 6)        # younger than 7 days: kept
    for status in ("pending", "published", "dead"):     # never deleted, however old
        await add_outbox(db, N_TABLE, status, 100)
    await add_outbox(db, AS_TABLE, "consumed", 30, n=2)
    for status in ("sent", "dead", "skipped"):
        await add_records(db, status, 31)                # terminal and old: deleted
    await add_records(db, "sent", 29)                    # terminal, young: kept
    for status in ("pending", "failed", "sending"):
        await add_records(db, status, 400)               # not terminal: kept
    await add_dead_messages(db, 31, n=3)
    await add_dead_messages(db, 1)
    before = {t: deleted_metric(t) for t in ("notification_outbox_messages", "notification_records")}

    report = await run_once(db.engine, settings, actor="retention:test")

    assert report.complete
    assert report.deleted["notification_outbox_messages"] == 10
    assert report.deleted["active_scheduler_outbox_messages"] == 2
    assert report.deleted["notification_records"] == 3
    assert report.deleted["outbox_dead_messages"] == 3
    assert await counts(db, N_TABLE) == {"consumed": 1, "pending": 1, "published": 1, "dead": 1}
    assert await counts(db, AS_TABLE) == {}
    assert await counts(db, notification_records) == {"sent": 1, "pending": 1, "failed": 1, "sending": 1}
    assert await counts(db, outbox_dead_messages, "none") == {"all": 1}
    assert deleted_metric("notification_outbox_messages") - before["notification_outbox_messages"] == 10
    assert deleted_metric("notification_records") - before["notification_records"] == 3
    trail = {json.loads(a["detail"])["table"]: (a["service_name"], a["actor"], json.loads(a["detail"])["deleted"])
             for a in await audits(db)}
    assert trail == {"notification_outbox_messages": ("notification", "retention:test", 10),
                     "active_scheduler_outbox_messages": ("active-scheduler", "retention:test", 2),
                     "notification_records": ("notification", "retention:test", 3),
                     "outbox_dead_messages": ("dead-messages", "retention:test", 3)}
    again = await run_once(db.engine, settings, actor="retention:test")  # nothing left: no audit noise
    assert sum(again.deleted.values()) == 0 and len(await audits(db)) == 4


async def test_a_run_is_bounded_and_the_rest_waits_for_the_next(db) -> None:
    settings = retention_settings(db, batch_size=3, max_batches_per_run=2, pause_seconds=0)
    await add_outbox(db, N_TABLE, "consumed", 10, n=10)
    first = await run_once(db.engine, settings, actor="a")
    assert first.deleted["notification_outbox_messages"] == 6 and not first.complete
    second = await run_once(db.engine, settings, actor="a")
    assert second.deleted["notification_outbox_messages"] == 4 and second.complete
    assert await counts(db, N_TABLE) == {}


async def test_a_lost_lease_stops_the_run_before_the_next_batch(db) -> None:
    settings = retention_settings(db, batch_size=2, pause_seconds=0)
    await add_outbox(db, N_TABLE, "consumed", 10, n=6)

    async def held() -> bool:  # the lease is lost right after the first batch of this table
        return await counts(db, N_TABLE) == {"consumed": 6}
    report = await run_once(db.engine, settings, actor="a", still_held=held)
    assert report.deleted["notification_outbox_messages"] == 2 and not report.complete
    assert await counts(db, N_TABLE) == {"consumed": 4}


async def test_one_active_runner_and_takeover_after_the_lease(db) -> None:
    settings = retention_settings(db, interval_seconds=0.2, lease_seconds=1.0, pause_seconds=0)
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    a = RetentionRunner(settings, db.engine, "relay-a", stop_a)
    b = RetentionRunner(settings, db.engine, "relay-b", stop_b)
    task_a = asyncio.create_task(a.run())
    await asyncio.sleep(0.3)  # a holds the lease
    task_b = asyncio.create_task(b.run())
    for _ in range(3):
        await add_outbox(db, N_TABLE, "consumed", 10, n=2)
        await asyncio.sleep(0.5)
    assert {x["actor"] for x in await audits(db)} == {"retention:relay-a"}
    assert await counts(db, N_TABLE) == {}
    # a stops without releasing (a crash): b takes over once the 1 s lease has run out
    a.lease.release = _no_release  # type: ignore[method-assign]
    stop_a.set()
    await task_a
    await add_outbox(db, N_TABLE, "consumed", 10, n=2)

    async def taken_over() -> bool:
        return "retention:relay-b" in {x["actor"] for x in await audits(db)}
    deadline = asyncio.get_running_loop().time() + 10
    while not await taken_over():
        assert asyncio.get_running_loop().time() < deadline, "relay-b never took over"
        await asyncio.sleep(0.1)
    async with db.engine.connect() as conn:
        owner = (await conn.execute(sa.select(outbox_relay_leases.c.owner).where(
            outbox_relay_leases.c.table_name == LEASE_NAME))).scalar()
    assert owner == "relay-b"
    stop_b.set()
    await task_b


async def _no_release() -> None:
    return None


def test_off_by_default() -> None:
    assert config.Settings().retention.enabled is False


async def test_a_stopping_relay_ends_the_run_before_the_next_batch(db) -> None:
    settings = retention_settings(db, batch_size=2, pause_seconds=0)
    await add_outbox(db, N_TABLE, "consumed", 10, n=6)
    stop = asyncio.Event()
    runner = RetentionRunner(settings, db.engine, "relay-a", stop)
    stop.set()  # SIGTERM arrived: the lease is still held but no batch may start
    assert await runner.lease.hold()
    report = await run_once(db.engine, settings, actor="a", still_held=runner._may_go_on)
    assert not report.complete and sum(report.deleted.values()) == 0
    assert await counts(db, N_TABLE) == {"consumed": 6}
