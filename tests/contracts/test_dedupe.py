"""Dedupe keys and ids must be byte-identical to the Go builders (docs/upstream.md#dedupe-keys)."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

import config
from smartflow_streams.contracts import (
    TargetType,
    TriggerType,
    conversation_id_for_trigger,
    job_dedupe_key,
    job_id,
    new_preview_id,
    new_trigger_id,
    notification_dedupe_key,
    session_id_for_trigger,
    trigger_dedupe_key,
)
from smartflow_streams.contracts.gotime import GO_ZERO_TIME, parse_go_time

SHANGHAI = ZoneInfo("Asia/Shanghai")
TRIGGER_ID = "ast_6f1c2a9e-8f0b-4c1d-9a7e-3b5d2c1e0f4a"
IUT = "important_urgent_task"


@pytest.fixture(autouse=True)
def _shanghai_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "_settings", config.load_settings(time_zone="Asia/Shanghai"))


def _t(text: str) -> datetime:
    parsed = parse_go_time(text)
    assert parsed is not None
    return parsed


# -- notification key ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested_at", "expected"),
    [
        ("2026-04-30T10:12:13+08:00", "42:important_urgent_task:2026-04-30T10:00:00+08:00"),
        ("2026-04-30T10:12:13.123456789+08:00", "42:important_urgent_task:2026-04-30T10:00:00+08:00"),
        ("2026-04-30T10:00:00+08:00", "42:important_urgent_task:2026-04-30T10:00:00+08:00"),
        ("2026-04-30T10:29:59.999+08:00", "42:important_urgent_task:2026-04-30T10:00:00+08:00"),
        ("2026-04-30T10:30:00+08:00", "42:important_urgent_task:2026-04-30T10:30:00+08:00"),
        ("2026-04-30T02:12:13Z", "42:important_urgent_task:2026-04-30T02:00:00Z"),
        ("2026-04-30T02:12:13.5Z", "42:important_urgent_task:2026-04-30T02:00:00Z"),
        ("2026-04-30T10:12:13+05:45", "42:important_urgent_task:2026-04-30T09:45:00+05:45"),
        ("2026-04-30T23:45:00-03:00", "42:important_urgent_task:2026-04-30T23:30:00-03:00"),
    ],
)
def test_notification_dedupe_key(requested_at: str, expected: str) -> None:
    assert notification_dedupe_key(42, IUT, _t(requested_at)) == expected


def test_notification_key_same_instant_different_zone_differs_textually() -> None:
    local = notification_dedupe_key(42, IUT, datetime(2026, 4, 30, 10, 12, 13, tzinfo=SHANGHAI))
    utc = notification_dedupe_key(42, IUT, datetime(2026, 4, 30, 2, 12, 13, tzinfo=timezone.utc))
    assert local == "42:important_urgent_task:2026-04-30T10:00:00+08:00"
    assert utc == "42:important_urgent_task:2026-04-30T02:00:00Z"


def test_notification_key_naive_is_configured_zone() -> None:
    assert notification_dedupe_key(42, IUT, datetime(2026, 4, 30, 10, 12, 13)) == (
        "42:important_urgent_task:2026-04-30T10:00:00+08:00"
    )


def test_notification_key_follows_configured_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "_settings", config.load_settings(time_zone="UTC"))
    assert notification_dedupe_key(42, IUT, datetime(2026, 4, 30, 10, 12, 13)) == (
        "42:important_urgent_task:2026-04-30T10:00:00Z"
    )


@pytest.mark.parametrize("requested_at", [None, GO_ZERO_TIME])
def test_notification_key_without_time_uses_now(requested_at: datetime | None) -> None:
    def expected(now: datetime) -> str:
        start = now.replace(minute=0 if now.minute < 30 else 30, second=0, microsecond=0)
        return "42:important_urgent_task:" + start.strftime("%Y-%m-%dT%H:%M:%S") + "+08:00"

    before = expected(datetime.now(SHANGHAI))
    key = notification_dedupe_key(42, IUT, requested_at)
    after = expected(datetime.now(SHANGHAI))
    assert key in {before, after}


def test_notification_key_trims_type_accepts_enum_and_window() -> None:
    at = _t("2026-04-30T10:12:13+08:00")
    assert notification_dedupe_key(42, "  important_urgent_task ", at) == "42:important_urgent_task:2026-04-30T10:00:00+08:00"
    assert notification_dedupe_key(42, TriggerType.UNFINISHED_FEEDBACK, at) == "42:unfinished_feedback:2026-04-30T10:00:00+08:00"
    assert notification_dedupe_key(42, IUT, at, window_seconds=600) == "42:important_urgent_task:2026-04-30T10:10:00+08:00"
    assert notification_dedupe_key(42, IUT, at, window_seconds=0) == "42:important_urgent_task:2026-04-30T10:00:00+08:00"


@pytest.mark.parametrize(("user_id", "trigger_type"), [(0, IUT), (-1, IUT), (42, ""), (42, "   ")])
def test_notification_key_empty_for_invalid_input(user_id: int, trigger_type: str) -> None:
    assert notification_dedupe_key(user_id, trigger_type, _t("2026-04-30T10:12:13+08:00")) == ""


# -- job key -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("threshold", "expected"),
    [
        ("2026-04-30T10:05:00+08:00", "42:important_urgent_task:task_pool:7:2026-04-30T10:00:00+08:00"),
        ("2026-04-30T10:29:59.999+08:00", "42:important_urgent_task:task_pool:7:2026-04-30T10:00:00+08:00"),
        ("2026-04-30T10:30:00+08:00", "42:important_urgent_task:task_pool:7:2026-04-30T10:30:00+08:00"),
        ("2026-04-30T02:05:00Z", "42:important_urgent_task:task_pool:7:2026-04-30T02:00:00Z"),
    ],
)
def test_job_dedupe_key(threshold: str, expected: str) -> None:
    assert job_dedupe_key(42, 7, _t(threshold)) == expected


def test_job_key_naive_and_zero() -> None:
    assert job_dedupe_key(42, 7, datetime(2026, 4, 30, 10, 5)) == (
        "42:important_urgent_task:task_pool:7:2026-04-30T10:00:00+08:00"
    )
    # Go has no zero-time fallback here: Truncate(zero) renders the zero time.
    assert job_dedupe_key(42, 7, None) == "42:important_urgent_task:task_pool:7:0001-01-01T00:00:00Z"


# -- trigger key ---------------------------------------------------------------------------------------------------


def test_trigger_key_windowed_matches_job_key() -> None:
    at = _t("2026-04-30T10:12:13.5+08:00")
    key = trigger_dedupe_key(42, IUT, "task_pool", 7, at)
    assert key == "42:important_urgent_task:task_pool:7:2026-04-30T10:00:00+08:00"
    assert key == job_dedupe_key(42, 7, at)
    assert trigger_dedupe_key(42, TriggerType.IMPORTANT_URGENT_TASK, TargetType.TASK_POOL, 7, at) == key


def test_trigger_key_windowed_uses_given_zone_and_boundaries() -> None:
    assert trigger_dedupe_key(42, IUT, "schedule_event", 3, _t("2026-04-30T10:29:59.999999+08:00")) == (
        "42:important_urgent_task:schedule_event:3:2026-04-30T10:00:00+08:00"
    )
    assert trigger_dedupe_key(42, IUT, "schedule_event", 3, _t("2026-04-30T10:30:00+08:00")) == (
        "42:important_urgent_task:schedule_event:3:2026-04-30T10:30:00+08:00"
    )
    assert trigger_dedupe_key(42, IUT, "task_pool", 7, _t("2026-04-30T02:12:13Z")) == (
        "42:important_urgent_task:task_pool:7:2026-04-30T02:00:00Z"
    )


def test_trigger_key_windowed_without_time_uses_now() -> None:
    key = trigger_dedupe_key(42, IUT, "task_pool", 7, None)
    assert re.fullmatch(r"42:important_urgent_task:task_pool:7:\d{4}-\d{2}-\d{2}T\d{2}:(00|30):00\+08:00", key)


@pytest.mark.parametrize(
    ("feedback_id", "idempotency_key", "expected"),
    [
        ("fb_9", "idem", "7:unfinished_feedback:fb_9"),
        ("  fb_9 ", "", "7:unfinished_feedback:fb_9"),
        ("", "idem-1", "7:unfinished_feedback:idem-1"),
        ("   ", " idem-1 ", "7:unfinished_feedback:idem-1"),
        ("", "", "7:unfinished_feedback:schedule_event:0"),
    ],
)
def test_trigger_key_unfinished_feedback_has_no_window(feedback_id: str, idempotency_key: str, expected: str) -> None:
    for at in (_t("2026-04-30T10:12:13+08:00"), _t("2026-05-02T23:59:00Z"), None):
        assert trigger_dedupe_key(7, "unfinished_feedback", "schedule_event", 0, at, feedback_id, idempotency_key) == expected


# -- ids -----------------------------------------------------------------------------------------------------------


def test_conversation_and_session_ids_are_nested_uuid5() -> None:
    conversation_ns = uuid.uuid5(uuid.NAMESPACE_URL, "smartflow:active_schedule:conversation")
    session_ns = uuid.uuid5(uuid.NAMESPACE_URL, "smartflow:active_schedule:session")
    assert conversation_id_for_trigger(TRIGGER_ID) == str(uuid.uuid5(conversation_ns, TRIGGER_ID))
    assert session_id_for_trigger(TRIGGER_ID) == str(uuid.uuid5(session_ns, TRIGGER_ID))
    # Pinned values (regression guard; computed with Python's uuid5 = Go's uuid.NewSHA1).
    assert conversation_id_for_trigger(TRIGGER_ID) == "4fdc1e5a-e521-57e3-92b5-63b299f4bc7e"
    assert session_id_for_trigger(TRIGGER_ID) == "cdd8dc4f-d74c-5034-95d7-db4ea3f7b5df"
    assert conversation_id_for_trigger(f"  {TRIGGER_ID}\n") == conversation_id_for_trigger(TRIGGER_ID)
    assert uuid.UUID(conversation_id_for_trigger(TRIGGER_ID)).version == 5


def test_blank_trigger_id_gets_random_uuid4() -> None:
    first, second = conversation_id_for_trigger("  "), conversation_id_for_trigger("")
    assert first != second
    assert uuid.UUID(first).version == 4
    assert uuid.UUID(session_id_for_trigger("")).version == 4


def test_generated_ids() -> None:
    trigger_id, preview_id = new_trigger_id(), new_preview_id()
    assert re.fullmatch(r"ast_[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", trigger_id)
    assert re.fullmatch(r"asp_[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", preview_id)
    assert new_trigger_id() != trigger_id
    assert job_id(42, 7) == "asj_task_42_7"


def test_window_edges_across_midnight_and_day_boundary() -> None:
    at = datetime(2026, 4, 30, 23, 59, 59, 999999, tzinfo=SHANGHAI)
    assert notification_dedupe_key(1, IUT, at) == "1:important_urgent_task:2026-04-30T23:30:00+08:00"
    assert notification_dedupe_key(1, IUT, at + timedelta(microseconds=1)) == "1:important_urgent_task:2026-05-01T00:00:00+08:00"
