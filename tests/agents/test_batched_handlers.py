"""Batched handlers (``worker.batched_handlers``): a whole batch through the handlers' ``batch`` functions, real DB
(both backends), real webhook server. The batch must end in the same state as one event at a time, cost a few
statements per batch instead of several per event, and fall back to one by one when it raises.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import sqlalchemy as sa

import config
from agents.dispatch import Dispatcher
from bench.common import StatementCounter
from smartflow_streams.core import clock, metrics
from smartflow_streams.contracts.envelope import KafkaEnvelope, OutboxEventShell
from smartflow_streams.db.models import active_schedule_previews, active_schedule_triggers, notification_records
from smartflow_streams.outbox.repository import OutboxRepository
from smartflow_streams.startup.runtime import WorkerRuntime
from smartflow_streams.scheduler.triggers import TriggerRequest, create_trigger
from tests.kit.support import FakeFeishu

from test_agents import NOTIFY, TRIGGER, channel, enqueue, notification_payload


class Event:
    """What the dispatcher reads of a Faust event (weak-referenceable, like the real one)."""

    def __init__(self, value: bytes, key: bytes, offset: int, partition: int = 0) -> None:
        self.value = value
        self.message = SimpleNamespace(topic="t", partition=partition, key=key, offset=offset)


@pytest.fixture
async def runtime(db):
    settings = config.load_settings(
        database_url=db.url, notification={"allow_plain_http": True, "allowed_hosts": ["127.0.0.1"],
                                           "http_timeout_seconds": 2.0, "rate_limit_enabled": False})
    config.set_settings(settings)
    rt = WorkerRuntime(settings)
    yield rt
    await rt.close()


def dispatcher(runtime: WorkerRuntime, batched: bool = True) -> Dispatcher:
    runtime.settings.worker.batched_handlers = batched
    return Dispatcher(runtime)


async def trigger_events(db, users: range) -> list[Event]:
    """One committed trigger (+ its outbox row) per user; the relay's envelopes for them."""
    async with db.sessions() as s, s.begin():
        for u in users:
            await create_trigger(s, TriggerRequest(user_id=u, trigger_type="important_urgent_task",
                                                   source="api_trigger", target_type="task_pool", target_id=u),
                                 config.get_settings())
    repo = OutboxRepository.for_event(TRIGGER)
    async with db.sessions() as s:
        rows = (await s.execute(sa.select(repo.table).order_by(repo.table.c.id))).mappings().all()
    return [Event(KafkaEnvelope.from_shell(r["id"], OutboxEventShell.parse(r["payload"]), "active-scheduler")
                  .to_json_bytes(), r["message_key"].encode(), n) for n, r in enumerate(rows) if r["status"] == "pending"]


async def test_trigger_batch_matches_one_by_one_and_falls_back(db, runtime) -> None:
    events = await trigger_events(db, range(1, 7))
    async with db.engine.begin() as conn:  # user 6's trigger vanished: poison, and it fails the whole batch
        await conn.execute(sa.delete(active_schedule_triggers).where(active_schedule_triggers.c.user_id == 6))
    bad_version = Event(events[0].value.replace(b'"event_version":"1"', b'"event_version":"9"'), b"1", 90)
    foreign_oid, foreign_value = await enqueue(db, NOTIFY, notification_payload(3))
    batch = [*events, Event(events[1].value, b"2", 91), bad_version, Event(foreign_value, b"3", 92)]
    fallbacks = metrics.batch_fallbacks.labels("active-scheduler")._value.get()

    outcomes = await dispatcher(runtime).handle_batch("active-scheduler", batch)

    # the bad-version copy of row 1 is poison ("dead"), but the guard keeps the consumed row consumed
    assert outcomes == ["consumed"] * 5 + ["dead", "duplicate", "dead", "foreign"]
    assert metrics.batch_fallbacks.labels("active-scheduler")._value.get() == fallbacks + 1
    repo = OutboxRepository.for_event(TRIGGER)
    async with db.engine.connect() as conn:
        rows = {r.message_key: r for r in (await conn.execute(sa.select(repo.table)))}
        triggers = (await conn.execute(sa.select(active_schedule_triggers))).mappings().all()
        previews = (await conn.execute(sa.select(active_schedule_previews))).mappings().all()
        notifications = (await conn.execute(sa.select(OutboxRepository.for_event(NOTIFY).table))).mappings().all()
    assert rows["6"].status == "dead" and "trigger not found" in rows["6"].last_error
    assert {rows[str(u)].status for u in range(1, 6)} == {"consumed"}
    assert {t["status"] for t in triggers} == {"preview_generated"} and len(triggers) == 5
    assert {t["preview_id"] for t in triggers} == {p["preview_id"] for p in previews}
    assert all(t["processed_at"] and t["completed_at"] and t["last_error"] is None for t in triggers)
    assert len(notifications) - 1 == 5  # + the foreign test row
    assert (await dispatcher(runtime).handle_batch("active-scheduler", events)) == ["duplicate"] * 6  # dead too


async def test_batch_statements_do_not_grow_with_the_batch(db, runtime) -> None:
    batched_events = await trigger_events(db, range(1, 41))
    counter = StatementCounter(runtime.engine)
    assert await dispatcher(runtime).handle_batch("active-scheduler", batched_events) == ["consumed"] * 40
    batched = counter.count
    single_events = await trigger_events(db, range(41, 61))
    counter.count = 0
    assert await dispatcher(runtime, batched=False).handle_batch("active-scheduler", single_events) == ["consumed"] * 20
    per_event = counter.count / 20
    # one transaction: lock outbox rows + triggers, existing previews, insert previews + notification rows, update
    # triggers (executemany counts once), mark consumed; SQLite adds BEGIN IMMEDIATE
    assert batched <= 10, batched
    assert per_event >= 7, per_event  # the same workflow one event at a time


async def test_notification_batch_one_post_per_key_outcomes_per_item(db, runtime) -> None:
    async with FakeFeishu(per_user={3: [(500, {"error": "down"}, 0.0)]}) as feishu:
        for u in range(1, 7):
            await channel(db, u, feishu.url(u))
        now = clock.db_now()
        async with db.engine.begin() as conn:  # user 4: already sent; user 5: another worker is mid-send
            for u, status in ((4, "sent"), (5, "sending")):
                p = notification_payload(u)
                await conn.execute(sa.insert(notification_records).values(
                    channel="feishu", user_id=u, trigger_id="ast_1", preview_id="asp_1", trigger_type="x",
                    target_type="y", target_id=1, dedupe_key=p["dedupe_key"], target_url="/assistant/abc",
                    status=status, attempt_count=1, max_attempts=5, created_at=now, updated_at=now))
        items = []
        for u in (1, 2, 2, 3, 4, 5):  # the second user-2 event is a new outbox row with the same dedupe key
            items.append(await enqueue(db, NOTIFY, notification_payload(u)))
        for suffix in ("2026-04-30T10:00:00+08:00", "2026-04-30T10:30:00+08:00", "2026-04-30T11:00:00+08:00"):
            items.append(await enqueue(db, NOTIFY, {**notification_payload(6, suffix), "summary_text": suffix}))
        events = [Event(value, b"k", n) for n, (_oid, value) in enumerate(items)]
        events.append(Event(items[0][1], b"k", 99))  # redelivered in the same batch

        outcomes = await dispatcher(runtime).handle_batch("notification", events)

        assert outcomes == ["consumed", "consumed", "consumed", "consumed", "consumed", "retry",
                            "consumed", "consumed", "consumed", "duplicate"]
        per_user: dict[int, list[str]] = {}
        for post in feishu.posts:
            per_user.setdefault(post["user_id"], []).append(post["message"]["summary"])
    assert {u: len(v) for u, v in per_user.items()} == {1: 1, 2: 1, 3: 1, 6: 3}
    assert [s.split("\n")[0] for s in per_user[6]] == ["2026-04-30T10:00:00+08:00", "2026-04-30T10:30:00+08:00",
                                                       "2026-04-30T11:00:00+08:00"]  # one user's order kept
    async with db.engine.connect() as conn:
        recs = {(r["user_id"], r["dedupe_key"]): r for r in (await conn.execute(
            sa.select(notification_records))).mappings()}
        outbox = {r.id: r for r in await conn.execute(sa.select(OutboxRepository.for_event(NOTIFY).table))}
    status = {k[0]: r["status"] for k, r in recs.items() if k[0] != 6}
    assert status == {1: "sent", 2: "sent", 3: "failed", 4: "sent", 5: "sending"}
    assert recs[(3, notification_payload(3)["dedupe_key"])]["last_error_code"] == "provider_5xx"
    assert all(r["attempt_count"] == 1 for r in recs.values())
    assert [outbox[oid].status for oid, _ in items] == ["consumed"] * 5 + ["pending"] + ["consumed"] * 3
    assert "being sent" in outbox[items[5][0]].last_error


async def test_notification_batch_claims_at_most_max_in_flight_records_at_once(db, runtime) -> None:
    """The kill -9 bound: records claimed (``sending``) but not yet recorded never exceed ``worker.max_in_flight``."""
    from aiohttp import web

    from smartflow_streams.cli.embedded import free_port

    runtime.settings.worker.max_in_flight = 3
    sending_seen: list[int] = []

    async def hook(_request: web.Request) -> web.Response:
        async with db.engine.connect() as conn:
            sending_seen.append(int((await conn.execute(sa.select(sa.func.count()).where(
                notification_records.c.status == "sending"))).scalar()))
        return web.json_response({"code": 0})

    app = web.Application()
    app.router.add_post("/flow/api/trigger-webhook/{token}", hook)
    server = web.AppRunner(app, access_log=None)
    await server.setup()
    port = free_port()
    await web.TCPSite(server, "127.0.0.1", port).start()
    try:
        items = []
        for u in range(1, 8):
            await channel(db, u, f"http://127.0.0.1:{port}/flow/api/trigger-webhook/tok-user-{u}-secretpart")
            items.append(await enqueue(db, NOTIFY, notification_payload(u)))
        outcomes = await dispatcher(runtime).handle_batch(
            "notification", [Event(value, str(n).encode(), n) for n, (_oid, value) in enumerate(items)])
    finally:
        await server.cleanup()
    assert outcomes == ["consumed"] * 7
    assert len(sending_seen) == 7 and max(sending_seen) == 3  # chunks of 3, 3, 1
