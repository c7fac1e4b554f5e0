from datetime import timedelta

import sqlalchemy as sa

from smartflow_streams.core import clock
from smartflow_streams.outbox import admin
from smartflow_streams.outbox.repository import OutboxRepository

EVENT = "notification.feishu.requested"


async def _rows(db, n):
    repo = OutboxRepository.for_service("notification")
    async with db.sessions() as s, s.begin():
        ids = [await repo.enqueue(s, EVENT, {"i": i}, message_key="1") for i in range(n)]
    return repo, ids


async def test_overview_list_requeue_purge_with_audit(db) -> None:
    repo, ids = await _rows(db, 5)
    async with db.engine.begin() as conn:
        await repo.mark_dead(conn, ids[:3], "poison: bad payload")
    for i in ids[3:]:
        await repo.consume_and_mark_consumed(db.sessions, i)
    [ov] = await admin.overview(db.engine, ["notification"])
    assert ov.counts == {"pending": 0, "published": 0, "consumed": 2, "dead": 3}
    assert [d["id"] for d in ov.recent_dead] == sorted(ids[:3], reverse=True)

    dead = await admin.list_dead(db.engine, "notification", reason_contains="bad pay")
    assert len(dead) == 3 and dead[0]["last_error"] == "poison: bad payload"
    assert await admin.list_dead(db.engine, "notification", event_type="other") == []

    assert await admin.requeue(db.engine, "notification", [ids[0], ids[3]], actor="alice") == 1  # consumed untouched
    async with db.sessions() as s:
        row = await repo.get(s, ids[0])
    assert (row.status, row.retry_count) == ("pending", 0) and row.last_error.startswith("requeued by alice")
    assert await admin.requeue(db.engine, "notification", None, actor="bob") == 2

    assert await admin.purge_consumed(db.engine, "notification", 1, actor="carol") == 0  # too recent
    clock.set_offset(timedelta(days=2))
    assert await admin.purge_consumed(db.engine, "notification", 1, actor="carol") == 2
    audit = await admin.audit_log(db.engine)
    assert [a["action"] for a in audit] == ["purge", "purge", "requeue", "requeue"]
    assert audit[-1]["actor"] == "alice"
