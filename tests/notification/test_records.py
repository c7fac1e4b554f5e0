"""``notification/records.py`` on both backends: record creation when two creators race for one dedupe key."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa

from smartflow_streams.contracts.events import FeishuNotificationRequestedPayload
from smartflow_streams.db.models import notification_records
from smartflow_streams.notification import records

from tests.agents.test_agents import notification_payload


async def test_concurrent_creators_of_one_key_share_one_record(db, monkeypatch) -> None:
    """B looked for the key before A created it (its first read is made to find nothing), so B's INSERT meets A's
    uncommitted row: it waits for A's transaction on the unique index (SQLite: for the write lock), skips the key
    and reads A's record: one row per key, B gets A's id, nothing raises."""
    cfg = db.settings.notification
    shared = FeishuNotificationRequestedPayload.parse(notification_payload(1))
    only_b = FeishuNotificationRequestedPayload.parse(notification_payload(2))
    a_created = asyncio.Event()

    async def creator_a() -> list[int]:
        async with db.sessions() as s, s.begin():
            out = await records.find_or_create_many(s, [shared], cfg)
            a_created.set()
            await asyncio.sleep(0.5)  # hold the new row uncommitted while B tries to create it too
        return [r.id for r, _ in out]

    async def creator_b() -> list[tuple[int, bool]]:
        await a_created.wait()
        real, calls = records._latest_by_dedupe, []

        async def first_read_before_a(session, keys):  # type: ignore[no-untyped-def]
            calls.append(keys)
            return {} if len(calls) == 1 else await real(session, keys)

        monkeypatch.setattr(records, "_latest_by_dedupe", first_read_before_a)
        async with db.sessions() as s, s.begin():
            out = await records.find_or_create_many(s, [only_b, shared], cfg)
        return [(r.id, reused) for r, reused in out]

    [a_id], b = await asyncio.gather(creator_a(), creator_b())
    async with db.engine.connect() as conn:
        rows = (await conn.execute(sa.select(notification_records.c.id, notification_records.c.dedupe_key))).all()
    assert sorted(k for _, k in rows) == sorted([shared.dedupe_key, only_b.dedupe_key])
    assert b[1][0] == a_id  # B uses A's record for the shared key
    assert b[0][0] != a_id and b[0][1] is False
    # the documented limit: a record another creator made in the same instant counts as created here
    assert b[1][1] is False
