"""Table definitions (SQLAlchemy Core), schema-compatible with the upstream Go/GORM tables.

Invariants:
- Column names, types and status strings are upstream's (docs/upstream.md#outbox-tables,
  docs/upstream.md#active-scheduler-tables, docs/upstream.md#notification-records) so Go and Python processes can
  share one database. Columns we add are nullable or defaulted, so rows written by the Go services still work:
  outbox ``claim_token`` (relay lease owner; the lease expiry reuses ``next_retry_at``), channel ``webhook_kind``,
  ``sign_secret``, ``msg_type``, record ``send_token``. ``active_schedule_previews`` is the Go table exactly (key
  ``preview_id``). Go NOT NULL columns are NOT NULL here too; those without a Go default that the project must
  always name (previews ``base_version``/``expires_at``/``generated_at``, channel ``webhook_url``/``bearer_token``)
  have no default here either, so a fresh project database rejects the incomplete inserts the Go database would.
- DB datetimes are naive wall-clock times in the configured zone (Go DSN ``loc=Local``, ``Asia/Shanghai``),
  DATETIME(3) on MySQL like GORM.
- Index names follow upstream on MySQL; SQLite index names are global, so there they get the table name as a
  prefix (see :mod:`smartflow_streams.db.schema`).
"""

from __future__ import annotations

import enum
import functools

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

metadata = sa.MetaData()

DateTime = sa.DateTime().with_variant(mysql.DATETIME(fsp=3), "mysql", "mariadb")
LongText = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
JSONText = sa.Text().with_variant(mysql.JSON(), "mysql", "mariadb")


def json_text(value: object) -> str:
    """JSON text for a ``JSONText`` column: a string is taken as already-encoded JSON."""
    import json

    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def json_param(value: object) -> sa.ColumnElement:
    """Bind JSON to a ``JSONText`` column as text: MySQL's ``JSON`` type would otherwise encode a string again."""
    return sa.type_coerce(json_text(value), sa.Text())


def json_bind(name: str) -> sa.BindParameter:
    """:func:`json_param` for executemany: a named Text parameter whose values are :func:`json_text` strings."""
    return sa.bindparam(name, type_=sa.Text())


class OutboxStatus(str, enum.Enum):
    PENDING = "pending"
    PUBLISHED = "published"
    CONSUMED = "consumed"
    DEAD = "dead"


TERMINAL_OUTBOX = (OutboxStatus.CONSUMED.value, OutboxStatus.DEAD.value)


# (index name, columns, unique) per table; schema.py creates them.
OUTBOX_INDEXES: list[tuple[str, tuple[str, ...], bool]] = [
    ("idx_outbox_status_next", ("status", "next_retry_at", "biz_type"), False),
    ("idx_outbox_service_name", ("service_name",), False),
    # Ours: serves the claim's ORDER BY next_retry_at, id straight from the index (InnoDB and SQLite append the
    # primary key to every secondary index); upstream's index has biz_type in between, which forces a sort of the
    # whole due set on every claim (47 ms per 500-row claim over a 10k backlog on MariaDB).
    ("idx_outbox_claim", ("status", "next_retry_at"), False),
]


def _outbox_columns() -> list[sa.Column]:
    return [
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("biz_type", sa.String(64), nullable=False),
        sa.Column("service_name", sa.String(64), nullable=False, server_default=""),
        sa.Column("topic", sa.String(128), nullable=False),
        sa.Column("message_key", sa.String(128), nullable=False),
        sa.Column("payload", LongText, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("retry_count", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("max_retry", sa.BigInteger, nullable=False, server_default="20"),
        sa.Column("next_retry_at", DateTime, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("published_at", DateTime, nullable=True),
        sa.Column("consumed_at", DateTime, nullable=True),
        sa.Column("created_at", DateTime, nullable=True),
        sa.Column("updated_at", DateTime, nullable=True),
        # Added by smartflow-streams: the relay's claim. NULL = unclaimed. While claimed, next_retry_at holds the
        # lease expiry, so the upstream due-scan index (status, next_retry_at) also serves lease recovery.
        sa.Column("claim_token", sa.String(64), nullable=True),
        # Added by smartflow-streams: W3C trace context (JSON carrier, <= 512 chars) of the event whose handler wrote
        # the row, so the relay's publish joins that trace (smartflow_streams.core.tracing). NULL = none (Go rows).
        sa.Column("trace_context", sa.String(512), nullable=True),
    ]


@functools.lru_cache(maxsize=None)
def outbox_table(name: str) -> sa.Table:
    """The outbox table with the given physical name (all services share one schema)."""
    existing = metadata.tables.get(name)
    if existing is not None:
        return existing
    return sa.Table(name, metadata, *_outbox_columns())


notification_records = sa.Table(
    "notification_records",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("channel", sa.String(32), nullable=False),
    sa.Column("user_id", sa.BigInteger, nullable=False),
    sa.Column("trigger_id", sa.String(64), nullable=False),
    sa.Column("preview_id", sa.String(64), nullable=False),
    sa.Column("trigger_type", sa.String(64), nullable=False),
    sa.Column("target_type", sa.String(64), nullable=False),
    sa.Column("target_id", sa.BigInteger, nullable=False),
    sa.Column("dedupe_key", sa.String(191), nullable=False),
    sa.Column("target_url", sa.String(255), nullable=False),
    sa.Column("summary_text", sa.Text, nullable=True),
    sa.Column("fallback_text", sa.Text, nullable=True),
    sa.Column("fallback_used", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("status", sa.String(32), nullable=False, server_default="pending"),
    sa.Column("attempt_count", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("max_attempts", sa.BigInteger, nullable=False, server_default="5"),
    sa.Column("next_retry_at", DateTime, nullable=True),
    sa.Column("last_error_code", sa.String(64), nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("provider_message_id", sa.String(128), nullable=True),
    sa.Column("provider_request_json", JSONText, nullable=True),
    sa.Column("provider_response_json", JSONText, nullable=True),
    sa.Column("sent_at", DateTime, nullable=True),
    sa.Column("trace_id", sa.String(128), nullable=True),
    sa.Column("created_at", DateTime, nullable=True),
    sa.Column("updated_at", DateTime, nullable=True),
    # Added: the sender's lease token; a late write from an expired sender carries an old token and no-ops.
    sa.Column("send_token", sa.String(64), nullable=True),
)

NOTIFICATION_RECORD_INDEXES = [
    ("uk_notification_dedupe", ("channel", "dedupe_key"), True),
    ("idx_notification_user_created", ("user_id", "created_at"), False),
    ("idx_notification_status_retry", ("status", "next_retry_at"), False),
    ("idx_notification_records_trigger_id", ("trigger_id",), False),
    ("idx_notification_records_preview_id", ("preview_id",), False),
]

user_notification_channels = sa.Table(
    "user_notification_channels",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("user_id", sa.BigInteger, nullable=False),
    sa.Column("channel", sa.String(32), nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    # NOT NULL without a server default, as upstream; bearer_token gets ``""`` client-side when an insert leaves it
    # out (what GORM writes for an empty string), so no insert of ours can trip the Go table's constraint.
    sa.Column("webhook_url", sa.Text, nullable=False),
    sa.Column("auth_type", sa.String(32), nullable=False, server_default="none"),
    sa.Column("bearer_token", sa.Text, nullable=False, default=""),
    sa.Column("last_test_status", sa.String(32), nullable=True),
    sa.Column("last_test_error", sa.Text, nullable=True),
    sa.Column("last_test_at", DateTime, nullable=True),
    sa.Column("created_at", DateTime, nullable=True),
    sa.Column("updated_at", DateTime, nullable=True),
    # Added: which webhook protocol (flow = upstream Feishu Flow trigger, bot = custom bot) and its options.
    sa.Column("webhook_kind", sa.String(16), nullable=True),
    sa.Column("sign_secret", sa.Text, nullable=True),
    sa.Column("msg_type", sa.String(16), nullable=True),
)

CHANNEL_INDEXES = [
    ("uk_user_notification_channel", ("user_id", "channel"), True),
    ("idx_user_notification_channels_user_id", ("user_id",), False),
]

active_schedule_triggers = sa.Table(
    "active_schedule_triggers",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.BigInteger, nullable=False),
    sa.Column("trigger_type", sa.String(64), nullable=False),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("target_type", sa.String(64), nullable=False),
    sa.Column("target_id", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("feedback_id", sa.String(128), nullable=True),
    sa.Column("job_id", sa.String(64), nullable=True),
    sa.Column("idempotency_key", sa.String(191), nullable=True),
    sa.Column("dedupe_key", sa.String(191), nullable=True),
    sa.Column("status", sa.String(32), nullable=False, server_default="pending"),
    sa.Column("mock_now", DateTime, nullable=True),
    sa.Column("is_mock_time", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("requested_at", DateTime, nullable=False),
    sa.Column("payload_json", JSONText, nullable=True),
    sa.Column("preview_id", sa.String(64), nullable=True),
    sa.Column("last_error_code", sa.String(64), nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("processed_at", DateTime, nullable=True),
    sa.Column("completed_at", DateTime, nullable=True),
    sa.Column("trace_id", sa.String(64), nullable=True),
    sa.Column("created_at", DateTime, nullable=True),
    sa.Column("updated_at", DateTime, nullable=True),
    sa.Column("deleted_at", DateTime, nullable=True),
)

TRIGGER_INDEXES = [
    ("idx_active_triggers_user_created", ("user_id", "created_at"), False),
    ("idx_active_triggers_target", ("target_type", "target_id"), False),
    ("idx_active_triggers_feedback", ("feedback_id",), False),
    ("idx_active_triggers_job", ("job_id",), False),
    ("idx_active_triggers_idempotency", ("idempotency_key",), False),
    ("idx_active_triggers_dedupe", ("dedupe_key", "trigger_type"), False),
    ("idx_active_triggers_status_updated", ("status", "updated_at"), False),
    ("idx_active_triggers_preview", ("preview_id",), False),
    ("idx_active_triggers_trace", ("trace_id",), False),
    ("idx_active_schedule_triggers_deleted_at", ("deleted_at",), False),
]

active_schedule_jobs = sa.Table(
    "active_schedule_jobs",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.BigInteger, nullable=False),
    sa.Column("task_id", sa.BigInteger, nullable=False),
    sa.Column("trigger_type", sa.String(64), nullable=False, server_default="important_urgent_task"),
    sa.Column("status", sa.String(32), nullable=False, server_default="pending"),
    sa.Column("trigger_at", DateTime, nullable=False),
    sa.Column("dedupe_key", sa.String(191), nullable=True),
    sa.Column("last_trigger_id", sa.String(64), nullable=True),
    sa.Column("last_error_code", sa.String(64), nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("last_scanned_at", DateTime, nullable=True),
    sa.Column("trace_id", sa.String(64), nullable=True),
    sa.Column("created_at", DateTime, nullable=True),
    sa.Column("updated_at", DateTime, nullable=True),
    sa.Column("deleted_at", DateTime, nullable=True),
)

JOB_INDEXES = [
    ("idx_active_jobs_user_status_trigger", ("user_id", "status", "trigger_at"), False),
    ("idx_active_jobs_task_status", ("user_id", "task_id", "status"), False),
    ("idx_active_jobs_dedupe", ("dedupe_key",), False),
    ("idx_active_jobs_last_trigger", ("last_trigger_id",), False),
    ("idx_active_jobs_trace_id", ("trace_id",), False),
    ("idx_active_schedule_jobs_deleted_at", ("deleted_at",), False),
]

active_schedule_previews = sa.Table(
    "active_schedule_previews",
    metadata,
    # Upstream's table column for column (key ``preview_id``, ``asp_<uuid4>``); nothing of ours is added here.
    # ``base_version``, ``expires_at`` and ``generated_at`` are NOT NULL without a default, as upstream: every
    # insert names them (see :mod:`smartflow_streams.scheduler.workflow`).
    sa.Column("preview_id", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.BigInteger, nullable=False),
    sa.Column("trigger_id", sa.String(64), nullable=False),
    sa.Column("trigger_type", sa.String(64), nullable=False),
    sa.Column("target_type", sa.String(64), nullable=False),
    sa.Column("target_id", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(32), nullable=False, server_default="pending"),
    sa.Column("selected_candidate_id", sa.String(64), nullable=True),
    sa.Column("candidate_count", sa.BigInteger, nullable=False, server_default="0"),
    *[sa.Column(name, JSONText, nullable=True) for name in (
        "selected_candidate_json", "candidates_json", "decision_json", "metrics_json", "issues_json",
        "context_summary_json", "before_summary_json", "preview_changes_json", "after_summary_json", "risk_json")],
    sa.Column("explanation_text", sa.Text, nullable=True),
    sa.Column("notification_summary", sa.Text, nullable=True),
    sa.Column("base_version", sa.String(128), nullable=False),
    sa.Column("expires_at", DateTime, nullable=False),
    sa.Column("generated_at", DateTime, nullable=False),
    sa.Column("apply_id", sa.String(64), nullable=True),
    sa.Column("apply_status", sa.String(32), nullable=False, server_default="none"),
    sa.Column("apply_candidate_id", sa.String(64), nullable=True),
    sa.Column("apply_idempotency_key", sa.String(191), nullable=True),
    sa.Column("apply_request_hash", sa.String(128), nullable=True),
    sa.Column("applied_changes_json", JSONText, nullable=True),
    sa.Column("applied_event_ids_json", JSONText, nullable=True),
    sa.Column("apply_error", sa.Text, nullable=True),
    sa.Column("applied_at", DateTime, nullable=True),
    sa.Column("trace_id", sa.String(64), nullable=True),
    sa.Column("created_at", DateTime, nullable=True),
    sa.Column("updated_at", DateTime, nullable=True),
    sa.Column("deleted_at", DateTime, nullable=True),
)

PREVIEW_INDEXES = [
    ("uk_active_previews_apply_idempotency", ("preview_id", "apply_idempotency_key"), True),
    ("idx_active_previews_user_created_at", ("user_id", "created_at"), False),
    ("idx_active_previews_trigger_id", ("trigger_id",), False),
    ("idx_active_previews_expires_at", ("expires_at",), False),
    ("idx_active_previews_apply_id", ("apply_id",), False),
    ("idx_active_previews_trace_id", ("trace_id",), False),
    ("idx_active_schedule_previews_deleted_at", ("deleted_at",), False),
]

# Our own: leader lease per outbox table (relay exclusive mode) and the admin audit trail.
outbox_relay_leases = sa.Table(
    "outbox_relay_leases",
    metadata,
    sa.Column("table_name", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(128), nullable=False),
    sa.Column("lease_until", DateTime, nullable=False),
    sa.Column("updated_at", DateTime, nullable=True),
)

outbox_admin_audit = sa.Table(
    "outbox_admin_audit",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("service_name", sa.String(64), nullable=False),
    sa.Column("outbox_id", sa.BigInteger, nullable=True),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("detail", sa.Text, nullable=True),
    sa.Column("created_at", DateTime, nullable=False),
)

# Ours: Kafka messages that cannot be tied to an outbox row (invalid JSON, no outbox_id). Upstream committed them
# silently (docs/upstream.md#malformed-messages-end-dead); here they end in a visible dead state with the reason and
# the raw bytes (first 64 KiB).
outbox_dead_messages = sa.Table(
    "outbox_dead_messages",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("service_name", sa.String(64), nullable=False),
    sa.Column("topic", sa.String(128), nullable=False),
    sa.Column("kafka_partition", sa.Integer, nullable=False),
    sa.Column("kafka_offset", sa.BigInteger, nullable=False),
    sa.Column("message_key", sa.String(128), nullable=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("raw_value", LongText, nullable=True),
    sa.Column("created_at", DateTime, nullable=False),
)

FIXED_TABLE_INDEXES: dict[str, list[tuple[str, tuple[str, ...], bool]]] = {
    "notification_records": NOTIFICATION_RECORD_INDEXES,
    "user_notification_channels": CHANNEL_INDEXES,
    "active_schedule_triggers": TRIGGER_INDEXES,
    "active_schedule_jobs": JOB_INDEXES,
    "active_schedule_previews": PREVIEW_INDEXES,
    "outbox_relay_leases": [],
    "outbox_admin_audit": [("idx_outbox_admin_audit_service", ("service_name", "created_at"), False)],
    "outbox_dead_messages": [("uk_outbox_dead_messages_position", ("topic", "kafka_partition", "kafka_offset"), True)],
}
