"""DueWatcher on real MariaDB and SQLite: a parked table wakes for exactly the rows its own read would claim."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import sqlalchemy as sa

from outbox_relay.wakeup import DueWatcher
from smartflow_streams.core import clock
from smartflow_streams.outbox.repository import OutboxRepository

EVENT = "notification.feishu.requested"


def repos() -> tuple[OutboxRepository, OutboxRepository]:
    return OutboxRepository.for_service("notification"), OutboxRepository.for_service("active-scheduler")


async def test_parked_table_wakes_on_its_own_due_row_only(db) -> None:
    notification, scheduler = repos()
    watcher = DueWatcher(db.engine, 5, 50, 100, deep_after_seconds=0.2)
    stop = asyncio.Event()
    try:
        waits = {r.table.name: asyncio.create_task(watcher.wait_due(r.table, r.due_condition, 30, stop))
                 for r in (notification, scheduler)}
        await asyncio.sleep(0.3)  # several probes with nothing due
        assert not any(w.done() for w in waits.values())
        async with db.sessions() as s, s.begin():
            await notification.enqueue(s, EVENT, {"i": 1}, message_key="1", event_version="1")
        started = time.monotonic()
        assert await asyncio.wait_for(waits[notification.table.name], 5) is True
        assert time.monotonic() - started < 1.0  # the deep-idle interval is 100 ms here
        await asyncio.sleep(0.2)
        assert not waits[scheduler.table.name].done()  # the other table stays parked
        stop.set()
        assert await asyncio.wait_for(waits[scheduler.table.name], 5) is False
    finally:
        await watcher.close()


async def test_row_in_backoff_wakes_only_once_due(db) -> None:
    notification, _ = repos()
    async with db.sessions() as s, s.begin():
        oid = await notification.enqueue(s, EVENT, {"i": 1}, message_key="1", event_version="1")
    async with db.engine.begin() as conn:  # a retry not due for another second
        await conn.execute(sa.update(notification.table).where(notification.table.c.id == oid).values(
            next_retry_at=clock.db_now() + timedelta(seconds=1)))
    watcher = DueWatcher(db.engine, 5, 50)
    try:
        started = time.monotonic()
        woke = await watcher.wait_due(notification.table, notification.due_condition, 10, asyncio.Event())
        assert woke is True
        assert 0.9 <= time.monotonic() - started < 3.0
    finally:
        await watcher.close()


async def test_idle_probes_slow_down_and_timeout_returns_false(db) -> None:
    notification, _ = repos()
    watcher = DueWatcher(db.engine, 5, 50, 250, deep_after_seconds=0.5)
    try:
        assert await watcher.wait_due(notification.table, notification.due_condition, 2.5, asyncio.Event()) is False
        # 5, 10, 20, 40 ms, then 50 ms until 0.5 s, then 100, 200, 250 ms: about 16 probes in 2.5 s, not 50
        assert 5 <= watcher.probes <= 25
    finally:
        await watcher.close()


async def test_table_parking_again_after_timeouts_still_wakes(db) -> None:
    """As ``TableRelay._park`` does: time out (lease renewal), park again without a fresh read, repeatedly; a row
    committed later must still wake it (a re-park that did not wake an idle probe loop once stalled a relay)."""
    notification, _ = repos()
    watcher = DueWatcher(db.engine, 5, 50, 100, deep_after_seconds=0.1)
    stop = asyncio.Event()

    async def park() -> int:
        timeouts, just_read = 0, True
        while not await watcher.wait_due(notification.table, notification.due_condition, 0.15, stop,
                                         just_read=just_read):
            timeouts, just_read = timeouts + 1, False
        return timeouts

    try:
        parked = asyncio.create_task(park())
        await asyncio.sleep(1.5)  # ~10 timeouts and re-parks
        assert not parked.done()
        async with db.sessions() as s, s.begin():
            await notification.enqueue(s, EVENT, {"i": 1}, message_key="1", event_version="1")
        assert await asyncio.wait_for(parked, 3) >= 5
    finally:
        stop.set()
        await watcher.close()
