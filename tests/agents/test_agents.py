"""Agents in-process with Faust's ``agent.test_context()`` (no broker), real DB (both backends), real webhook server."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest
import sqlalchemy as sa

import config
from smartflow_streams.core import clock
from smartflow_streams.contracts.envelope import KafkaEnvelope, OutboxEventShell
from smartflow_streams.db.models import notification_records, outbox_dead_messages, user_notification_channels
from smartflow_streams.outbox.repository import OutboxRepository
from smartflow_streams.scheduler.triggers import TriggerRequest, create_trigger
from tests.kit.support import FakeFeishu

NOTIFY = "notification.feishu.requested"
TRIGGER = "active_schedule.triggered"


@pytest.fixture
async def worker(db):
    from smartflow_streams.startup.faust_app import build_app

    settings = config.load_settings(
        database_url=db.url, kafka_bootstrap="127.0.0.1:1",
        notification={"allow_plain_http": True, "allowed_hosts": ["127.0.0.1"], "http_timeout_seconds": 1.0},
    )
    config.set_settings(settings)
    app = build_app(settings, id=f"test-{db.kind}")
    app.finalize()
    app.flow_control.resume()
    yield app
    await app.smartflow_runtime.close()


async def put(app, service: str, value: bytes, key: bytes = b"7") -> str:
    agent = app.smartflow_agents[service]
    async with agent.test_context() as ctx:
        event = await ctx.put(value, key=key)
        return ctx.results[event.message.offset]


async def channel(db, user_id: int, url: str) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(sa.insert(user_notification_channels).values(
            user_id=user_id, channel="feishu_webhook", enabled=True, webhook_url=url, auth_type="none",
            bearer_token="", webhook_kind="flow", created_at=clock.db_now(), updated_at=clock.db_now()))


def notification_payload(user_id: int = 7, key_suffix: str = "2026-04-30T10:00:00+08:00") -> dict:
    return {"user_id": user_id, "trigger_id": "ast_1", "preview_id": "asp_1", "trigger_type": "important_urgent_task",
            "target_type": "task_pool", "target_id": 3, "dedupe_key": f"{user_id}:important_urgent_task:{key_suffix}",
            "target_url": "/assistant/abc", "summary_text": "任务 #3 需要安排", "fallback_text": "",
            "requested_at": "2026-04-30T10:12:13+08:00"}


async def enqueue(db, event_type: str, payload: dict, version: str = "1") -> tuple[int, bytes]:
    repo = OutboxRepository.for_event(event_type)
    async with db.sessions() as s, s.begin():
        oid = await repo.enqueue(s, event_type, payload, message_key=str(payload.get("user_id", 1)),
                                 event_version=version)
        row = await repo.get(s, oid)
    envelope = KafkaEnvelope.from_shell(oid, OutboxEventShell.parse(row.payload), repo.route.service_name)
    return oid, envelope.to_json_bytes()


async def row(db, event_type: str, oid: int):
    repo = OutboxRepository.for_event(event_type)
    async with db.sessions() as s:
        return await repo.get(s, oid)


async def test_notification_sent_once_and_duplicates_are_noops(db, worker) -> None:
    async with FakeFeishu() as feishu:
        await channel(db, 7, feishu.url(7))
        oid, value = await enqueue(db, NOTIFY, notification_payload())
        assert await put(worker, "notification", value) == "consumed"
        assert await put(worker, "notification", value) == "duplicate"  # same outbox row redelivered
        oid2, value2 = await enqueue(db, NOTIFY, notification_payload())  # new row, same dedupe key
        assert await put(worker, "notification", value2) == "consumed"
        assert len(feishu.posts) == 1
    post = feishu.posts[0]
    assert post["event"] == "smartflow.schedule_adjustment_ready" and post["user_id"] == 7
    assert post["message"]["summary"] == "任务 #3 需要安排\n/assistant/abc"
    assert post["message"]["action_url"] == "https://smartflow.example.com/assistant/abc"
    assert (await row(db, NOTIFY, oid)).status == "consumed" and (await row(db, NOTIFY, oid2)).status == "consumed"
    async with db.engine.connect() as conn:
        rec = (await conn.execute(sa.select(notification_records))).mappings().one()
    assert (rec["status"], rec["attempt_count"], rec["channel"]) == ("sent", 1, "feishu")
    assert rec["provider_request_json"] and "tok-user-7-secretpart" not in str(rec["provider_request_json"])


async def test_poison_messages_end_dead_with_reason(db, worker) -> None:
    assert await put(worker, "notification", b"\x00not json at all") == "unroutable"
    async with db.engine.connect() as conn:
        stored = (await conn.execute(sa.select(outbox_dead_messages))).mappings().one()
    assert stored["service_name"] == "notification" and "invalid envelope" in stored["reason"]

    cases = {
        "version": ({**notification_payload()}, "2", "event_version not supported"),
        "payload": ({**notification_payload(), "target_url": "https://evil.example/x"}, "1", "payload invalid"),
        "user": ({**notification_payload(), "user_id": 0}, "1", "payload invalid"),
    }
    for name, (payload, version, reason) in cases.items():
        oid, value = await enqueue(db, NOTIFY, payload, version)
        assert await put(worker, "notification", value) == "dead", name
        r = await row(db, NOTIFY, oid)
        assert r.status == "dead" and reason in r.last_error, (name, r.last_error)

    oid, value = await enqueue(db, NOTIFY, notification_payload())
    broken = value.replace(b'"payload":', b'"payload":', 1)[:-5]  # truncated JSON, outbox_id still first
    assert await put(worker, "notification", broken) == "dead"
    assert "invalid envelope" in (await row(db, NOTIFY, oid)).last_error

    # accepted versions: "", "1" and upstream's shell default "v1"
    async with FakeFeishu() as feishu:
        await channel(db, 8, feishu.url(8))
        for i, version in enumerate(("", "v1")):
            oid, value = await enqueue(db, NOTIFY, notification_payload(8, f"2026-04-30T1{i}:00:00+08:00"), version)
            assert await put(worker, "notification", value) == "consumed", version
        assert len(feishu.posts) == 2


async def test_foreign_and_unhandled_events(db, worker) -> None:
    oid, value = await enqueue(db, NOTIFY, notification_payload())
    assert await put(worker, "active-scheduler", value) == "foreign"  # another service's message: untouched
    assert (await row(db, NOTIFY, oid)).status == "pending"
    from smartflow_streams.catalog import registry

    registry.register_event("notification.sms.requested", "notification")  # owned, but no handler
    oid, value = await enqueue(db, "notification.sms.requested", {"user_id": 1})
    assert await put(worker, "notification", value) == "dead"
    assert "no handler registered: notification.sms.requested" in (await row(db, NOTIFY, oid)).last_error


async def test_trigger_flows_to_preview_and_notification(db, worker) -> None:
    async with FakeFeishu() as feishu:
        await channel(db, 42, feishu.url(42))
        async with db.sessions() as s, s.begin():
            result = await create_trigger(s, TriggerRequest(
                user_id=42, trigger_type="important_urgent_task", source="api_trigger", target_type="task_pool",
                target_id=9), config.get_settings())
        repo = OutboxRepository.for_event(TRIGGER)
        async with db.sessions() as s:
            trig_row = (await s.execute(sa.select(repo.table))).mappings().one()
        env = KafkaEnvelope.from_shell(trig_row["id"], OutboxEventShell.parse(trig_row["payload"]), "active-scheduler")
        assert await put(worker, "active-scheduler", env.to_json_bytes(), b"42") == "consumed"
        assert await put(worker, "active-scheduler", env.to_json_bytes(), b"42") == "duplicate"
        notify_repo = OutboxRepository.for_event(NOTIFY)
        async with db.sessions() as s:
            [n_row] = (await s.execute(sa.select(notify_repo.table))).mappings().all()
        shell = json.loads(n_row["payload"])
        assert shell["event_version"] == "1" and shell["payload"]["trigger_id"] == result.trigger_id
        assert shell["payload"]["target_url"].startswith("/assistant/")
        n_env = KafkaEnvelope.from_shell(n_row["id"], OutboxEventShell.parse(n_row["payload"]), "notification")
        assert await put(worker, "notification", n_env.to_json_bytes(), b"42") == "consumed"
        assert len(feishu.posts) == 1 and feishu.posts[0]["trigger_id"] == result.trigger_id


async def test_5xx_then_retry_scanner_sends(db, worker) -> None:
    async with FakeFeishu({1: (500, {"error": "down"}, 0.0)}) as feishu:
        await channel(db, 7, feishu.url(7))
        oid, value = await enqueue(db, NOTIFY, notification_payload())
        assert await put(worker, "notification", value) == "consumed"  # the record owns the retry now
        async with db.engine.connect() as conn:
            rec = (await conn.execute(sa.select(notification_records))).mappings().one()
        assert (rec["status"], rec["last_error_code"]) == ("failed", "provider_5xx")
        service = worker.smartflow_runtime.notifications
        assert (await service.retry_due()).claimed == 0  # not due yet (+5 min)
        clock.set_offset(timedelta(minutes=5, seconds=1))
        stats = await service.retry_due()
        assert (stats.claimed, stats.sent) == (1, 1) and len(feishu.posts) == 2


async def test_retry_scanner_sends_due_records_in_chunks(db, worker) -> None:
    """20 failed records (two chunks of worker.max_in_flight=16): one pass sends all of them with a few statements
    per chunk; a record whose webhook fails again goes back to `failed` with its next attempt counted."""
    from bench.common import StatementCounter

    users = range(101, 121)
    async with FakeFeishu(script={n: (500, {"error": "down"}, 0.0) for n in range(1, 21)},
                          per_user={120: [(500, {"error": "still down"}, 0.0)] * 2}) as feishu:
        for user_id in users:
            await channel(db, user_id, feishu.url(user_id))
            _oid, value = await enqueue(db, NOTIFY, notification_payload(user_id))
            assert await put(worker, "notification", value, str(user_id).encode()) == "consumed"
        assert len(feishu.posts) == 20
        clock.set_offset(timedelta(minutes=5, seconds=1))
        runtime = worker.smartflow_runtime
        service = runtime.notifications  # one outcome write per chunk however slowly the answers come in here
        service.cfg = service.cfg.model_copy(update={"outcome_flush_seconds": 5.0})
        counter = StatementCounter(runtime.engine)
        stats = await runtime.notifications.retry_due()
        assert (stats.scanned, stats.claimed, stats.sent, stats.failed, stats.errors) == (20, 20, 19, 1, 0)
        assert len(feishu.posts) == 40 and counter.count <= 16, counter.count  # one at a time it was 5 per record: 100
    async with db.engine.connect() as conn:
        recs = dict((await conn.execute(sa.select(notification_records.c.user_id, notification_records.c.status)
                                        .where(notification_records.c.attempt_count == 2))).all())
    assert len(recs) == 20 and recs.pop(120) == "failed" and set(recs.values()) == {"sent"}


async def test_answered_posts_are_recorded_while_a_slow_chunk_mate_is_in_flight(db, worker) -> None:
    """Outcomes are written within notification.outcome_flush_seconds (0.05 s) of their answer, not when the
    chunk's slowest POST returns: a kill -9 during a slow POST leaves only that record to be re-sent."""
    users = range(201, 206)
    down = (500, {"error": "down"}, 0.0)
    slow_ok = (200, {"code": 0, "msg": "success"}, 0.8)  # the fixture's HTTP timeout is 1 s
    async with FakeFeishu(per_user={u: [down, slow_ok] if u == 201 else [down] for u in users}) as feishu:
        for user_id in users:
            await channel(db, user_id, feishu.url(user_id))
            _oid, value = await enqueue(db, NOTIFY, notification_payload(user_id))
            assert await put(worker, "notification", value, str(user_id).encode()) == "consumed"
        clock.set_offset(timedelta(minutes=5, seconds=1))
        scan = asyncio.ensure_future(worker.smartflow_runtime.notifications.retry_due())
        seen_mid_flight: dict[int, str] = {}
        while not scan.done() and len(seen_mid_flight) < 5:
            async with db.engine.connect() as conn:
                statuses = dict((await conn.execute(sa.select(notification_records.c.user_id,
                                                              notification_records.c.status))).all())
            if not scan.done() and statuses.get(201) == "sending" and sum(v == "sent" for v in statuses.values()) == 4:
                seen_mid_flight = statuses
            await asyncio.sleep(0.02)
        stats = await scan
    assert seen_mid_flight == {201: "sending", 202: "sent", 203: "sent", 204: "sent", 205: "sent"}
    assert (stats.claimed, stats.sent) == (5, 5) and len(feishu.posts) == 10


async def test_payload_notification_id_reuses_only_a_matching_record(db, worker) -> None:
    """Upstream's optional ``notification_id``: honoured when it names this dedupe key's record, ignored otherwise."""
    async with FakeFeishu() as feishu:
        await channel(db, 7, feishu.url(7))
        _oid, value = await enqueue(db, NOTIFY, notification_payload())
        assert await put(worker, "notification", value) == "consumed"
        async with db.engine.connect() as conn:
            first_id = (await conn.execute(sa.select(notification_records.c.id))).scalar_one()
        _oid, value = await enqueue(db, NOTIFY, {**notification_payload(), "notification_id": first_id})
        assert await put(worker, "notification", value) == "consumed"  # same record, already sent: no POST
        other = notification_payload(key_suffix="2026-04-30T11:00:00+08:00")
        _oid, value = await enqueue(db, NOTIFY, {**other, "notification_id": first_id})
        assert await put(worker, "notification", value) == "consumed"  # another key: its own record
        assert len(feishu.posts) == 2
    async with db.engine.connect() as conn:
        keys = (await conn.execute(sa.select(notification_records.c.dedupe_key)
                                   .order_by(notification_records.c.id))).scalars().all()
    assert keys == [notification_payload()["dedupe_key"], other["dedupe_key"]]


async def test_fresh_sending_lease_sends_the_row_to_retry(db, worker) -> None:
    async with FakeFeishu() as feishu:
        await channel(db, 7, feishu.url(7))
        payload = notification_payload()
        now = clock.db_now()
        async with db.engine.begin() as conn:  # another worker is mid-send
            await conn.execute(sa.insert(notification_records).values(
                channel="feishu", user_id=7, trigger_id="ast_1", preview_id="asp_1", trigger_type="x",
                target_type="y", target_id=1, dedupe_key=payload["dedupe_key"], target_url="/assistant/abc",
                status="sending", attempt_count=1, max_attempts=5, created_at=now, updated_at=now))
        oid, value = await enqueue(db, NOTIFY, payload)
        assert await put(worker, "notification", value) == "retry"
        r = await row(db, NOTIFY, oid)
        assert (r.status, r.retry_count) == ("pending", 1) and "being sent" in r.last_error
        clock.set_offset(timedelta(minutes=10, seconds=1))  # the other worker died: its lease expires
        stats = await worker.smartflow_runtime.notifications.retry_due()
        assert stats.sent == 1 and len(feishu.posts) == 1
