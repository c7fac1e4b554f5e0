"""Trigger creation (docs/upstream.md#trigger-creation) on MariaDB and SQLite: atomic trigger + outbox row, dedupe,
validation."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from smartflow_streams.core import clock
from smartflow_streams.contracts.envelope import OutboxEventShell
from smartflow_streams.contracts.events import ActiveScheduleTriggeredPayload
from smartflow_streams.db.models import active_schedule_triggers as triggers_t
from smartflow_streams.core.errors import ContractError
from smartflow_streams.outbox.repository import OutboxRepository
from smartflow_streams.scheduler.triggers import TriggerRequest, create_trigger, json_value

SH = ZoneInfo("Asia/Shanghai")
AT = datetime(2026, 4, 30, 10, 12, 13, tzinfo=SH)
TRIGGERED = "active_schedule.triggered"


def request(**overrides) -> TriggerRequest:
    base = dict(user_id=42, trigger_type="important_urgent_task", source="api_trigger", target_type="task_pool",
                target_id=7, requested_at=AT)
    base.update(overrides)
    return TriggerRequest(**base)


async def create(db, req: TriggerRequest):
    async with db.sessions() as s, s.begin():
        return await create_trigger(s, req, db.settings)


async def trigger_rows(db) -> list[dict]:
    async with db.sessions() as s:
        return [dict(r) for r in (await s.execute(sa.select(triggers_t).order_by(triggers_t.c.created_at))).mappings()]


async def outbox_rows(db):
    repo = OutboxRepository.for_event(TRIGGERED)
    async with db.sessions() as s:
        return list((await s.execute(sa.select(repo.table).order_by(repo.table.c.id))).mappings())


async def test_create_writes_trigger_and_outbox_row_together(db) -> None:
    result = await create(db, request(payload={"note": "x"}, trace_id="trace_api_trigger_42_1"))
    assert result.dedupe_hit is False and result.status == "pending" and result.preview_id is None
    assert re.fullmatch(r"ast_[0-9a-f-]{36}", result.trigger_id)
    [row] = await trigger_rows(db)
    assert row["id"] == result.trigger_id and row["status"] == "pending" and row["source"] == "api_trigger"
    assert row["requested_at"] == datetime(2026, 4, 30, 10, 12, 13)  # naive, configured zone
    assert row["dedupe_key"] == "42:important_urgent_task:task_pool:7:2026-04-30T10:00:00+08:00"
    assert json_value(row["payload_json"]) == {"note": "x"}
    async with db.engine.connect() as conn:  # raw driver value: JSON text of an object, not a JSON string
        raw = (await conn.exec_driver_sql("SELECT payload_json FROM active_schedule_triggers")).scalar_one()
    assert json.loads(raw) == {"note": "x"}
    assert row["is_mock_time"] in (False, 0) and row["mock_now"] is None and row["job_id"] is None
    [out] = await outbox_rows(db)
    assert (out["status"], out["message_key"], out["service_name"]) == ("pending", "42", "active-scheduler")
    shell = OutboxEventShell.parse(out["payload"])
    assert (shell.event_id, shell.event_type, shell.event_version, shell.aggregate_id) == (
        result.trigger_id, TRIGGERED, "1", result.trigger_id)
    event = ActiveScheduleTriggeredPayload.parse(shell.payload)
    assert event.trigger_id == result.trigger_id and event.dedupe_key == row["dedupe_key"]
    assert event.requested_at == AT and event.decoded() == {"note": "x"}
    assert event.trace_id == "trace_api_trigger_42_1" == result.trace_id


async def test_both_rows_roll_back_with_the_callers_transaction(db) -> None:
    with pytest.raises(RuntimeError):
        async with db.sessions() as s, s.begin():
            await create_trigger(s, request(), db.settings)
            raise RuntimeError("caller failed after creating the trigger")
    assert await trigger_rows(db) == [] and await outbox_rows(db) == []


async def test_idempotency_key_hits_in_any_status(db) -> None:
    first = await create(db, request(idempotency_key="idem-1"))
    async with db.sessions() as s, s.begin():
        await s.execute(sa.update(triggers_t).values(status="closed"))
    again = await create(db, request(idempotency_key="idem-1", requested_at=AT + timedelta(hours=5)))
    assert again.dedupe_hit is True and again.trigger_id == first.trigger_id and again.status == "closed"
    other_user = await create(db, request(user_id=43, idempotency_key="idem-1"))
    assert other_user.dedupe_hit is False
    assert len(await trigger_rows(db)) == 2 and len(await outbox_rows(db)) == 2


async def test_dedupe_key_hits_only_active_triggers_in_the_same_window(db) -> None:
    first = await create(db, request())
    hit = await create(db, request(requested_at=AT + timedelta(minutes=10)))  # 10:22, same window
    assert hit.dedupe_hit is True and hit.trigger_id == first.trigger_id and hit.status == "pending"
    next_window = await create(db, request(requested_at=AT + timedelta(minutes=20)))  # 10:32
    assert next_window.dedupe_hit is False
    async with db.sessions() as s, s.begin():
        await s.execute(sa.update(triggers_t).where(triggers_t.c.id == first.trigger_id).values(status="failed"))
    after_failure = await create(db, request())
    assert after_failure.dedupe_hit is False  # a failed trigger does not block a new one
    assert len(await outbox_rows(db)) == 3


async def test_explicit_dedupe_key_is_used(db) -> None:
    first = await create(db, request(dedupe_key="custom-key", source="worker_due_job"))
    again = await create(db, request(dedupe_key="custom-key", source="worker_due_job", target_id=8))
    assert again.dedupe_hit and again.trigger_id == first.trigger_id
    assert (await trigger_rows(db))[0]["dedupe_key"] == "custom-key"


async def test_unfinished_feedback_key_has_no_window_and_target_zero_is_allowed(db) -> None:
    result = await create(db, request(trigger_type="unfinished_feedback", source="user_feedback", target_id=0,
                                      feedback_id="fb-9"))
    [row] = await trigger_rows(db)
    assert row["dedupe_key"] == "42:unfinished_feedback:fb-9" and row["feedback_id"] == "fb-9"
    later = await create(db, request(trigger_type="unfinished_feedback", source="user_feedback", target_id=0,
                                     feedback_id="fb-9", requested_at=AT + timedelta(days=1)))
    assert later.dedupe_hit and later.trigger_id == result.trigger_id


async def test_mock_now_sets_mock_flag_and_anchors_the_window(db) -> None:
    mock = datetime(2026, 5, 1, 8, 45, tzinfo=SH)
    await create(db, request(mock_now=mock))
    [row] = await trigger_rows(db)
    assert row["is_mock_time"] in (True, 1) and row["mock_now"] == datetime(2026, 5, 1, 8, 45)
    assert row["dedupe_key"].endswith(":2026-05-01T08:30:00+08:00")
    [out] = await outbox_rows(db)
    event = ActiveScheduleTriggeredPayload.parse(OutboxEventShell.parse(out["payload"]).payload)
    assert event.is_mock_time is True and event.mock_now == mock


async def test_defaults_requested_at_now_and_trace_id(db) -> None:
    before = clock.db_now()
    result = await create(db, request(requested_at=None))
    [row] = await trigger_rows(db)
    assert before <= row["requested_at"] <= clock.db_now()
    assert re.fullmatch(r"trace_active_trigger_\d{19}", result.trace_id) and row["trace_id"] == result.trace_id


async def test_aware_times_in_other_zones_are_stored_in_the_configured_zone(db) -> None:
    await create(db, request(requested_at=datetime(2026, 4, 30, 2, 12, 13, tzinfo=timezone.utc)))
    [row] = await trigger_rows(db)
    assert row["requested_at"] == datetime(2026, 4, 30, 10, 12, 13)
    assert row["dedupe_key"].endswith("2026-04-30T10:00:00+08:00")


@pytest.mark.parametrize(("overrides", "message"), [
    ({"user_id": 0}, "user_id must be greater than 0"),
    ({"trigger_type": "nope"}, "trigger_type 'nope' is not allowed"),
    ({"source": "cron"}, "source 'cron' is not allowed"),
    ({"source": "api_dry_run"}, "api_dry_run cannot create a trigger"),
    ({"target_type": "user"}, "target_type 'user' is not allowed"),
    ({"target_id": 0}, "target_id must be greater than 0"),
    ({"target_id": -1, "trigger_type": "unfinished_feedback"}, "target_id must be greater than 0"),
    ({"source": "worker_due_job", "mock_now": AT}, "mock_now is only allowed for api_trigger"),
    ({"source": "user_feedback", "mock_now": AT}, "mock_now is only allowed for api_trigger"),
    ({"payload": ["not", "an", "object"]}, "payload must be a JSON object"),
    ({"payload": {"bad": float("nan")}}, "payload"),
    ({"trace_id": "t" * 65}, "trace_id is longer than 64"),
    ({"idempotency_key": "k" * 192}, "idempotency_key is longer than 191"),
])
async def test_invalid_requests_raise_contract_error_and_write_nothing(db, overrides, message) -> None:
    with pytest.raises(ContractError, match=re.escape(message)):
        await create(db, request(**overrides))
    assert await trigger_rows(db) == [] and await outbox_rows(db) == []


def test_payload_json_is_stored_as_json_text() -> None:
    assert json_value('{"a":1}') == {"a": 1} and json_value({"a": 1}) == {"a": 1}
    assert json_value(None) is None and json_value("") is None
    assert json.loads('{"job_id":"x"}') == json_value(b'{"job_id":"x"}')
