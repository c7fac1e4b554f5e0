"""Dedupe keys and ids, byte-identical to upstream (docs/upstream.md#dedupe-keys, docs/upstream.md#id-formats) so Go
and Python rows dedupe against each other.

Key formats (window = 1800 s unless stated; "window start" = :func:`~smartflow_streams.contracts.gotime.window_start`,
rendered with Go ``time.RFC3339`` - no fraction - **in the timestamp's own zone**, e.g. ``+08:00`` or ``Z``):

* notification: ``<user_id>:<trim(trigger_type)>:<window start of requested_at>``; ``""`` when ``user_id <= 0`` or
  the trigger type is blank (upstream shared helper @abe3b49).
* due job: ``<user_id>:important_urgent_task:task_pool:<task_id>:<window start of urgency_threshold_at>``.
* trigger, ``important_urgent_task`` (any type except ``unfinished_feedback``):
  ``<user_id>:<trigger_type>:<target_type>:<target_id>:<window start of effective now>``.
* trigger, ``unfinished_feedback`` (no window):
  ``<user_id>:unfinished_feedback:<first non-blank trimmed of feedback_id, idempotency_key>`` or
  ``...:<target_type>:<target_id>``.

Time inputs: an aware datetime keeps its own zone; a naive one is taken in the configured zone. ``None`` (or
Go's zero instant) means "now in the configured zone" for the notification and trigger keys (Go replaces a zero
time by ``time.Now()``); the job key has no such fallback upstream and renders Go's zero time
``0001-01-01T00:00:00Z``.

Ids: trigger ``ast_<uuid4>``, preview ``asp_<uuid4>``, job ``asj_task_<user>_<task>``; conversation and session
ids are UUIDv5 (SHA-1) of the trimmed trigger id under ``uuid5(NAMESPACE_URL, "smartflow:active_schedule:conversation")``
/ ``...:session`` (Go ``uuid.NewSHA1`` gives the same bytes); a blank trigger id yields a random UUIDv4 like Go.
"""

from __future__ import annotations

import uuid
from datetime import datetime, tzinfo
from enum import Enum

from smartflow_streams.contracts.gojson import go_trim_space
from smartflow_streams.contracts.events import TargetType, TriggerType
from smartflow_streams.contracts.gotime import (
    DEFAULT_WINDOW_SECONDS,
    GO_ZERO_TIME_TEXT,
    format_rfc3339_seconds,
    is_go_zero,
    now_in_zone,
    window_start,
)

CONVERSATION_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "smartflow:active_schedule:conversation")
SESSION_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "smartflow:active_schedule:session")


def _text(value: str | Enum) -> str:
    return str(value.value) if isinstance(value, Enum) else str(value)


def _window_text(at: datetime | None, window_seconds: int, zone: tzinfo | None) -> str:
    """RFC 3339 window start; ``None``/zero time means now (Go: ``if at.IsZero() { at = time.Now() }``)."""
    anchor = now_in_zone(zone) if at is None or is_go_zero(at) else at
    return format_rfc3339_seconds(window_start(anchor, window_seconds, zone=zone))


def notification_dedupe_key(
    user_id: int,
    trigger_type: str | Enum,
    requested_at: datetime | None,
    *,
    window_seconds: int = DEFAULT_WINDOW_SECONDS,
    zone: tzinfo | None = None,
) -> str:
    """``<user_id>:<trigger_type>:<window start>``; ``""`` if ``user_id <= 0`` or the trigger type is blank."""
    kind = go_trim_space(_text(trigger_type))
    if user_id <= 0 or kind == "":
        return ""
    window = window_seconds if window_seconds > 0 else DEFAULT_WINDOW_SECONDS
    return f"{user_id}:{kind}:{_window_text(requested_at, window, zone)}"


def job_dedupe_key(user_id: int, task_id: int, urgency_threshold_at: datetime | None, *, zone: tzinfo | None = None) -> str:
    """``<user>:important_urgent_task:task_pool:<task_id>:<window start of urgency_threshold_at>``."""
    if urgency_threshold_at is None or is_go_zero(urgency_threshold_at):
        window = GO_ZERO_TIME_TEXT
    else:
        window = format_rfc3339_seconds(window_start(urgency_threshold_at, DEFAULT_WINDOW_SECONDS, zone=zone))
    return f"{user_id}:{TriggerType.IMPORTANT_URGENT_TASK.value}:{TargetType.TASK_POOL.value}:{task_id}:{window}"


def _first_non_blank(*values: str) -> str:
    for value in values:
        trimmed = go_trim_space(value)
        if trimmed:
            return trimmed
    return ""


def trigger_dedupe_key(
    user_id: int,
    trigger_type: str | Enum,
    target_type: str | Enum,
    target_id: int,
    effective_now: datetime | None,
    feedback_id: str = "",
    idempotency_key: str = "",
    *,
    zone: tzinfo | None = None,
) -> str:
    """Go ``BuildTriggerDedupeKey``: windowed for every type except ``unfinished_feedback`` (no window).

    ``effective_now`` is ``mock_now`` when set, else ``requested_at``. Strings other than the feedback fields are
    used untrimmed, as upstream does.
    """
    kind = _text(trigger_type)
    target = _text(target_type)
    if kind == TriggerType.UNFINISHED_FEEDBACK.value:
        tail = _first_non_blank(feedback_id, idempotency_key, f"{target}:{target_id}")
        return f"{user_id}:{kind}:{tail}"
    window = _window_text(effective_now, DEFAULT_WINDOW_SECONDS, zone)
    return f"{user_id}:{kind}:{target}:{target_id}:{window}"


def conversation_id_for_trigger(trigger_id: str) -> str:
    """Deterministic assistant conversation id of a trigger (UUIDv5); random UUIDv4 for a blank id."""
    normalized = go_trim_space(trigger_id)
    if not normalized:
        return str(uuid.uuid4())
    return str(uuid.uuid5(CONVERSATION_NAMESPACE, normalized))


def session_id_for_trigger(trigger_id: str) -> str:
    """Deterministic active-schedule session id of a trigger (UUIDv5); random UUIDv4 for a blank id."""
    normalized = go_trim_space(trigger_id)
    if not normalized:
        return str(uuid.uuid4())
    return str(uuid.uuid5(SESSION_NAMESPACE, normalized))


def new_trigger_id() -> str:
    return f"ast_{uuid.uuid4()}"


def new_preview_id() -> str:
    return f"asp_{uuid.uuid4()}"


def job_id(user_id: int, task_id: int) -> str:
    """Due-job primary key, one per task: ``asj_task_<user_id>_<task_id>``."""
    return f"asj_task_{user_id}_{task_id}"


__all__ = [
    "CONVERSATION_NAMESPACE",
    "SESSION_NAMESPACE",
    "conversation_id_for_trigger",
    "job_dedupe_key",
    "job_id",
    "new_preview_id",
    "new_trigger_id",
    "notification_dedupe_key",
    "session_id_for_trigger",
    "trigger_dedupe_key",
]
