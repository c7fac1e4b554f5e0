"""Event contracts ``active_schedule.triggered`` and ``notification.feishu.requested``
(docs/upstream.md#event-contracts), version "1".

Both models are byte-compatible with the Go structs in ``backend/shared/events`` (@ba23ebd, @abe3b49):

* ``to_json()`` writes keys in Go struct order with Go's ``omitempty`` rules (see each class), compact,
  UTF-8, HTML-escaped like ``json.Marshal``. Times render as RFC3339Nano (``format_go_time``).
* ``parse()`` accepts what the Go services write: unknown keys ignored, omitted optional keys, ``null`` for
  non-pointer fields (zero value), nanosecond times with any offset (digits 7-9 are **truncated** to
  microseconds, so only times with <= 6 fractional digits round-trip byte-identically), zero times.
* Validation mirrors Go's ``Validate()`` rule for rule and in the same order; the first failing rule is
  reported as a :class:`~smartflow_streams.core.errors.ContractError` (decode errors such as a string ``user_id``
  are reported the same way). Enum-like fields are plain strings checked after Go ``TrimSpace``, exactly as Go
  does, so the original text round-trips.
* Missing fields take Go's zero values (``0``, ``""``, zero time) and are then caught by the rules, which
  keeps the error for ``{}`` identical to Go's (``trigger_id must not be empty``).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Self

from pydantic import PlainValidator, model_validator

from smartflow_streams.contracts.envelope import GoInt, GoWireModel, RawJSON
from smartflow_streams.contracts.gojson import GoObjectWriter, go_trim_space
from smartflow_streams.core.errors import ContractError
from smartflow_streams.contracts.gotime import GO_ZERO_TIME, format_go_time, is_go_zero, parse_go_time, to_zone

ACTIVE_SCHEDULE_TRIGGERED = "active_schedule.triggered"
ACTIVE_SCHEDULE_TRIGGERED_VERSION = "1"
NOTIFICATION_FEISHU_REQUESTED = "notification.feishu.requested"
NOTIFICATION_FEISHU_REQUESTED_VERSION = "1"

ASSISTANT_URL_PREFIX = "/assistant/"


class TriggerType(StrEnum):
    IMPORTANT_URGENT_TASK = "important_urgent_task"
    UNFINISHED_FEEDBACK = "unfinished_feedback"


class TriggerSource(StrEnum):
    WORKER_DUE_JOB = "worker_due_job"
    API_TRIGGER = "api_trigger"
    API_DRY_RUN = "api_dry_run"  # a valid source, but never allowed on active_schedule.triggered
    USER_FEEDBACK = "user_feedback"


class TargetType(StrEnum):
    TASK_POOL = "task_pool"
    SCHEDULE_EVENT = "schedule_event"
    TASK_ITEM = "task_item"


_TRIGGER_TYPES = frozenset(t.value for t in TriggerType)
_SOURCES = frozenset(s.value for s in TriggerSource)
_TARGET_TYPES = frozenset(t.value for t in TargetType)


# -- time fields -------------------------------------------------------------------------------------------------


def _coerce_time(value: Any) -> datetime:
    """Go ``time.Time``: RFC 3339 text or a datetime; the zero time is kept (rules reject it where required)."""
    if isinstance(value, datetime):
        return to_zone(value, None) if value.tzinfo is None or value.utcoffset() is None else value
    if isinstance(value, str):
        try:
            parsed = parse_go_time(value, keep_zero=True)
        except ContractError as exc:
            raise ValueError(str(exc)) from None
        return parsed if parsed is not None else GO_ZERO_TIME
    raise ValueError(f"expected an RFC 3339 time string, got {type(value).__name__}")


GoTime = Annotated[datetime, PlainValidator(_coerce_time)]
"""Go ``time.Time``; naive datetimes are taken in the configured zone; Go's zero time is :data:`GO_ZERO_TIME`."""


def _message_key(user_id: int) -> str:
    return str(user_id) if user_id > 0 else ""


# -- active_schedule.triggered ---------------------------------------------------------------------------------


class ActiveScheduleTriggeredPayload(GoWireModel):
    """``active_schedule.triggered`` v1 (Go ``events.ActiveScheduleTriggeredPayload``).

    JSON: ``trigger_id, user_id, trigger_type, source, target_type, target_id`` always; ``feedback_id``,
    ``idempotency_key``, ``dedupe_key`` omitted when empty; ``mock_now`` omitted when ``None`` (Go ``*time.Time``
    with omitempty; a JSON ``null`` parses to ``None``); ``is_mock_time`` and ``requested_at`` always;
    ``payload`` (raw JSON) omitted when absent, ``null`` kept as ``null``; ``trace_id`` omitted when empty.
    """

    _raw_fields: ClassVar[frozenset[str]] = frozenset({"payload"})
    event_type: ClassVar[str] = ACTIVE_SCHEDULE_TRIGGERED
    event_version: ClassVar[str] = ACTIVE_SCHEDULE_TRIGGERED_VERSION

    trigger_id: str = ""
    user_id: GoInt = 0
    trigger_type: str = ""
    source: str = ""
    target_type: str = ""
    target_id: GoInt = 0
    feedback_id: str = ""
    idempotency_key: str = ""
    dedupe_key: str = ""
    mock_now: GoTime | None = None
    is_mock_time: bool = False
    requested_at: GoTime = GO_ZERO_TIME
    payload: RawJSON = ""
    trace_id: str = ""

    @model_validator(mode="after")
    def _validate_contract(self) -> Self:
        """Go ``Validate()``, same rules, same order (@ba23ebd)."""
        trigger_type = go_trim_space(self.trigger_type)
        source = go_trim_space(self.source)
        if go_trim_space(self.trigger_id) == "":
            raise ValueError("trigger_id must not be empty")
        if self.user_id <= 0:
            raise ValueError("user_id must be greater than 0")
        if trigger_type not in _TRIGGER_TYPES:
            raise ValueError(f"trigger_type {self.trigger_type!r} is not allowed")
        if source not in _SOURCES:
            raise ValueError(f"source {self.source!r} is not allowed")
        if source == TriggerSource.API_DRY_RUN:
            raise ValueError("source api_dry_run must not publish active_schedule.triggered")
        if go_trim_space(self.target_type) not in _TARGET_TYPES:
            raise ValueError(f"target_type {self.target_type!r} is not allowed")
        if self.target_id <= 0 and trigger_type != TriggerType.UNFINISHED_FEEDBACK:
            raise ValueError("target_id must be greater than 0")
        if is_go_zero(self.requested_at):
            raise ValueError("requested_at must not be zero")
        if self.mock_now is not None and not self.is_mock_time:
            raise ValueError("mock_now requires is_mock_time=true")
        return self

    def message_key(self) -> str:
        """Kafka/outbox message key: ``user_id`` in decimal, ``""`` when <= 0."""
        return _message_key(self.user_id)

    def aggregate_id(self) -> str:
        """Aggregate id (and the shell ``event_id`` of the in-transaction enqueue helper): trimmed trigger id."""
        return go_trim_space(self.trigger_id)

    def effective_now(self) -> datetime:
        """Go ``EffectiveNow``: ``mock_now`` when set, else ``requested_at`` (the dedupe-window anchor)."""
        return self.mock_now if self.mock_now is not None else self.requested_at

    def to_json(self) -> str:
        out = GoObjectWriter()
        out.string("trigger_id", self.trigger_id)
        out.int("user_id", self.user_id)
        out.string("trigger_type", self.trigger_type)
        out.string("source", self.source)
        out.string("target_type", self.target_type)
        out.int("target_id", self.target_id)
        out.string("feedback_id", self.feedback_id, omitempty=True)
        out.string("idempotency_key", self.idempotency_key, omitempty=True)
        out.string("dedupe_key", self.dedupe_key, omitempty=True)
        if self.mock_now is not None:
            out.raw("mock_now", f'"{format_go_time(self.mock_now)}"')
        out.bool("is_mock_time", self.is_mock_time)
        out.raw("requested_at", f'"{format_go_time(self.requested_at)}"')
        out.raw("payload", self.payload, omitempty=True)
        out.string("trace_id", self.trace_id, omitempty=True)
        return out.text()


# -- notification.feishu.requested -----------------------------------------------------------------------------


class FeishuNotificationRequestedPayload(GoWireModel):
    """``notification.feishu.requested`` v1 (Go ``events.FeishuNotificationRequestedPayload``, @abe3b49).

    JSON: ``notification_id`` omitted when 0; ``user_id, trigger_id, preview_id, trigger_type, target_type,
    target_id, dedupe_key, target_url`` always; ``summary_text``, ``fallback_text``, ``trace_id`` omitted when
    empty; ``requested_at`` always. ``trigger_id``, ``trigger_type``, ``target_type`` and ``target_id`` are not
    validated (as upstream).
    """

    event_type: ClassVar[str] = NOTIFICATION_FEISHU_REQUESTED
    event_version: ClassVar[str] = NOTIFICATION_FEISHU_REQUESTED_VERSION

    notification_id: GoInt = 0
    user_id: GoInt = 0
    trigger_id: str = ""
    preview_id: str = ""
    trigger_type: str = ""
    target_type: str = ""
    target_id: GoInt = 0
    dedupe_key: str = ""
    target_url: str = ""
    summary_text: str = ""
    fallback_text: str = ""
    trace_id: str = ""
    requested_at: GoTime = GO_ZERO_TIME

    @model_validator(mode="after")
    def _validate_contract(self) -> Self:
        """Go ``Validate()``, same rules, same order (@a3eaa9b and later)."""
        if self.user_id <= 0:
            raise ValueError("user_id must be greater than 0")
        if go_trim_space(self.preview_id) == "":
            raise ValueError("preview_id must not be empty")
        if go_trim_space(self.dedupe_key) == "":
            raise ValueError("dedupe_key must not be empty")
        target_url = go_trim_space(self.target_url)
        if target_url == "":
            raise ValueError("target_url must not be empty")
        if not target_url.startswith(ASSISTANT_URL_PREFIX):
            raise ValueError("target_url must be a site-relative /assistant/{conversation_id} path")
        if "://" in target_url or target_url.startswith("//"):
            raise ValueError("target_url must not be an external link")
        if is_go_zero(self.requested_at):
            raise ValueError("requested_at must not be zero")
        return self

    def message_key(self) -> str:
        """Kafka/outbox message key: ``user_id`` in decimal, ``""`` when <= 0."""
        return _message_key(self.user_id)

    def aggregate_id(self) -> str:
        """Aggregate id and shell ``event_id``: the trimmed ``preview_id``."""
        return go_trim_space(self.preview_id)

    def to_json(self) -> str:
        out = GoObjectWriter()
        out.int("notification_id", self.notification_id, omitempty=True)
        out.int("user_id", self.user_id)
        out.string("trigger_id", self.trigger_id)
        out.string("preview_id", self.preview_id)
        out.string("trigger_type", self.trigger_type)
        out.string("target_type", self.target_type)
        out.int("target_id", self.target_id)
        out.string("dedupe_key", self.dedupe_key)
        out.string("target_url", self.target_url)
        out.string("summary_text", self.summary_text, omitempty=True)
        out.string("fallback_text", self.fallback_text, omitempty=True)
        out.string("trace_id", self.trace_id, omitempty=True)
        out.raw("requested_at", f'"{format_go_time(self.requested_at)}"')
        return out.text()


__all__ = [
    "ACTIVE_SCHEDULE_TRIGGERED",
    "ACTIVE_SCHEDULE_TRIGGERED_VERSION",
    "ASSISTANT_URL_PREFIX",
    "NOTIFICATION_FEISHU_REQUESTED",
    "NOTIFICATION_FEISHU_REQUESTED_VERSION",
    "ActiveScheduleTriggeredPayload",
    "FeishuNotificationRequestedPayload",
    "GoTime",
    "TargetType",
    "TriggerSource",
    "TriggerType",
]
