"""worker.verify_messages: a message is acted on only when it matches its outbox row (real DB, both backends,
real webhook server). A forged message is stored as a dead message and its row is left alone."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

import config
from agents.dispatch import Dispatcher
from smartflow_streams.db.models import notification_records, outbox_dead_messages
from smartflow_streams.outbox.repository import OutboxRepository
from smartflow_streams.startup.runtime import WorkerRuntime
from tests.kit.support import FakeFeishu

from test_agents import NOTIFY, channel, enqueue, notification_payload


class Event:
    def __init__(self, value: bytes, offset: int) -> None:
        self.value = value
        self.message = SimpleNamespace(topic="t", partition=0, key=b"k", offset=offset)


@pytest.fixture
async def runtime(db):
    settings = config.load_settings(
        database_url=db.url, worker={"verify_messages": True},
        notification={"allow_plain_http": True, "allowed_hosts": ["127.0.0.1"], "rate_limit_enabled": False})
    config.set_settings(settings)
    rt = WorkerRuntime(settings)
    yield rt
    await rt.close()


def _forge(value: bytes, **changes: object) -> bytes:
    envelope = json.loads(value)
    payload = envelope["payload"] if isinstance(envelope["payload"], dict) else json.loads(envelope["payload"])
    envelope.update({k: v for k, v in changes.items() if k == "outbox_id"})
    payload.update({k: v for k, v in changes.items() if k != "outbox_id"})
    envelope["payload"] = payload
    return json.dumps(envelope).encode()


@pytest.mark.parametrize("batched", [True, False])
async def test_only_messages_matching_their_row_are_acted_on(db, runtime, batched: bool) -> None:
    runtime.settings.worker.batched_handlers = batched
    async with FakeFeishu() as feishu:
        for u in (7, 8):
            await channel(db, u, feishu.url(u))
        oid, genuine = await enqueue(db, NOTIFY, notification_payload(7))
        events = [Event(_forge(genuine, user_id=8), 1),  # someone with topic write access notifies user 8
                  Event(_forge(genuine, outbox_id=oid + 1000), 2),  # an id with no row
                  Event(genuine, 3)]
        outcomes = await Dispatcher(runtime).handle_batch("notification", events)
        assert outcomes == ["unroutable", "unroutable", "consumed"]
        assert [p["user_id"] for p in feishu.posts] == [7]
    async with db.engine.connect() as conn:
        dead = (await conn.execute(sa.select(outbox_dead_messages.c.kafka_offset, outbox_dead_messages.c.reason)
                                   .order_by(outbox_dead_messages.c.kafka_offset))).all()
        row = (await conn.execute(sa.select(OutboxRepository.for_event(NOTIFY).table))).mappings().one()
        users = (await conn.execute(sa.select(notification_records.c.user_id))).scalars().all()
    assert [(o, r.split(": ")[-1]) for o, r in dead] == [(1, "payload differs"), (2, "no such row")]
    assert row["status"] == "consumed" and users == [7]
