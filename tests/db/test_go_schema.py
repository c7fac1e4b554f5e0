"""One database with the Go services: the schema command on a Go-made database, and every shared table.

The database is made from the Go services' DDL (``tests/fixtures/go_schema_*.sql``, 13 tables), then the schema
command runs on it as a user would. Each per-table test drives the project's own code path that writes the table
and reads the rows back with the Go model's column list only (:func:`go_schema.go_select`), checking every NOT NULL
column and JSON column the way the Go reader needs them. The fresh-schema test checks that a database made by the
project has every Go column too.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from conftest import DB, drop_database
from tests.kit.go_schema import GO_COLUMNS, GO_OUTBOX_TABLES, go_select, make_go_database
from smartflow_streams.core import clock
from smartflow_streams.catalog import RouteRegistry, convention_route, registry
from smartflow_streams.contracts.envelope import OutboxEventShell
from smartflow_streams.contracts.events import FeishuNotificationRequestedPayload
from smartflow_streams.db import models
from smartflow_streams.db.schema import outbox_table_names, upgrade_schema
from smartflow_streams.notification.channels import put_channel, send_channel_test
from smartflow_streams.notification.limiter import RateLimiter
from smartflow_streams.notification.feishu import WebhookProvider
from smartflow_streams.notification.service import NotificationService
from smartflow_streams.outbox.repository import OutboxRepository
from smartflow_streams.scheduler.jobs import cancel_pending_job, upsert_job
from smartflow_streams.scheduler.preview import DeterministicPreviewBuilder
from smartflow_streams.scheduler.triggers import TriggerRequest, create_trigger
from smartflow_streams.scheduler.workflow import run_trigger_workflow
from smartflow_streams.contracts.events import ActiveScheduleTriggeredPayload
from tests.kit.support import FakeFeishu

SH = ZoneInfo("Asia/Shanghai")
PREVIEW_ID = re.compile(r"^asp_[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
LOCAL_HTTP = {"notification": {"allow_plain_http": True, "allowed_hosts": ["127.0.0.1"],
                               "rate_limit_enabled": False}}


@pytest.fixture
async def go_db(db_kind: str, tmp_path, request: pytest.FixtureRequest) -> AsyncIterator[DB]:
    """A database made from the Go services' DDL, then upgraded by the schema command."""
    mysql = request.getfixturevalue("mariadb_url") if db_kind == "mariadb" else None
    db = await make_go_database(db_kind, tmp_path, mysql, **LOCAL_HTTP)
    await upgrade_schema(db.engine)
    try:
        yield db
    finally:
        await drop_database(db, mysql)
        clock.set_offset(timedelta(0))


async def go_rows(db: DB, table: sa.Table, where: Any = None) -> list[dict[str, Any]]:
    select = go_select(table)
    if where is not None:
        select = select.where(where)
    async with db.engine.connect() as conn:
        return [dict(m) for m in (await conn.execute(select)).mappings()]


def json_of(value: Any) -> Any:
    """A JSON column as a Go reader decodes it: must be valid JSON text (MariaDB's JSON is LONGTEXT + a check)."""
    return value if isinstance(value, (dict, list)) else json.loads(value)


def dt(value: Any) -> datetime:
    """A DATETIME column: MariaDB returns datetime, SQLite the stored text (``YYYY-MM-DD HH:MM:SS.ffffff``)."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _column_shapes(sync_conn: sa.Connection) -> dict[str, dict[str, tuple[str, bool, str]]]:
    insp = sa.inspect(sync_conn)
    return {t: {c["name"]: (str(c["type"]), bool(c["nullable"]), str(c.get("default"))) for c in insp.get_columns(t)}
            for t in GO_COLUMNS}


# -- the schema command --------------------------------------------------------------------------------------------


async def test_schema_command_on_a_go_database_adds_only_ours_and_is_idempotent(db_kind, tmp_path, request) -> None:
    mysql = request.getfixturevalue("mariadb_url") if db_kind == "mariadb" else None
    db = await make_go_database(db_kind, tmp_path, mysql)
    try:
        async with db.engine.connect() as conn:
            before = await conn.run_sync(_column_shapes)
            if db_kind == "mariadb":  # strict: an insert missing a NOT NULL column fails (1364), as on the Go DB
                assert "STRICT_TRANS_TABLES" in (await conn.exec_driver_sql("SELECT @@sql_mode")).scalar()
        changes = await upgrade_schema(db.engine)

        def idx(name: str, table: str) -> str:
            return f"{name}__{table}" if db_kind == "sqlite" else name
        expected = {f"added column {t}.claim_token" for t in outbox_table_names()}
        expected |= {f"created index {idx('idx_outbox_claim', t)} on {t}" for t in outbox_table_names()}
        expected |= {"added column notification_records.send_token",
                     "added column user_notification_channels.webhook_kind",
                     "added column user_notification_channels.sign_secret",
                     "added column user_notification_channels.msg_type",
                     "created table outbox_relay_leases", "created table outbox_admin_audit",
                     "created table outbox_dead_messages",
                     "created index idx_outbox_admin_audit_service on outbox_admin_audit",
                     "created index uk_outbox_dead_messages_position on outbox_dead_messages"}
        assert set(outbox_table_names()) == set(GO_OUTBOX_TABLES)
        assert sorted(changes) == sorted(expected)
        assert await upgrade_schema(db.engine) == []  # idempotent

        async with db.engine.connect() as conn:
            after = await conn.run_sync(_column_shapes)
        for table, columns in before.items():  # nothing renamed, dropped, retyped or made NOT NULL
            assert {c: after[table][c] for c in columns} == columns, table
        added = {(t, c) for t in after for c in after[t] if c not in before[t]}
        assert added == {(t, "claim_token") for t in GO_OUTBOX_TABLES} | {
            ("notification_records", "send_token"), ("user_notification_channels", "webhook_kind"),
            ("user_notification_channels", "sign_secret"), ("user_notification_channels", "msg_type")}
        assert all(after[t][c][1] for t, c in added)  # every added column is NULL-able
    finally:
        await drop_database(db, mysql)


async def test_fresh_project_schema_has_every_go_column(db) -> None:
    async with db.engine.connect() as conn:
        shapes = await conn.run_sync(_column_shapes)
    for table, columns in GO_COLUMNS.items():
        assert set(columns) <= set(shapes[table]), (table, set(columns) - set(shapes[table]))
    # the Go model's NOT NULL columns are NOT NULL here too (a NULL there would break the Go scan)
    assert not shapes["active_schedule_previews"]["base_version"][1]
    assert not shapes["user_notification_channels"]["bearer_token"][1]


async def test_schema_command_renames_our_legacy_preview_key(db) -> None:
    """A previews table made by an earlier smartflow-streams (``id`` key, no ``base_version``) gets the Go key."""
    async with db.engine.begin() as conn:
        await conn.exec_driver_sql("DROP TABLE active_schedule_previews")
        await conn.exec_driver_sql(
            "CREATE TABLE active_schedule_previews (id varchar(64) NOT NULL PRIMARY KEY, trigger_id varchar(64) NOT "
            "NULL, user_id bigint NOT NULL, trigger_type varchar(64) NOT NULL, target_type varchar(64) NOT NULL, "
            "target_id bigint NOT NULL DEFAULT 0, status varchar(32) NOT NULL DEFAULT 'pending', summary_text text, "
            "generated_at datetime NULL, expires_at datetime NULL)")
        await conn.exec_driver_sql(
            "INSERT INTO active_schedule_previews (id, trigger_id, user_id, trigger_type, target_type, target_id, "
            "status) VALUES ('asp_old', 'ast_old', 1, 'important_urgent_task', 'task_pool', 3, 'ready')")
    changes = await upgrade_schema(db.engine)
    assert "renamed column active_schedule_previews.id to preview_id" in changes
    assert "added column active_schedule_previews.base_version" in changes
    assert await upgrade_schema(db.engine) == []
    [row] = await go_rows(db, models.active_schedule_previews)
    assert (row["preview_id"], row["trigger_id"], row["base_version"]) == ("asp_old", "ast_old", None)


# -- per table: what the project writes, read back with the Go columns ---------------------------------------------


@pytest.mark.parametrize("table_name", GO_OUTBOX_TABLES)
async def test_outbox_table_rows_read_back_with_go_columns(go_db, table_name) -> None:
    service = next(s for s in registry.services() if registry.service_route(s).table == table_name)
    reg = RouteRegistry()
    reg.register_route(convention_route(service) if service not in registry.services()
                       else registry.service_route(service))
    event_type = (registry.event_types_of(service) or [f"{service}.go_compat.checked"])[0]
    reg.register_event(event_type, service)
    repo = OutboxRepository.for_service(service, registry=reg)
    async with go_db.engine.begin() as conn:
        outbox_id = await repo.enqueue(conn, event_type, {"user_id": 7, "note": "中文"}, message_key="7",
                                       event_version="1", event_id="evt-1")
    [pending] = await go_rows(go_db, repo.table)
    assert (pending["id"], pending["biz_type"], pending["service_name"]) == (outbox_id, event_type, service)
    assert (pending["status"], pending["retry_count"], pending["max_retry"]) == ("pending", 0, 20)
    assert pending["next_retry_at"] is not None and pending["created_at"] is not None
    shell = OutboxEventShell.parse(pending["payload"])
    assert (shell.event_type, shell.event_id, json_of(shell.payload)) == (event_type, "evt-1",
                                                                          {"user_id": 7, "note": "中文"})
    claim = await repo.claim_due(go_db.engine, limit=10, lease_seconds=30)
    async with go_db.engine.begin() as conn:
        assert await repo.mark_published(conn, [outbox_id], claim_token=claim.token) == 1
    async with go_db.sessions() as session, session.begin():
        await repo.consume(session, outbox_id)
    [done] = await go_rows(go_db, repo.table)
    assert done["status"] == "consumed" and done["published_at"] is not None and done["consumed_at"] is not None


async def _trigger_and_preview(db: DB) -> tuple[str, str]:
    """The project's trigger creation and workflow on ``db``; returns (trigger id, preview id)."""
    mock = datetime(2026, 4, 30, 9, 0, tzinfo=SH)
    async with db.sessions() as s, s.begin():
        created = await create_trigger(s, TriggerRequest(
            user_id=42, trigger_type="important_urgent_task", source="api_trigger", target_type="task_pool",
            target_id=7, mock_now=mock, payload={"k": 1}, trace_id="trace_api_trigger_42_1"), db.settings)
    repo = OutboxRepository.for_event("active_schedule.triggered")
    async with db.sessions() as s:
        payload = (await s.execute(sa.select(repo.table.c.payload))).scalar_one()
    event = ActiveScheduleTriggeredPayload.parse(OutboxEventShell.parse(payload).payload)
    async with db.sessions() as s, s.begin():
        result = await run_trigger_workflow(s, event, builder=DeterministicPreviewBuilder(), settings=db.settings)
    assert result.preview_id is not None
    return created.trigger_id, result.preview_id


async def test_active_schedule_triggers_rows_read_back_with_go_columns(go_db) -> None:
    trigger_id, preview_id = await _trigger_and_preview(go_db)
    [row] = await go_rows(go_db, models.active_schedule_triggers)
    assert row["id"] == trigger_id and row["id"].startswith("ast_")
    assert (row["user_id"], row["trigger_type"], row["source"], row["target_type"], row["target_id"]) == (
        42, "important_urgent_task", "api_trigger", "task_pool", 7)
    assert (row["status"], row["preview_id"]) == ("preview_generated", preview_id)
    assert bool(row["is_mock_time"]) and dt(row["mock_now"]) == datetime(2026, 4, 30, 9, 0)  # naive, in the DB zone
    assert json_of(row["payload_json"]) == {"k": 1}
    assert row["requested_at"] is not None and row["processed_at"] is not None and row["completed_at"] is not None
    assert row["dedupe_key"] and row["trace_id"] == "trace_api_trigger_42_1" and row["deleted_at"] is None


async def test_active_schedule_previews_rows_read_back_with_go_columns(go_db) -> None:
    trigger_id, preview_id = await _trigger_and_preview(go_db)
    [row] = await go_rows(go_db, models.active_schedule_previews)
    assert PREVIEW_ID.match(row["preview_id"]) and row["preview_id"] == preview_id
    assert (row["trigger_id"], row["user_id"], row["trigger_type"], row["target_type"], row["target_id"]) == (
        trigger_id, 42, "important_urgent_task", "task_pool", 7)
    assert (row["status"], row["apply_status"], row["candidate_count"]) == ("ready", "none", 1)
    assert dt(row["expires_at"]) - dt(row["generated_at"]) == timedelta(hours=1)
    assert row["base_version"].startswith("sfs1:") and len(row["base_version"]) <= 128
    assert row["explanation_text"] == row["notification_summary"] == "任务 #7 已到紧急阈值，建议在今天安排处理时段。"
    assert row["selected_candidate_id"] == "c1"
    assert json_of(row["selected_candidate_json"])["id"] == "c1" and len(json_of(row["candidates_json"])) == 1
    assert json_of(row["decision_json"])["target_id"] == 7
    for name in ("metrics_json", "issues_json", "context_summary_json", "before_summary_json",
                 "preview_changes_json", "after_summary_json", "risk_json", "applied_changes_json",
                 "applied_event_ids_json", "apply_id", "applied_at", "deleted_at"):
        assert row[name] is None, name


async def test_notification_records_rows_read_back_with_go_columns(go_db) -> None:
    await _trigger_and_preview(go_db)
    repo = OutboxRepository.for_event("notification.feishu.requested")
    async with go_db.sessions() as s:
        outbox_id, shell_text = (await s.execute(sa.select(repo.table.c.id, repo.table.c.payload))).one()
    payload = FeishuNotificationRequestedPayload.parse(OutboxEventShell.parse(shell_text).payload)
    async with FakeFeishu() as feishu:
        async with go_db.engine.begin() as conn:  # the channel as the Go channel API writes it (no columns of ours)
            await conn.execute(sa.text(
                "INSERT INTO user_notification_channels (user_id, channel, enabled, webhook_url, auth_type, "
                "bearer_token, created_at, updated_at) VALUES (42, 'feishu_webhook', true, :u, 'none', '', :n, :n)"),
                {"u": feishu.url(42), "n": clock.db_now()})
        provider = WebhookProvider(go_db.settings.notification, limiter=RateLimiter(enabled=False),
                                   zone=go_db.settings.zone)
        try:
            service = NotificationService(go_db.settings, go_db.sessions, provider)
            result = await service.handle_requested(repo, outbox_id, payload)
        finally:
            await provider.close()
    assert result.status == "sent" and len(feishu.posts) == 1
    [row] = await go_rows(go_db, models.notification_records)
    assert (row["channel"], row["user_id"], row["preview_id"], row["trigger_id"]) == (
        "feishu", 42, payload.preview_id, payload.trigger_id)
    assert (row["status"], row["attempt_count"], row["max_attempts"]) == ("sent", 1, 5)
    assert row["dedupe_key"] == payload.dedupe_key and row["target_url"].startswith("/assistant/")
    assert not row["fallback_used"] and row["summary_text"] and row["fallback_text"]
    assert json_of(row["provider_request_json"])["user_id"] == 42
    assert json_of(row["provider_response_json"])["status_code"] == 200
    assert row["sent_at"] is not None and row["last_error_code"] is None and row["next_retry_at"] is None


async def test_user_notification_channels_rows_read_back_with_go_columns(go_db) -> None:
    async with FakeFeishu() as feishu:
        await put_channel(go_db.engine, go_db.settings, 9, {"webhook_url": feishu.url(9)})
        [row] = await go_rows(go_db, models.user_notification_channels)
        assert (row["user_id"], row["channel"], bool(row["enabled"])) == (9, "feishu_webhook", True)
        assert (row["webhook_url"], row["auth_type"], row["bearer_token"]) == (feishu.url(9), "none", "")
        await put_channel(go_db.engine, go_db.settings, 9, {"webhook_url": feishu.url(9), "auth_type": "bearer",
                                                            "bearer_token": "tok-9"})
        await send_channel_test(go_db.engine, go_db.settings, 9)
    [row] = await go_rows(go_db, models.user_notification_channels)
    assert (row["auth_type"], row["bearer_token"], row["last_test_status"]) == ("bearer", "tok-9", "success")
    assert row["last_test_at"] is not None and row["last_test_error"] is None and row["created_at"] is not None


async def test_active_schedule_jobs_rows_read_back_with_go_columns(go_db) -> None:
    threshold = datetime(2026, 4, 30, 10, 5, tzinfo=SH)
    async with go_db.sessions() as s, s.begin():
        job_id = await upsert_job(s, 5, 11, threshold, settings=go_db.settings)
    [row] = await go_rows(go_db, models.active_schedule_jobs)
    assert (row["id"], row["user_id"], row["task_id"]) == ("asj_task_5_11", 5, 11) and job_id == row["id"]
    assert (row["trigger_type"], row["status"], dt(row["trigger_at"])) == (
        "important_urgent_task", "pending", datetime(2026, 4, 30, 10, 5))
    assert row["dedupe_key"] and row["trace_id"] == "trace_active_task_5_11" and row["deleted_at"] is None
    async with go_db.sessions() as s, s.begin():
        assert await cancel_pending_job(s, 5, 11)
    [row] = await go_rows(go_db, models.active_schedule_jobs)
    assert row["status"] == "canceled" and row["last_error_code"] == "task_not_schedulable"
