"""The whole active-scheduler pipeline on a database the Go services made, with real processes.

Trigger row + ``active_schedule.triggered`` outbox row written as the Go API writes them (including the legacy and
optional shapes: ``payload_json`` NULL, ``mock_now`` set, an outbox row with an empty ``service_name`` from before
that column existed), channels written as the Go channel API writes them (none of our columns) -> the relay ->
a ``faust worker`` -> preview -> ``notification.feishu.requested`` -> a POST to a local Feishu -> records.

Databases: made from the Go services' DDL (``tests/fixtures/go_schema_*.sql``) on MariaDB and SQLite, then the
schema command; and the project's own fresh schema on both, for comparison. Every row is read back with the Go
columns only. About 30-50 s per case on an idle machine.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

import config
from conftest import DB, drop_database, make_database
from tests.kit.go_schema import go_select, make_go_database
from smartflow_streams.core import clock
from smartflow_streams.contracts.dedupe import new_trigger_id, trigger_dedupe_key
from smartflow_streams.contracts.envelope import OutboxEventShell
from smartflow_streams.contracts.events import ActiveScheduleTriggeredPayload
from smartflow_streams.db import models
from smartflow_streams.db.schema import upgrade_schema
from smartflow_streams.cli.embedded import free_port
from tests.kit.support import FakeFeishu, spawn_relay, spawn_worker, terminate, wait_for, wait_worker_ready, worker_env

pytestmark = pytest.mark.slow
AS_TABLE = models.outbox_table("active_scheduler_outbox_messages")
N_TABLE = models.outbox_table("notification_outbox_messages")
PREVIEW_ID = re.compile(r"^asp_[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture(params=["go-sqlite", "go-mariadb", "project-sqlite", "project-mariadb"])
async def pipeline_db(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[DB]:
    origin, kind = str(request.param).split("-")
    mysql = request.getfixturevalue("mariadb_url") if kind == "mariadb" else None
    make = make_go_database if origin == "go" else make_database
    db = await make(kind, tmp_path, mysql)
    await upgrade_schema(db.engine)  # what a user runs (`smartflow schema`) before starting the relay and worker
    try:
        yield db
    finally:
        await drop_database(db, mysql)


def go_trigger_rows(topic: str, user_id: int, target_id: int, requested_at: datetime, *, mock_now: datetime | None,
                    payload_json: str | None, service_name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A trigger row and its outbox row as Go's TriggerService + EnqueueActiveScheduleTriggeredInTx write them
    (only the Go columns; optional ones left out when Go leaves them NULL)."""
    trigger_id = new_trigger_id()
    dedupe = trigger_dedupe_key(user_id, "important_urgent_task", "task_pool", target_id, mock_now or requested_at)
    event = ActiveScheduleTriggeredPayload(
        trigger_id=trigger_id, user_id=user_id, trigger_type="important_urgent_task", source="api_trigger",
        target_type="task_pool", target_id=target_id, dedupe_key=dedupe, mock_now=mock_now,
        is_mock_time=mock_now is not None, requested_at=requested_at, payload="{}",
        trace_id=f"trace_api_trigger_{user_id}_{target_id}")
    shell = OutboxEventShell(event_id=trigger_id, event_type="active_schedule.triggered", event_version="1",
                             aggregate_id=trigger_id, payload=event.to_json())
    now = requested_at.replace(tzinfo=None)
    trigger = dict(id=trigger_id, user_id=user_id, trigger_type="important_urgent_task", source="api_trigger",
                   target_type="task_pool", target_id=target_id, dedupe_key=dedupe, status="pending",
                   is_mock_time=mock_now is not None, requested_at=now, trace_id=event.trace_id,
                   created_at=now, updated_at=now)
    if mock_now is not None:
        trigger["mock_now"] = mock_now.replace(tzinfo=None)
    if payload_json is not None:
        trigger["payload_json"] = payload_json
    outbox = dict(biz_type="active_schedule.triggered", service_name=service_name, topic=topic,
                  message_key=str(user_id), payload=shell.to_json(), status="pending", retry_count=0, max_retry=20,
                  next_retry_at=now, created_at=now, updated_at=now)
    return trigger, outbox


async def _insert(conn: Any, table: str, row: dict[str, Any]) -> None:
    """A plain INSERT naming exactly ``row``'s columns, as GORM's Create does for the fields it sets."""
    cols = ", ".join(row)
    await conn.execute(sa.text(f"INSERT INTO {table} ({cols}) VALUES ({', '.join(':' + c for c in row)})"), row)


def _dt(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


async def _go_rows(db: DB, table: sa.Table) -> list[dict[str, Any]]:
    async with db.engine.connect() as conn:
        return [dict(m) for m in (await conn.execute(go_select(table))).mappings()]


async def test_go_written_triggers_flow_to_webhook_and_records(pipeline_db: DB, kafka_bootstrap, tmp_path) -> None:
    db = pipeline_db
    tag = uuid.uuid4().hex[:8]
    topic = f"t.{tag}.active-scheduler"
    env = worker_env(db.url, kafka_bootstrap, tag, free_port())
    config.set_settings(config.load_settings(database_url=db.url))
    users = [301, 302, 303]
    async with FakeFeishu() as feishu:
        now = clock.db_now()
        async with db.engine.begin() as conn:  # channels as the Go channel API writes them
            for uid in users:
                bearer = uid == 303
                await _insert(conn, "user_notification_channels", dict(
                    user_id=uid, channel="feishu_webhook", enabled=True, webhook_url=feishu.url(uid),
                    auth_type="bearer" if bearer else "none", bearer_token=f"go-bearer-{uid}" if bearer else "",
                    created_at=now, updated_at=now))
        relay = spawn_relay(env, tmp_path / "relay.log")
        worker = spawn_worker(env, tmp_path / "worker.log")
        try:
            await wait_worker_ready(tmp_path / "worker.log")
            at = clock.now().replace(microsecond=clock.now().microsecond // 1000 * 1000)
            shapes = [  # (user, mock_now, payload_json, service_name)
                (301, None, "{}", "active-scheduler"),                          # the usual Go row
                (302, at - timedelta(days=1), None, "active-scheduler"),        # mock time, payload_json NULL
                (303, None, '{"source_note":"go"}', ""),                        # legacy outbox row: no service_name
            ]
            trigger_ids: dict[int, str] = {}
            for i, (uid, mock_now, payload_json, service_name) in enumerate(shapes):
                trigger, outbox = go_trigger_rows(topic, uid, 700 + i, at, mock_now=mock_now,
                                                  payload_json=payload_json, service_name=service_name)
                async with db.engine.begin() as conn:  # one transaction, as the Go API does
                    await _insert(conn, "active_schedule_triggers", trigger)
                    await _insert(conn, "active_scheduler_outbox_messages", outbox)
                trigger_ids[uid] = trigger["id"]

            async def sent() -> bool:
                rows = await _go_rows(db, models.notification_records)
                return len(rows) == 3 and all(r["status"] == "sent" for r in rows)
            await wait_for(sent, 50, interval=0.3, what="3 notification records sent")
        finally:
            codes = (terminate(worker), terminate(relay))
    assert codes == (0, 0)

    assert sorted(p["user_id"] for p in feishu.posts) == users
    assert feishu.headers[[p["user_id"] for p in feishu.posts].index(303)]["Authorization"] == "Bearer go-bearer-303"
    triggers = {r["id"]: r for r in await _go_rows(db, models.active_schedule_triggers)}
    previews = {r["preview_id"]: r for r in await _go_rows(db, models.active_schedule_previews)}
    records = {r["user_id"]: r for r in await _go_rows(db, models.notification_records)}
    assert len(previews) == 3
    for uid, trigger_id in trigger_ids.items():
        trig = triggers[trigger_id]
        assert trig["status"] == "preview_generated" and trig["last_error_code"] is None, trig
        preview = previews[trig["preview_id"]]
        assert PREVIEW_ID.match(preview["preview_id"]) and preview["trigger_id"] == trigger_id
        assert (preview["status"], preview["apply_status"], preview["candidate_count"]) == ("ready", "none", 1)
        assert preview["base_version"].startswith("sfs1:")
        assert _dt(preview["expires_at"]) - _dt(preview["generated_at"]) == timedelta(hours=1)
        record = records[uid]
        assert (record["preview_id"], record["trigger_id"], record["status"]) == (
            preview["preview_id"], trigger_id, "sent")
        request_json = record["provider_request_json"]
        request_json = request_json if isinstance(request_json, dict) else json.loads(request_json)
        assert request_json["preview_id"] == preview["preview_id"]
    mock_trigger = triggers[trigger_ids[302]]  # the Go mock-time row is kept as written
    assert bool(mock_trigger["is_mock_time"]) and _dt(mock_trigger["mock_now"]).date() == (at - timedelta(days=1)).date()
    assert mock_trigger["payload_json"] is None
    for table in (AS_TABLE, N_TABLE):
        statuses = [r["status"] for r in await _go_rows(db, table)]
        assert statuses == ["consumed"] * 3, (table.name, statuses)
