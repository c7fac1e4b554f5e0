"""Schema command on an upstream (GORM-made) database with pending rows: in place, no data loss, idempotent."""

from __future__ import annotations

import json

import sqlalchemy as sa

from smartflow_streams.db.schema import upgrade_schema
from smartflow_streams.outbox.repository import OutboxRepository

# What GORM made for the notification outbox at a6c1e5d (service-level outbox) ...
UPSTREAM_OUTBOX = """CREATE TABLE {q}notification_outbox_messages{q} (
  {q}id{q} {pk},
  {q}biz_type{q} varchar(64) NOT NULL,
  {q}service_name{q} varchar(64) NOT NULL DEFAULT '',
  {q}topic{q} varchar(128) NOT NULL,
  {q}message_key{q} varchar(128) NOT NULL,
  {q}payload{q} {longtext} NOT NULL,
  {q}status{q} varchar(32) NOT NULL,
  {q}retry_count{q} int NOT NULL DEFAULT 0,
  {q}max_retry{q} int NOT NULL DEFAULT 20,
  {q}next_retry_at{q} {dt} NULL,
  {q}last_error{q} text,
  {q}published_at{q} {dt} NULL,
  {q}consumed_at{q} {dt} NULL,
  {q}created_at{q} {dt} NULL,
  {q}updated_at{q} {dt} NULL{extra})"""
# ... and the original single-table outbox of 7603a75, before service_name existed.
LEGACY_AGENT_OUTBOX = """CREATE TABLE {q}agent_outbox_messages{q} (
  {q}id{q} {pk},
  {q}biz_type{q} varchar(64) NOT NULL,
  {q}topic{q} varchar(128) NOT NULL,
  {q}message_key{q} varchar(128) NOT NULL,
  {q}payload{q} {longtext} NOT NULL,
  {q}status{q} varchar(32) NOT NULL,
  {q}retry_count{q} int NOT NULL DEFAULT 0,
  {q}max_retry{q} int NOT NULL DEFAULT 20,
  {q}next_retry_at{q} {dt} NULL,
  {q}last_error{q} text,
  {q}published_at{q} {dt} NULL,
  {q}consumed_at{q} {dt} NULL,
  {q}created_at{q} {dt} NULL,
  {q}updated_at{q} {dt} NULL{extra_legacy})"""
UPSTREAM_CHANNELS = """CREATE TABLE {q}user_notification_channels{q} (
  {q}id{q} {pk},
  {q}user_id{q} bigint NOT NULL,
  {q}channel{q} varchar(32) NOT NULL,
  {q}enabled{q} boolean NOT NULL DEFAULT true,
  {q}webhook_url{q} text,
  {q}auth_type{q} varchar(32) NOT NULL DEFAULT 'none',
  {q}bearer_token{q} text,
  {q}last_test_status{q} varchar(32),
  {q}last_test_error{q} text,
  {q}last_test_at{q} {dt} NULL,
  {q}created_at{q} {dt} NULL,
  {q}updated_at{q} {dt} NULL{extra_legacy})"""

SHELL = json.dumps({"event_id": "asp_1", "event_type": "notification.feishu.requested", "event_version": "1",
                    "aggregate_id": "asp_1", "payload": {"user_id": 7}}, separators=(",", ":"))


def ddl(kind: str) -> dict[str, str]:
    if kind == "sqlite":
        return {"q": '"', "pk": "integer PRIMARY KEY AUTOINCREMENT", "longtext": "text", "dt": "datetime",
                "extra": "", "extra_legacy": ""}
    return {"q": "`", "pk": "bigint AUTO_INCREMENT", "longtext": "longtext", "dt": "datetime(3)",
            "extra": ",\n  PRIMARY KEY (`id`),\n  INDEX `idx_outbox_status_next` (`status`,`next_retry_at`,`biz_type`),"
                     "\n  INDEX `idx_outbox_service_name` (`service_name`)",
            "extra_legacy": ",\n  PRIMARY KEY (`id`)"}


async def test_upgrade_in_place_keeps_rows_and_is_idempotent(db) -> None:
    params = ddl(db.kind)
    now = "2026-04-30 10:00:00"
    async with db.engine.begin() as conn:
        # start from a database the Go services made: drop what the fixture created and rebuild upstream's tables
        for name in ("notification_outbox_messages", "agent_outbox_messages", "user_notification_channels"):
            await conn.exec_driver_sql(f"DROP TABLE {name}")
        await conn.exec_driver_sql(UPSTREAM_OUTBOX.format(**params))
        await conn.exec_driver_sql(LEGACY_AGENT_OUTBOX.format(**params))
        await conn.exec_driver_sql(UPSTREAM_CHANNELS.format(**params))
        for i in range(3):
            await conn.execute(
                sa.text("INSERT INTO notification_outbox_messages (biz_type, service_name, topic, message_key, "
                        "payload, status, retry_count, max_retry, next_retry_at, created_at, updated_at) VALUES "
                        "('notification.feishu.requested','notification','smartflow.notification.outbox','7',"
                        ":p,'pending',0,20,:n,:n,:n)"), {"p": SHELL, "n": now})
        await conn.execute(
            sa.text("INSERT INTO agent_outbox_messages (biz_type, topic, message_key, payload, status, retry_count,"
                    " max_retry, next_retry_at, created_at, updated_at) VALUES ('chat.history.persist.requested',"
                    "'smartflow.agent.outbox','7','{}','pending',0,20,:n,:n,:n)"), {"n": now})
        await conn.execute(
            sa.text("INSERT INTO user_notification_channels (user_id, channel, enabled, webhook_url, auth_type) "
                    "VALUES (7, 'feishu_webhook', true, 'https://www.feishu.cn/flow/api/trigger-webhook/abc', 'none')"))

    changes = await upgrade_schema(db.engine)
    assert "added column notification_outbox_messages.claim_token" in changes
    assert "added column agent_outbox_messages.service_name" in changes
    assert "added column user_notification_channels.webhook_kind" in changes
    assert any(c.startswith("created index") and "agent_outbox_messages" in c for c in changes)
    index_changes = [c for c in changes if "notification_outbox_messages" in c and "index" in c]
    if db.kind == "mariadb":  # upstream's two indexes exist already; only our claim index is added
        assert index_changes == ["created index idx_outbox_claim on notification_outbox_messages"]
    assert await upgrade_schema(db.engine) == []  # idempotent

    async with db.engine.connect() as conn:
        n = (await conn.execute(sa.text("SELECT COUNT(*) FROM notification_outbox_messages"))).scalar()
        legacy = (await conn.execute(sa.text("SELECT service_name, status FROM agent_outbox_messages"))).one()
        channel = (await conn.execute(sa.text("SELECT webhook_url FROM user_notification_channels"))).scalar()
    assert n == 3 and tuple(legacy) == ("", "pending") and channel.endswith("/abc")

    repo = OutboxRepository.for_service("notification")  # the upgraded table works with the new code
    claim = await repo.claim_due(db.engine, limit=10, lease_seconds=30)
    assert len(claim.rows) == 3 and claim.rows[0].payload == SHELL
    async with db.engine.begin() as conn:
        assert await repo.mark_published(conn, [r.id for r in claim.rows], claim_token=claim.token) == 3


async def test_fresh_database_has_every_table(db) -> None:
    async with db.engine.connect() as conn:
        names = set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))
    expected = {"notification_records", "user_notification_channels", "active_schedule_triggers",
                "active_schedule_jobs", "active_schedule_previews", "outbox_relay_leases",
                "agent_outbox_messages", "token_store_outbox_messages", "active_scheduler_outbox_messages"}
    assert expected <= names
