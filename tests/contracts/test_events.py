"""Event payload contracts: Go-written JSON round-trips byte for byte; every Go Validate rule rejects."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

import config
from smartflow_streams.contracts import (
    ACTIVE_SCHEDULE_TRIGGERED,
    NOTIFICATION_FEISHU_REQUESTED,
    ActiveScheduleTriggeredPayload,
    FeishuNotificationRequestedPayload,
    TargetType,
    TriggerSource,
    TriggerType,
)
from smartflow_streams.core.errors import ContractError

SHANGHAI = ZoneInfo("Asia/Shanghai")
TRIGGER_ID = "ast_6f1c2a9e-8f0b-4c1d-9a7e-3b5d2c1e0f4a"

# Due-job scanner event, as Go's json.Marshal writes it (microsecond requested_at so it round-trips exactly).
GO_TRIGGER_DUE_JOB = (
    '{"trigger_id":"ast_6f1c2a9e-8f0b-4c1d-9a7e-3b5d2c1e0f4a","user_id":42,"trigger_type":"important_urgent_task",'
    '"source":"worker_due_job","target_type":"task_pool","target_id":7,'
    '"dedupe_key":"42:important_urgent_task:task_pool:7:2026-04-30T10:00:00+08:00","is_mock_time":false,'
    '"requested_at":"2026-04-30T10:12:13.123456+08:00",'
    '"payload":{"job_id":"asj_task_42_7","urgency_threshold_at":"2026-04-30T10:05:00+08:00"},'
    '"trace_id":"trace_active_job_asj_task_42_7"}'
)

# Same event with Go's nanosecond clock reading.
GO_TRIGGER_NANOS = (
    '{"trigger_id":"ast_6f1c2a9e-8f0b-4c1d-9a7e-3b5d2c1e0f4a","user_id":42,"trigger_type":"important_urgent_task",'
    '"source":"worker_due_job","target_type":"task_pool","target_id":7,'
    '"dedupe_key":"42:important_urgent_task:task_pool:7:2026-04-30T10:00:00+08:00","is_mock_time":false,'
    '"requested_at":"2026-04-30T10:12:13.123456789+08:00",'
    '"payload":{"job_id":"asj_task_42_7","urgency_threshold_at":"2026-04-30T10:05:00+08:00"},'
    '"trace_id":"trace_active_job_asj_task_42_7"}'
)

# API trigger with a mock clock and an idempotency key; API payload defaults to {}.
GO_TRIGGER_API_MOCK = (
    '{"trigger_id":"ast_0b7e5d1c-3a2f-4e8d-9c6b-1a2b3c4d5e6f","user_id":42,"trigger_type":"important_urgent_task",'
    '"source":"api_trigger","target_type":"task_pool","target_id":9,"idempotency_key":"idem-1",'
    '"dedupe_key":"42:important_urgent_task:task_pool:9:2026-05-01T09:00:00+08:00",'
    '"mock_now":"2026-05-01T09:15:00+08:00","is_mock_time":true,"requested_at":"2026-04-30T22:01:02.5Z",'
    '"payload":{},"trace_id":"trace_api_trigger_42_1777557662500000000"}'
)

# User feedback without a target (allowed since @ba23ebd); no payload, no trace id.
GO_TRIGGER_FEEDBACK = (
    '{"trigger_id":"ast_11111111-2222-4333-8444-555555555555","user_id":7,"trigger_type":"unfinished_feedback",'
    '"source":"user_feedback","target_type":"schedule_event","target_id":0,"feedback_id":"fb_9",'
    '"dedupe_key":"7:unfinished_feedback:fb_9","is_mock_time":false,"requested_at":"2026-04-30T10:00:00+08:00"}'
)

# Go escapes <, > and & even inside the embedded payload; UTF-8 text stays raw.
GO_TRIGGER_ESCAPES = (
    '{"trigger_id":"ast_x","user_id":1,"trigger_type":"important_urgent_task","source":"api_trigger",'
    '"target_type":"task_item","target_id":3,"is_mock_time":false,"requested_at":"2026-04-30T02:00:00Z",'
    '"payload":{"note":"\\u003cb\\u003e任务 \\u0026 日程\\u003c/b\\u003e","n":1.50},"trace_id":"t\\u003c1\\u003e"}'
)

GO_NOTIFICATION = (
    '{"user_id":42,"trigger_id":"ast_6f1c2a9e-8f0b-4c1d-9a7e-3b5d2c1e0f4a",'
    '"preview_id":"asp_0f9e8d7c-6b5a-4493-8271-605f4e3d2c1b","trigger_type":"important_urgent_task",'
    '"target_type":"task_pool","target_id":7,"dedupe_key":"42:important_urgent_task:2026-04-30T10:00:00+08:00",'
    '"target_url":"/assistant/4fdc1e5a-e521-57e3-92b5-63b299f4bc7e","summary_text":"明天上午有两项紧急任务",'
    '"fallback_text":"明天上午有两项紧急任务，请查看：/assistant/4fdc1e5a-e521-57e3-92b5-63b299f4bc7e",'
    '"trace_id":"trace_active_job_asj_task_42_7","requested_at":"2026-04-30T10:12:20.5+08:00"}'
)

GO_NOTIFICATION_MINIMAL = (
    '{"notification_id":9,"user_id":42,"trigger_id":"","preview_id":"asp_1","trigger_type":"","target_type":"",'
    '"target_id":0,"dedupe_key":"k","target_url":"/assistant/c1","requested_at":"2026-04-30T02:12:20Z"}'
)


@pytest.fixture(autouse=True)
def _shanghai_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "_settings", config.load_settings(time_zone="Asia/Shanghai"))


def _trigger(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = json.loads(GO_TRIGGER_DUE_JOB)
    data.update(overrides)
    return data


def _notification(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = json.loads(GO_NOTIFICATION)
    data.update(overrides)
    return data


# -- active_schedule.triggered: Go samples -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", [GO_TRIGGER_DUE_JOB, GO_TRIGGER_API_MOCK, GO_TRIGGER_FEEDBACK, GO_TRIGGER_ESCAPES], ids=["job", "api", "feedback", "escapes"]
)
def test_trigger_go_samples_round_trip_byte_identical(text: str) -> None:
    payload = ActiveScheduleTriggeredPayload.parse(text)
    assert payload.to_json() == text
    assert ActiveScheduleTriggeredPayload.parse(payload.to_json_bytes()).to_json() == text


def test_trigger_fields_decoded() -> None:
    payload = ActiveScheduleTriggeredPayload.parse(GO_TRIGGER_DUE_JOB)
    assert payload.user_id == 42 and payload.target_id == 7
    assert payload.trigger_type == TriggerType.IMPORTANT_URGENT_TASK
    assert payload.source == TriggerSource.WORKER_DUE_JOB
    assert payload.target_type == TargetType.TASK_POOL
    assert payload.requested_at == datetime(2026, 4, 30, 10, 12, 13, 123456, tzinfo=SHANGHAI)
    assert payload.mock_now is None and payload.is_mock_time is False
    assert payload.decoded() == {"job_id": "asj_task_42_7", "urgency_threshold_at": "2026-04-30T10:05:00+08:00"}
    assert payload.message_key() == "42"
    assert payload.aggregate_id() == TRIGGER_ID
    assert payload.event_type == ACTIVE_SCHEDULE_TRIGGERED and payload.event_version == "1"


def test_trigger_nanoseconds_truncated_to_microseconds() -> None:
    payload = ActiveScheduleTriggeredPayload.parse(GO_TRIGGER_NANOS)
    assert payload.requested_at.microsecond == 123456
    assert payload.to_json() == GO_TRIGGER_NANOS.replace(".123456789+08:00", ".123456+08:00")


def test_trigger_effective_now_prefers_mock_now() -> None:
    api = ActiveScheduleTriggeredPayload.parse(GO_TRIGGER_API_MOCK)
    assert api.effective_now() == datetime(2026, 5, 1, 9, 15, tzinfo=SHANGHAI)
    assert api.requested_at == datetime(2026, 4, 30, 22, 1, 2, 500000, tzinfo=timezone.utc)
    job = ActiveScheduleTriggeredPayload.parse(GO_TRIGGER_DUE_JOB)
    assert job.effective_now() == job.requested_at


def test_trigger_accepts_unknown_fields_nulls_and_pretty_json() -> None:
    data = _trigger(extra_field={"x": 1}, mock_now=None, feedback_id=None, trace_id=None)
    pretty = json.dumps(data, indent=2, ensure_ascii=False)
    payload = ActiveScheduleTriggeredPayload.parse(pretty)
    expected = GO_TRIGGER_DUE_JOB.replace(',"trace_id":"trace_active_job_asj_task_42_7"', "")
    assert payload.to_json() == expected


def test_trigger_payload_null_kept_and_absent_omitted() -> None:
    with_null = ActiveScheduleTriggeredPayload.parse(GO_TRIGGER_FEEDBACK[:-1] + ',"payload":null}')
    assert with_null.payload == "null"
    assert with_null.to_json() == GO_TRIGGER_FEEDBACK[:-1] + ',"payload":null}'
    assert ActiveScheduleTriggeredPayload.parse(GO_TRIGGER_FEEDBACK).payload == ""


def test_trigger_parse_from_dict_and_bytes() -> None:
    from_dict = ActiveScheduleTriggeredPayload.parse(json.loads(GO_TRIGGER_API_MOCK))
    assert from_dict.to_json() == GO_TRIGGER_API_MOCK
    assert ActiveScheduleTriggeredPayload.parse(GO_TRIGGER_API_MOCK.encode()).to_json() == GO_TRIGGER_API_MOCK


def test_trigger_enum_values_are_checked_after_trim_and_kept_verbatim() -> None:
    text = GO_TRIGGER_DUE_JOB.replace('"worker_due_job"', '" worker_due_job "')
    payload = ActiveScheduleTriggeredPayload.parse(text)
    assert payload.to_json() == text


def test_trigger_built_in_python_serialises_like_go() -> None:
    payload = ActiveScheduleTriggeredPayload(
        trigger_id=TRIGGER_ID,
        user_id=42,
        trigger_type=TriggerType.IMPORTANT_URGENT_TASK,
        source=TriggerSource.API_TRIGGER,
        target_type=TargetType.TASK_POOL,
        target_id=9,
        mock_now=datetime(2026, 5, 1, 9, 15),  # naive: configured zone
        is_mock_time=True,
        requested_at=datetime(2026, 4, 30, 22, 1, 2, tzinfo=timezone.utc),
        payload={},
    )
    assert payload.to_json() == (
        '{"trigger_id":"ast_6f1c2a9e-8f0b-4c1d-9a7e-3b5d2c1e0f4a","user_id":42,"trigger_type":"important_urgent_task",'
        '"source":"api_trigger","target_type":"task_pool","target_id":9,"mock_now":"2026-05-01T09:15:00+08:00",'
        '"is_mock_time":true,"requested_at":"2026-04-30T22:01:02Z","payload":{}}'
    )


def test_trigger_is_frozen() -> None:
    payload = ActiveScheduleTriggeredPayload.parse(GO_TRIGGER_DUE_JOB)
    with pytest.raises(ValidationError):
        payload.user_id = 1  # type: ignore[misc]


def test_unfinished_feedback_may_have_target_id_zero() -> None:
    payload = ActiveScheduleTriggeredPayload.parse(_trigger(trigger_type="unfinished_feedback", target_id=0))
    assert payload.target_id == 0


# -- active_schedule.triggered: every Validate rule ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"trigger_id": ""}, "trigger_id"),
        ({"trigger_id": "   "}, "trigger_id"),
        ({"user_id": 0}, "user_id"),
        ({"user_id": -5}, "user_id"),
        ({"trigger_type": "other"}, "trigger_type"),
        ({"trigger_type": ""}, "trigger_type"),
        ({"source": "cron"}, "source"),
        ({"source": ""}, "source"),
        ({"source": "api_dry_run"}, "api_dry_run"),
        ({"target_type": "task"}, "target_type"),
        ({"target_type": ""}, "target_type"),
        ({"target_id": 0}, "target_id"),
        ({"target_id": -1}, "target_id"),
        ({"requested_at": "0001-01-01T00:00:00Z"}, "requested_at"),
        ({"mock_now": "2026-05-01T09:15:00+08:00", "is_mock_time": False}, "mock_now"),
        ({"mock_now": "0001-01-01T00:00:00Z", "is_mock_time": False}, "mock_now"),
    ],
)
def test_trigger_validation_rules(overrides: dict[str, object], reason: str) -> None:
    with pytest.raises(ContractError, match=reason):
        ActiveScheduleTriggeredPayload.parse(_trigger(**overrides))


def test_trigger_missing_requested_at_is_rejected() -> None:
    data = _trigger()
    del data["requested_at"]
    with pytest.raises(ContractError, match="requested_at must not be zero"):
        ActiveScheduleTriggeredPayload.parse(data)


def test_trigger_empty_object_reports_first_go_rule() -> None:
    with pytest.raises(ContractError, match="trigger_id must not be empty"):
        ActiveScheduleTriggeredPayload.parse("{}")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"user_id": "42"}, "user_id"),
        ({"user_id": 42.0}, "user_id"),
        ({"user_id": True}, "user_id"),
        ({"user_id": 2**63}, "user_id"),
        ({"target_id": "7"}, "target_id"),
        ({"trigger_id": 5}, "trigger_id"),
        ({"is_mock_time": "false"}, "is_mock_time"),
        ({"is_mock_time": 0}, "is_mock_time"),
        ({"requested_at": 1777515133}, "requested_at"),
        ({"requested_at": "2026-04-30 10:12:13"}, "requested_at"),
        ({"mock_now": "yesterday", "is_mock_time": True}, "mock_now"),
    ],
)
def test_trigger_decode_errors(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ContractError, match=field):
        ActiveScheduleTriggeredPayload.parse(_trigger(**overrides))


@pytest.mark.parametrize("text", ["", "null", "[]", "{", '{"user_id":42} {}', '"text"'])
def test_trigger_parse_rejects_non_objects(text: str) -> None:
    with pytest.raises(ContractError):
        ActiveScheduleTriggeredPayload.parse(text)


def test_trigger_constructor_raises_contract_error() -> None:
    with pytest.raises(ContractError, match="api_dry_run"):
        ActiveScheduleTriggeredPayload(
            trigger_id="ast_1",
            user_id=1,
            trigger_type=TriggerType.IMPORTANT_URGENT_TASK,
            source=TriggerSource.API_DRY_RUN,
            target_type=TargetType.TASK_POOL,
            target_id=1,
            requested_at=datetime(2026, 4, 30, tzinfo=SHANGHAI),
        )
    with pytest.raises(ContractError, match="payload"):
        ActiveScheduleTriggeredPayload(**{**_trigger(), "payload": "{broken"})


def test_trigger_message_key_empty_for_non_positive_user() -> None:
    # Validation forbids user_id <= 0; model_construct skips it to exercise the Go helper on its own.
    raw = ActiveScheduleTriggeredPayload.model_construct(user_id=0, trigger_id="  ast_1  ")
    assert raw.message_key() == ""
    assert raw.aggregate_id() == "ast_1"


# -- notification.feishu.requested ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [GO_NOTIFICATION, GO_NOTIFICATION_MINIMAL], ids=["full", "minimal"])
def test_notification_go_samples_round_trip_byte_identical(text: str) -> None:
    payload = FeishuNotificationRequestedPayload.parse(text)
    assert payload.to_json() == text


def test_notification_fields_and_keys() -> None:
    payload = FeishuNotificationRequestedPayload.parse(GO_NOTIFICATION)
    assert payload.notification_id == 0
    assert payload.requested_at == datetime(2026, 4, 30, 10, 12, 20, 500000, tzinfo=SHANGHAI)
    assert payload.message_key() == "42"
    assert payload.aggregate_id() == "asp_0f9e8d7c-6b5a-4493-8271-605f4e3d2c1b"
    assert payload.event_type == NOTIFICATION_FEISHU_REQUESTED and payload.event_version == "1"


def test_notification_nanoseconds_and_extra_fields() -> None:
    text = GO_NOTIFICATION.replace("10:12:20.5+08:00", "10:12:20.500000001+08:00")[:-1] + ',"channel":"feishu"}'
    assert FeishuNotificationRequestedPayload.parse(text).to_json() == GO_NOTIFICATION


def test_notification_trimmed_target_url_accepted() -> None:
    payload = FeishuNotificationRequestedPayload.parse(_notification(target_url="  /assistant/c1  "))
    assert payload.target_url == "  /assistant/c1  "


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"user_id": 0}, "user_id"),
        ({"user_id": -1}, "user_id"),
        ({"preview_id": ""}, "preview_id"),
        ({"preview_id": " \t"}, "preview_id"),
        ({"dedupe_key": ""}, "dedupe_key"),
        ({"dedupe_key": "  "}, "dedupe_key"),
        ({"target_url": ""}, "target_url must not be empty"),
        ({"target_url": "   "}, "target_url must not be empty"),
        ({"target_url": "/schedule-adjust/asp_1"}, "/assistant/"),
        ({"target_url": "https://evil.example/assistant/x"}, "/assistant/"),
        ({"target_url": "//evil.example/assistant/x"}, "target_url"),
        ({"target_url": "assistant/x"}, "/assistant/"),
        ({"target_url": "/assistant/x?next=https://evil.example"}, "external"),
        ({"requested_at": "0001-01-01T00:00:00Z"}, "requested_at"),
        ({"requested_at": None}, "requested_at"),
        ({"notification_id": "9"}, "notification_id"),
        ({"summary_text": 5}, "summary_text"),
    ],
)
def test_notification_validation_rules(overrides: dict[str, object], reason: str) -> None:
    with pytest.raises(ContractError, match=reason):
        FeishuNotificationRequestedPayload.parse(_notification(**overrides))


def test_notification_unvalidated_fields_may_be_empty() -> None:
    payload = FeishuNotificationRequestedPayload.parse(
        _notification(trigger_id="", trigger_type="", target_type="", target_id=-3)
    )
    assert payload.target_id == -3


def test_notification_built_in_python() -> None:
    payload = FeishuNotificationRequestedPayload(
        notification_id=3,
        user_id=42,
        preview_id="asp_1",
        dedupe_key="42:important_urgent_task:2026-04-30T10:00:00+08:00",
        target_url="/assistant/c1",
        summary_text="a & b",
        requested_at=datetime(2026, 4, 30, 10, 12, 20, 120000, tzinfo=timezone(timedelta(hours=8))),
    )
    assert payload.to_json() == (
        '{"notification_id":3,"user_id":42,"trigger_id":"","preview_id":"asp_1","trigger_type":"","target_type":"",'
        '"target_id":0,"dedupe_key":"42:important_urgent_task:2026-04-30T10:00:00+08:00","target_url":"/assistant/c1",'
        '"summary_text":"a \\u0026 b","requested_at":"2026-04-30T10:12:20.12+08:00"}'
    )
