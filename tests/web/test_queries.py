"""The dashboard's event accounting, and the open /outbox/ document: served errors scrubbed (secrets, SQL
parameters), reads cached for 2 s (real DB)."""

from __future__ import annotations

import json

import sqlalchemy as sa

from bench.common import StatementCounter
from smartflow_streams.outbox.repository import OutboxRepository
from smartflow_streams.web.queries import SnapshotCache, notification_events, snapshot

NOTIFY = "notification.feishu.requested"
ROW_SECRET = "row-data-3b8e2f-secret"


async def _dead_row(db, last_error: str) -> int:
    repo = OutboxRepository.for_event(NOTIFY)
    async with db.sessions() as s, s.begin():
        oid = await repo.enqueue(s, NOTIFY, {"user_id": 1, "dedupe_key": "k"}, message_key="1", event_version="1")
        await s.execute(sa.update(repo.table).where(repo.table.c.id == oid).values(status="dead",
                                                                                    last_error=last_error))
    return oid


async def test_outbox_document_serves_no_sql_parameters_or_passwords(db) -> None:
    await _dead_row(db, f"IntegrityError [SQL: UPDATE x SET a=%s] [parameters: ('{ROW_SECRET}',)] via "
                        "mysql+aiomysql://app:hunter2@db/x")
    document = await snapshot(db.engine, None, [])
    text = json.dumps(document, default=str)
    assert "[parameters hidden]" in text
    assert ROW_SECRET not in text and "hunter2" not in text


async def test_outbox_document_is_read_at_most_once_per_ttl(db) -> None:
    now = [100.0]
    cache = SnapshotCache(ttl=2.0, clock=lambda: now[0])
    counter = StatementCounter(db.engine)
    first = await cache.get(db.engine, None, [])
    one_read = counter.count
    assert one_read > 5
    for _ in range(10):
        assert await cache.get(db.engine, None, []) is first
    assert counter.count == one_read  # ten requests within 2 s: no statement
    now[0] += 2.0
    await cache.get(db.engine, None, [])
    assert counter.count == 2 * one_read



def test_every_consumed_event_is_a_record_status_or_deduplicated() -> None:
    records = {"pending": 0, "sending": 0, "sent": 5, "failed": 0, "dead": 0, "skipped": 20}
    events = notification_events({"consumed": 106, "dead": 2, "pending": 1}, records)
    assert events == {"consumed": 106, "recorded": 25, "deduplicated": 81, "dead_in_outbox": 2}
    assert sum(records.values()) + events["deduplicated"] == events["consumed"]
    # purged outbox rows can leave fewer consumed events than records: never a negative count
    assert notification_events({"consumed": 3}, records)["deduplicated"] == 0
