"""The triggered workflow (docs/upstream.md#trigger-workflow) on MariaDB and SQLite, driven by events read back from
the outbox."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from smartflow_streams.core import clock
from smartflow_streams.contracts.envelope import OutboxEventShell
from smartflow_streams.contracts.events import ActiveScheduleTriggeredPayload, FeishuNotificationRequestedPayload
from smartflow_streams.db.models import active_schedule_previews as previews_t
from smartflow_streams.db.models import active_schedule_triggers as triggers_t
from smartflow_streams.core.errors import ContractError
from smartflow_streams.outbox.repository import OutboxRepository
from smartflow_streams.scheduler.preview import DeterministicPreviewBuilder, PreviewDecision
from smartflow_streams.scheduler.triggers import TriggerRequest, create_trigger, json_value
from smartflow_streams.scheduler.workflow import mark_trigger_failed, run_trigger_workflow

SH = ZoneInfo("Asia/Shanghai")
AT = datetime(2026, 4, 30, 10, 12, 13, tzinfo=SH)
NOTIFY = "notification.feishu.requested"
CONVERSATION_NS = uuid.uuid5(uuid.NAMESPACE_URL, "smartflow:active_schedule:conversation")


class Recorder:
    """Builder double: returns a fixed decision and records what it was given."""

    def __init__(self, decision: PreviewDecision | None) -> None:
        self.decision, self.calls = decision, []

    async def build(self, trigger: dict[str, Any], now: datetime) -> PreviewDecision | None:
        self.calls.append((trigger, now))
        return self.decision


class Exploding:
    async def build(self, trigger: dict[str, Any], now: datetime) -> PreviewDecision | None:
        raise RuntimeError("planner down")


async def new_trigger(db, **overrides) -> ActiveScheduleTriggeredPayload:
    """Create a trigger and return the event exactly as the consumer would decode it from the outbox row."""
    fields = dict(user_id=42, trigger_type="important_urgent_task", source="api_trigger", target_type="task_pool",
                  target_id=7, requested_at=AT, trace_id="trace_api_trigger_42_1")
    fields.update(overrides)
    async with db.sessions() as s, s.begin():
        result = await create_trigger(s, TriggerRequest(**fields), db.settings)
    repo = OutboxRepository.for_event("active_schedule.triggered")
    async with db.sessions() as s:
        rows = (await s.execute(sa.select(repo.table.c.payload).order_by(repo.table.c.id.desc()))).scalars().all()
    event = ActiveScheduleTriggeredPayload.parse(OutboxEventShell.parse(rows[0]).payload)
    assert event.trigger_id == result.trigger_id
    return event


async def run(db, event: ActiveScheduleTriggeredPayload, builder=None):
    async with db.sessions() as s, s.begin():
        return await run_trigger_workflow(s, event, builder=builder or DeterministicPreviewBuilder(),
                                          settings=db.settings)


async def trigger_row(db, trigger_id: str) -> dict:
    async with db.sessions() as s:
        return dict((await s.execute(sa.select(triggers_t).where(triggers_t.c.id == trigger_id))).mappings().one())


async def previews(db) -> list[dict]:
    async with db.sessions() as s:
        return [dict(r) for r in (await s.execute(sa.select(previews_t))).mappings()]


async def notifications(db) -> list[tuple[dict, OutboxEventShell, FeishuNotificationRequestedPayload]]:
    repo = OutboxRepository.for_event(NOTIFY)
    async with db.sessions() as s:
        rows = (await s.execute(sa.select(repo.table).order_by(repo.table.c.id))).mappings().all()
    out = []
    for row in rows:
        shell = OutboxEventShell.parse(row["payload"])
        out.append((dict(row), shell, FeishuNotificationRequestedPayload.parse(shell.payload)))
    return out


async def test_happy_path_writes_preview_trigger_status_and_notification(db) -> None:
    event = await new_trigger(db)
    before = clock.db_now()
    result = await run(db, event)
    assert (result.status, result.notified, result.idempotent) == ("preview_generated", True, False)
    [preview] = await previews(db)
    assert preview["preview_id"] == result.preview_id and preview["preview_id"].startswith("asp_")
    assert (preview["status"], preview["apply_status"], preview["trigger_id"]) == ("ready", "none", event.trigger_id)
    assert preview["explanation_text"] == "任务 #7 已到紧急阈值，建议在今天安排处理时段。"
    assert preview["notification_summary"] == preview["explanation_text"]
    assert preview["expires_at"] - preview["generated_at"] == timedelta(seconds=3600)
    assert json_value(preview["decision_json"])["target_id"] == 7
    assert (preview["candidate_count"], preview["selected_candidate_id"]) == (1, "c1")
    assert json_value(preview["selected_candidate_json"]) == json_value(preview["candidates_json"])[0]
    assert preview["base_version"].startswith("sfs1:") and len(preview["base_version"]) == 69
    row = await trigger_row(db, event.trigger_id)
    assert (row["status"], row["preview_id"]) == ("preview_generated", result.preview_id)
    assert row["processed_at"] >= before and row["completed_at"] >= row["processed_at"]
    [(out, shell, note)] = await notifications(db)
    assert (out["service_name"], out["message_key"], out["status"]) == ("notification", "42", "pending")
    assert (shell.event_id, shell.aggregate_id, shell.event_version) == (result.preview_id, result.preview_id, "1")
    conversation = uuid.uuid5(CONVERSATION_NS, event.trigger_id)
    assert note.dedupe_key == "42:important_urgent_task:2026-04-30T10:00:00+08:00"
    assert note.target_url == f"/assistant/{conversation}"
    assert note.summary_text == preview["notification_summary"]
    assert note.fallback_text == f"{preview['notification_summary']}，请查看：/assistant/{conversation}"
    assert (note.user_id, note.trigger_id, note.preview_id) == (42, event.trigger_id, result.preview_id)
    assert (note.trigger_type, note.target_type, note.target_id) == ("important_urgent_task", "task_pool", 7)
    assert note.trace_id == "trace_api_trigger_42_1"
    assert note.requested_at.tzinfo is not None and note.requested_at.replace(tzinfo=None) >= before


async def test_second_run_is_idempotent(db) -> None:
    event = await new_trigger(db)
    first = await run(db, event)
    builder = Recorder(PreviewDecision(True, True, "x", "x"))
    second = await run(db, event, builder)
    assert (second.status, second.preview_id, second.idempotent, second.notified) == (
        "preview_generated", first.preview_id, True, False)
    assert builder.calls == [] and len(await previews(db)) == 1 and len(await notifications(db)) == 1


@pytest.mark.parametrize("field,value", [
    ("user_id", 43), ("trigger_type", "unfinished_feedback"), ("target_type", "task_item"), ("target_id", 8),
])
async def test_payload_mismatch_rejects_the_trigger(db, field, value) -> None:
    event = await new_trigger(db)
    forged = event.model_copy(update={field: value})
    result = await run(db, forged)
    assert (result.status, result.preview_id, result.idempotent) == ("rejected", None, False)
    row = await trigger_row(db, event.trigger_id)
    assert (row["status"], row["last_error_code"]) == ("rejected", "payload_mismatch")
    assert field in row["last_error"] and row["completed_at"] is not None
    assert await previews(db) == [] and await notifications(db) == []
    assert (await run(db, event)).idempotent is True  # rejected is terminal


async def test_existing_preview_is_reused_without_notification(db) -> None:
    event = await new_trigger(db)
    now = clock.db_now()
    async with db.sessions() as s, s.begin():
        await s.execute(sa.insert(previews_t).values(
            preview_id="asp_existing", trigger_id=event.trigger_id, user_id=42, trigger_type="important_urgent_task",
            target_type="task_pool", target_id=7, status="ready", base_version="go-base", generated_at=now,
            expires_at=now, created_at=now, updated_at=now))
    builder = Recorder(PreviewDecision(True, True, "x", "x"))
    result = await run(db, event, builder)
    assert (result.status, result.preview_id, result.notified) == ("preview_generated", "asp_existing", False)
    assert builder.calls == [] and len(await previews(db)) == 1 and await notifications(db) == []


@pytest.mark.parametrize("decision", [None, PreviewDecision(False, False, "", "")])
async def test_no_candidates_closes_the_trigger(db, decision) -> None:
    event = await new_trigger(db)
    result = await run(db, event, Recorder(decision))
    assert (result.status, result.preview_id, result.notified) == ("closed", None, False)
    row = await trigger_row(db, event.trigger_id)
    assert row["status"] == "closed" and row["completed_at"] is not None and row["processed_at"] is not None
    assert await previews(db) == [] and await notifications(db) == []


async def test_preview_without_notification(db) -> None:
    event = await new_trigger(db)
    result = await run(db, event, Recorder(PreviewDecision(False, True, "仅预览", "")))
    assert (result.status, result.notified) == ("preview_generated", False)
    assert len(await previews(db)) == 1 and await notifications(db) == []


async def test_empty_summary_uses_the_fixed_fallback_sentence(db) -> None:
    event = await new_trigger(db)
    await run(db, event, Recorder(PreviewDecision(True, True, "预览", "  ")))
    [(_, _, note)] = await notifications(db)
    assert note.summary_text == ""
    assert note.fallback_text == f"你有一条新的日程调整建议，请查看：{note.target_url}"


async def test_builder_gets_the_row_and_mock_now_as_business_now(db) -> None:
    mock = datetime(2026, 5, 1, 8, 45, tzinfo=SH)
    event = await new_trigger(db, mock_now=mock, payload={"k": 1})
    builder = Recorder(PreviewDecision(True, True, "s", "s"))
    await run(db, event, builder)
    [(trigger, now)] = builder.calls
    assert now == mock and trigger["id"] == event.trigger_id and trigger["payload"] == {"k": 1}
    assert trigger["status"] == "pending"  # the row as locked, before step 4


async def test_unfinished_feedback_summary(db) -> None:
    event = await new_trigger(db, trigger_type="unfinished_feedback", source="user_feedback", target_id=0,
                              feedback_id="fb-1")
    await run(db, event)
    [(_, _, note)] = await notifications(db)
    assert note.summary_text == "你反馈有一项已安排的任务未完成，建议重新安排一个新的处理时段。"
    assert "://" not in note.summary_text and note.dedupe_key == "42:unfinished_feedback:2026-04-30T10:00:00+08:00"


async def test_missing_trigger_is_a_contract_error(db) -> None:
    event = await new_trigger(db)
    ghost = event.model_copy(update={"trigger_id": "ast_missing"})
    with pytest.raises(ContractError, match="trigger not found: ast_missing"):
        await run(db, ghost)


async def test_failure_rolls_back_everything_then_mark_failed(db) -> None:
    event = await new_trigger(db)
    with pytest.raises(RuntimeError):
        await run(db, event, Exploding())
    row = await trigger_row(db, event.trigger_id)
    assert row["status"] == "pending" and row["processed_at"] is None  # step 4 rolled back too
    await mark_trigger_failed(db.sessions, event.trigger_id, "worker_failed", "RuntimeError: " + "失" * 3000)
    row = await trigger_row(db, event.trigger_id)
    assert (row["status"], row["last_error_code"]) == ("failed", "worker_failed")
    assert len(row["last_error"]) == 2000 and row["completed_at"] is not None
    result = await run(db, event)  # a failed trigger is retried by the redelivery
    assert result.status == "preview_generated"
    row = await trigger_row(db, event.trigger_id)
    assert row["last_error_code"] is None and row["last_error"] is None


async def test_mark_trigger_failed_leaves_terminal_triggers_and_ignores_missing(db) -> None:
    event = await new_trigger(db)
    await run(db, event)
    await mark_trigger_failed(db.sessions, event.trigger_id, "worker_failed", "late")
    assert (await trigger_row(db, event.trigger_id))["status"] == "preview_generated"
    await mark_trigger_failed(db.sessions, "ast_missing", "worker_failed", "nothing to mark")
    await mark_trigger_failed(db.sessions, "", "worker_failed", "blank id")


async def test_mark_trigger_failed_is_best_effort(db) -> None:
    def broken_sessions():
        raise OSError("database unreachable")

    await mark_trigger_failed(broken_sessions, "ast_x", "worker_failed", "boom")  # logged, not raised
