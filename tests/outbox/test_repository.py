"""Outbox state machine on MariaDB and SQLite (every test runs on both via the ``db`` fixture)."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest
import sqlalchemy as sa

from bench.common import StatementCounter
from smartflow_streams.core import clock
from smartflow_streams.core.errors import RouteError, RouteNotRegisteredError
from smartflow_streams.outbox.repository import (
    ConsumeOutcome, OutboxRepository, backoff_seconds, truncate_error,
)

EVENT = "notification.feishu.requested"


async def enqueue(db, repo: OutboxRepository, n: int = 1, key: str = "42", max_retry: int | None = None) -> list[int]:
    ids = []
    async with db.sessions() as s, s.begin():
        for i in range(n):
            ids.append(await repo.enqueue(s, EVENT, {"i": i}, message_key=key, event_version="1", max_retry=max_retry))
    return ids


async def status_of(db, repo: OutboxRepository, row_id: int):
    async with db.sessions() as s:
        return await repo.get(s, row_id)


async def test_enqueue_writes_pending_row_with_route_and_shell(db) -> None:
    repo = OutboxRepository.for_service("notification")
    [row_id] = await enqueue(db, repo)
    row = await status_of(db, repo, row_id)
    assert (row.status, row.service_name, row.topic, row.message_key) == (
        "pending", "notification", "smartflow.notification.outbox", "42")
    assert row.retry_count == 0 and row.max_retry == 20 and row.next_retry_at is not None
    shell = json.loads(row.payload)
    assert shell == {"event_type": EVENT, "event_version": "1", "aggregate_id": "42", "payload": {"i": 0}}
    assert row.biz_type == EVENT


async def test_unregistered_or_foreign_event_writes_nothing(db) -> None:
    repo = OutboxRepository.for_service("notification")
    async with db.sessions() as s, s.begin():
        with pytest.raises(RouteNotRegisteredError):
            await repo.enqueue(s, "unknown.event", {}, message_key="1")
        with pytest.raises(RouteError, match="belongs to service active-scheduler"):
            await repo.enqueue(s, "active_schedule.triggered", {}, message_key="1")
    async with db.sessions() as s:
        assert (await s.execute(sa.select(sa.func.count()).select_from(repo.table))).scalar() == 0


async def test_enqueue_rolls_back_with_caller_transaction(db) -> None:
    repo = OutboxRepository.for_service("notification")
    with pytest.raises(RuntimeError):
        async with db.sessions() as s, s.begin():
            await repo.enqueue(s, EVENT, {}, message_key="1")
            raise RuntimeError("business failed")
    async with db.sessions() as s:
        assert (await s.execute(sa.select(sa.func.count()).select_from(repo.table))).scalar() == 0


async def test_claim_lease_and_late_write_guard(db) -> None:
    repo = OutboxRepository.for_service("notification")
    ids = await enqueue(db, repo, 5)
    first = await repo.claim_due(db.engine, limit=10, lease_seconds=30)
    assert [r.id for r in first.rows] == ids
    assert (await repo.claim_due(db.engine, limit=10, lease_seconds=30)).rows == []  # leased: not due
    clock.set_offset(timedelta(seconds=31))  # the first relay "crashed"; its lease runs out
    second = await repo.claim_due(db.engine, limit=10, lease_seconds=30)
    assert [r.id for r in second.rows] == ids and second.token != first.token
    async with db.engine.begin() as conn:  # the expired claimer's late write changes nothing
        assert await repo.mark_published(conn, ids, claim_token=first.token) == 0
        assert await repo.mark_failed_for_retry(conn, ids, "late", claim_token=first.token) == {}
        assert await repo.mark_published(conn, ids, claim_token=second.token) == 5
    row = await status_of(db, repo, ids[0])
    assert row.status == "published" and row.claim_token is None and row.next_retry_at is None


async def test_mark_published_never_regresses_terminal_rows(db) -> None:
    repo = OutboxRepository.for_service("notification")
    a, b = await enqueue(db, repo, 2)
    await repo.consume_and_mark_consumed(db.sessions, a)
    async with db.engine.begin() as conn:
        await repo.mark_dead(conn, [b], "poison")
        assert await repo.mark_published(conn, [a, b]) == 0
    assert (await status_of(db, repo, a)).status == "consumed"
    assert (await status_of(db, repo, b)).status == "dead"


def test_backoff_values() -> None:
    assert [backoff_seconds(n) for n in (0, 1, 2, 3, 9, 10, 11, 19)] == [1, 1, 4, 9, 81, 100, 100, 100]


async def test_retry_backoff_then_dead_at_max_retry(db) -> None:
    repo = OutboxRepository.for_service("notification")
    [row_id] = await enqueue(db, repo)
    for n in range(1, 20):
        before = clock.db_now()
        async with db.engine.begin() as conn:
            assert await repo.mark_failed_for_retry(conn, [row_id], f"fail {n}") == {row_id: "pending"}
        row = await status_of(db, repo, row_id)
        assert row.retry_count == n and row.last_error == f"fail {n}"
        delay = (row.next_retry_at - before).total_seconds()
        assert backoff_seconds(n) - 0.01 <= delay <= backoff_seconds(n) + 1.0
    async with db.engine.begin() as conn:
        assert await repo.mark_failed_for_retry(conn, [row_id], "twentieth") == {row_id: "dead"}
    row = await status_of(db, repo, row_id)
    assert (row.status, row.retry_count, row.next_retry_at) == ("dead", 20, None)
    async with db.engine.begin() as conn:  # terminal: no further change
        assert await repo.mark_failed_for_retry(conn, [row_id], "again") == {}


async def test_custom_max_retry_and_batch_groups(db) -> None:
    repo = OutboxRepository.for_service("notification")
    a, b = await enqueue(db, repo, 2, max_retry=2)
    async with db.engine.begin() as conn:
        await repo.mark_failed_for_retry(conn, [a], "x")
        assert await repo.mark_failed_for_retry(conn, [a, b], "y") == {a: "dead", b: "pending"}


async def test_mark_dead_never_overwrites_consumed(db) -> None:
    repo = OutboxRepository.for_service("notification")
    a, b = await enqueue(db, repo, 2)
    await repo.consume_and_mark_consumed(db.sessions, a)
    async with db.engine.begin() as conn:
        assert await repo.mark_dead(conn, [a, b], "bad") == 1
    assert (await status_of(db, repo, a)).status == "consumed"
    row = await status_of(db, repo, b)
    assert row.status == "dead" and row.last_error == "bad" and row.next_retry_at is None


async def test_consume_runs_business_in_same_transaction(db) -> None:
    repo = OutboxRepository.for_service("notification")
    other = OutboxRepository.for_service("active-scheduler")
    [row_id] = await enqueue(db, repo)

    async def failing(session):
        await other.enqueue(session, "active_schedule.triggered", {"x": 1}, message_key="1")
        raise ValueError("boom")

    with pytest.raises(ValueError):
        await repo.consume_and_mark_consumed(db.sessions, row_id, failing)
    assert (await status_of(db, repo, row_id)).status == "pending"
    async with db.sessions() as s:  # the business write was rolled back with it
        assert (await s.execute(sa.select(sa.func.count()).select_from(other.table))).scalar() == 0

    calls = []

    async def business(session):
        calls.append(await other.enqueue(session, "active_schedule.triggered", {"x": 1}, message_key="1"))

    assert await repo.consume_and_mark_consumed(db.sessions, row_id, business) is ConsumeOutcome.CONSUMED
    assert await repo.consume_and_mark_consumed(db.sessions, row_id, business) is ConsumeOutcome.DUPLICATE
    assert await repo.consume_and_mark_consumed(db.sessions, 999999, business) is ConsumeOutcome.NOT_FOUND
    assert len(calls) == 1
    row = await status_of(db, repo, row_id)
    assert row.status == "consumed" and row.consumed_at is not None


async def test_dead_row_is_not_consumed(db) -> None:
    repo = OutboxRepository.for_service("notification")
    [row_id] = await enqueue(db, repo)
    async with db.engine.begin() as conn:
        await repo.mark_dead(conn, [row_id], "poison")
    assert await repo.consume_and_mark_consumed(db.sessions, row_id) is ConsumeOutcome.DUPLICATE
    assert (await status_of(db, repo, row_id)).status == "dead"


def test_truncate_error_keeps_utf8_whole() -> None:
    text = "失" * 1000  # 3 bytes each
    out = truncate_error(text, 2000)
    assert len(out.encode()) == 1998 and out == "失" * 666
    assert truncate_error("short") == "short"
    assert truncate_error("a" * 2500) == "a" * 2000


async def test_long_error_is_stored_truncated(db) -> None:
    repo = OutboxRepository.for_service("notification")
    [row_id] = await enqueue(db, repo)
    async with db.engine.begin() as conn:
        await repo.mark_failed_for_retry(conn, [row_id], "投递失败:" + "x" * 3000)
    row = await status_of(db, repo, row_id)
    assert len(row.last_error.encode()) <= 2000 and row.last_error.startswith("投递失败:")


async def test_release_returns_rows_without_counting_a_retry(db) -> None:
    repo = OutboxRepository.for_service("notification")
    ids = await enqueue(db, repo, 3)
    claim = await repo.claim_due(db.engine, limit=10, lease_seconds=60)
    async with db.engine.begin() as conn:
        assert await repo.release(conn, ids, claim_token=claim.token) == 3
    again = await repo.claim_due(db.engine, limit=10, lease_seconds=60)
    assert len(again.rows) == 3 and all(r.retry_count == 0 for r in again.rows)


async def test_concurrent_claimers_never_share_a_row(db) -> None:
    """Shared-table claims (SKIP LOCKED on MySQL, atomic UPDATE ... RETURNING on SQLite): a row is never claimed
    twice, however many claimers race."""
    repo = OutboxRepository.for_service("notification")
    total = 3000
    async with db.sessions() as s, s.begin():
        for i in range(total):
            await repo.enqueue(s, EVENT, {"i": i}, message_key=str(i % 50))
    seen: dict[int, int] = {}

    async def claimer(n: int) -> None:
        while len(seen) < total:
            claim = await repo.claim_due(db.engine, limit=97, lease_seconds=300)
            if not claim.rows:
                await asyncio.sleep(0.001)
                continue
            for row in claim.rows:
                assert row.id not in seen, f"row {row.id} claimed by {seen.get(row.id)} and {n}"
                seen[row.id] = n

    await asyncio.gather(*(claimer(n) for n in range(4)))
    assert len(seen) == total
    assert len(set(seen.values())) >= 2  # the work really was shared


async def test_lease_holder_claim_reads_without_writing(db) -> None:
    """The table-lease holder's claim is one read: rows stay pending, unclaimed and due, so a holder that dies
    leaves nothing to wait for; ``exclude`` skips the batch still in flight; marks are guarded by status."""
    repo = OutboxRepository.for_service("notification")
    ids = await enqueue(db, repo, 6)
    async with db.engine.begin() as conn:  # a due retry with an older next_retry_at comes first, as in shared mode
        await conn.execute(sa.update(repo.table).where(repo.table.c.id == ids[5])
                           .values(next_retry_at=clock.db_now() - timedelta(hours=1)))
    counter = StatementCounter(db.engine)
    first = await repo.claim_due(db.engine, limit=3, lease_seconds=30, exclusive=True)
    assert counter.count == (2 if db.engine.dialect.name == "sqlite" else 1)  # SQLite: + its BEGIN IMMEDIATE
    assert first.token is None
    assert [r.id for r in first.rows] == sorted([ids[5], ids[0], ids[1]])
    row = await status_of(db, repo, ids[0])
    assert row.status == "pending" and row.claim_token is None and row.next_retry_at <= clock.db_now()
    again = await repo.claim_due(db.engine, limit=10, lease_seconds=30, exclusive=True)
    assert [r.id for r in again.rows] == ids  # nothing was held: a new holder would publish them all
    rest = await repo.claim_due(db.engine, limit=10, lease_seconds=30, exclusive=True,
                                exclude=[r.id for r in first.rows])
    assert [r.id for r in rest.rows] == [ids[2], ids[3], ids[4]]
    async with db.engine.begin() as conn:
        await repo.mark_dead(conn, [ids[2]], "poison")
        assert await repo.mark_published(conn, ids, claim_token=first.token) == 5  # the dead row stays dead
    assert (await status_of(db, repo, ids[2])).status == "dead"
    assert (await repo.claim_due(db.engine, limit=10, lease_seconds=30, exclusive=True)).rows == []


async def test_id_lists_reuse_one_compiled_statement(db) -> None:
    """Claims and marks over different id lists compile once per statement shape (a pasted id list compiled anew
    every time: ~15 % of the relay's CPU under load); results are those of the ids given."""
    repo = OutboxRepository.for_service("notification")
    ids = await enqueue(db, repo, 12)
    cache = db.engine.sync_engine._compiled_cache

    async def one_round(chunk: list[int]) -> int:
        claim = await repo.claim_due(db.engine, limit=3, lease_seconds=30, exclusive=True, exclude=chunk[:1])
        assert chunk[0] not in {r.id for r in claim.rows}
        async with db.engine.begin() as conn:
            return await repo.mark_published(conn, chunk)

    assert await one_round(ids[:2]) == 2
    entries = len(cache)
    assert [await one_round(chunk) for chunk in (ids[2:5], ids[5:6], ids[6:12])] == [3, 1, 6]
    assert len(cache) == entries
    assert {(await status_of(db, repo, i)).status for i in ids} == {"published"}
