"""The ``active_schedule.triggered`` workflow (docs/upstream.md#trigger-workflow steps 1-8) inside the caller's
consume transaction.

:func:`run_trigger_workflow` never commits: its writes (trigger status, preview, notification outbox row) commit
together with the outbox row's ``consumed`` mark, or not at all. Steps:

1. Lock the trigger row (``SELECT ... FOR UPDATE`` on MySQL/MariaDB; SQLite's ``BEGIN IMMEDIATE`` already
   serialises writers). A missing (or soft-deleted) trigger raises :class:`ContractError`: triggers are created
   atomically with their event (:mod:`.triggers`), so an event without a row is poison, not a race.
2. ``preview_generated``/``closed``/``skipped``/``rejected`` -> idempotent success, nothing written.
   ``pending``/``processing``/``failed``/unknown continue.
3. user_id, trigger_type, target_type or target_id differing between row and payload -> ``rejected``
   (``payload_mismatch``, ``completed_at``).
4. ``processing``, ``processed_at = now``, errors cleared.
5. A preview already exists for the trigger -> ``preview_generated`` with it (no notification).
6. ``builder.build`` -> ``None`` (or neither notify nor write_preview) -> ``closed``.
7. Insert the preview in the Go services' ``active_schedule_previews`` shape: key ``preview_id`` (``asp_<uuid4>``),
   ``ready``, ``generated_at = now``, ``expires_at = now + scheduler.preview_ttl_seconds`` (default 3600 s),
   ``base_version`` (:func:`preview_base_version` unless the builder gives one) -> trigger ``preview_generated``,
   ``preview_id``, ``completed_at``.
8. If the decision says notify: enqueue ``notification.feishu.requested`` (version ``"1"``, event id = aggregate
   id = preview id, key = user id) into the **notification** outbox table in the same transaction.

Step 9 (rollback, then mark ``failed``) is the caller's: on an exception it rolls back and calls
:func:`mark_trigger_failed` in a separate transaction.

Out of scope: upstream (@a3eaa9b) also pre-created the assistant conversation/session rows (``agent_chats`` and
friends) and seeded an assistant message before notifying. This project has no such tables; the notification's
``target_url`` still uses the deterministic conversation id (``/assistant/<uuid5 of the trigger id>``), so a
conversation service can create the conversation lazily under the same id.

Times: DB columns are naive in ``settings.zone``; "now" is :func:`clock.db_now` (millisecond precision). The
notification ``dedupe_key`` uses the trigger's ``requested_at`` taken in ``settings.zone`` (30-minute window,
e.g. ``42:important_urgent_task:2026-04-30T10:00:00+08:00``); the builder's ``now`` is ``mock_now`` for a
mock-time trigger, else the real now.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from config import Settings
from smartflow_streams.core import clock, tracing
from smartflow_streams.contracts.dedupe import conversation_id_for_trigger, new_preview_id, notification_dedupe_key
from smartflow_streams.contracts.gojson import go_trim_space
from smartflow_streams.contracts.events import (
    ASSISTANT_URL_PREFIX,
    NOTIFICATION_FEISHU_REQUESTED,
    NOTIFICATION_FEISHU_REQUESTED_VERSION,
    ActiveScheduleTriggeredPayload,
    FeishuNotificationRequestedPayload,
)
from smartflow_streams.db.bulk import update_rows
from smartflow_streams.db.models import active_schedule_previews as previews_t
from smartflow_streams.db.models import active_schedule_triggers as triggers_t
from smartflow_streams.db.models import json_bind, json_text
from smartflow_streams.core.errors import ContractError
from smartflow_streams.outbox.repository import OutboxRepository
from smartflow_streams.scheduler.preview import PreviewBuilder, PreviewDecision
from smartflow_streams.scheduler.triggers import TERMINAL_TRIGGER_STATUSES, TriggerStatus, json_value
from smartflow_streams.contracts.gotime import to_zone

log = logging.getLogger(__name__)

ERROR_MAX_CHARS = 2000
"""``last_error`` keeps at most this many characters (never splits a character)."""

FALLBACK_SENTENCE = "你有一条新的日程调整建议，请查看："
"""Fallback text prefix when the decision has no notification summary (followed by the target URL)."""


class PreviewStatus(StrEnum):
    PENDING = "pending"
    READY = "ready"
    APPLIED = "applied"
    IGNORED = "ignored"
    EXPIRED = "expired"
    FAILED = "failed"


@dataclass
class WorkflowResult:
    trigger_id: str
    status: str
    preview_id: str | None
    notified: bool
    idempotent: bool


# -- helpers -----------------------------------------------------------------------------------------------------


def _dialect(session: AsyncSession) -> str:
    bind = session.bind
    return bind.dialect.name if bind is not None else ""


async def _lock_triggers(session: AsyncSession, trigger_ids: list[str]) -> dict[str, dict[str, Any]]:
    t = triggers_t
    select = sa.select(t).where(t.c.id.in_(trigger_ids), t.c.deleted_at.is_(None))
    if _dialect(session) != "sqlite":
        select = select.with_for_update()
    return {m["id"]: dict(m) for m in (await session.execute(select)).mappings()}


async def _update_trigger(session: AsyncSession, trigger_id: str, **values: Any) -> None:
    await session.execute(
        sa.update(triggers_t).where(triggers_t.c.id == trigger_id).values(updated_at=clock.db_now(), **values))


def _mismatch(row: Any, payload: ActiveScheduleTriggeredPayload) -> str:
    """Names of the fields that differ between the row and the event, ``""`` when they agree."""
    pairs = {
        "user_id": (int(row["user_id"]), payload.user_id),
        "trigger_type": (row["trigger_type"], go_trim_space(payload.trigger_type)),
        "target_type": (row["target_type"], go_trim_space(payload.target_type)),
        "target_id": (int(row["target_id"]), payload.target_id),
    }
    return "; ".join(f"{name}: row={have!r} event={got!r}" for name, (have, got) in pairs.items() if have != got)


def trigger_dict(row: Any) -> dict[str, Any]:
    """The trigger row for a builder: every column, plus ``payload`` = decoded ``payload_json`` (``{}`` if absent)."""
    data = dict(row)
    data["payload"] = json_value(data.get("payload_json")) or {}
    return data


def _business_now(row: Any, now: datetime, settings: Settings) -> datetime:
    if row["is_mock_time"] and row["mock_now"] is not None:
        return to_zone(row["mock_now"], settings.zone)
    return now


def fallback_text(summary: str, target_url: str) -> str:
    """Upstream ``buildNotificationFallbackText`` with the ``/assistant/`` URL."""
    summary = summary.strip()
    return f"{FALLBACK_SENTENCE}{target_url}" if not summary else f"{summary}，请查看：{target_url}"


def build_notification_payload(row: Any, preview_id: str, summary: str, now: datetime,
                               settings: Settings) -> FeishuNotificationRequestedPayload:
    """Upstream ``BuildFeishuRequestedPayload`` (@a3eaa9b URL form). ``now`` is aware."""
    requested_at = to_zone(row["requested_at"], settings.zone)
    target_url = ASSISTANT_URL_PREFIX + conversation_id_for_trigger(row["id"])
    summary = summary.strip()
    return FeishuNotificationRequestedPayload(
        user_id=int(row["user_id"]), trigger_id=row["id"], preview_id=preview_id,
        trigger_type=row["trigger_type"], target_type=row["target_type"], target_id=int(row["target_id"]),
        dedupe_key=notification_dedupe_key(int(row["user_id"]), row["trigger_type"], requested_at,
                                           zone=settings.zone),
        target_url=target_url, summary_text=summary, fallback_text=fallback_text(summary, target_url),
        trace_id=row["trace_id"] or "", requested_at=now,
    )


async def _existing_preview_ids(session: AsyncSession, trigger_ids: list[str]) -> dict[str, str]:
    """trigger id -> its first live preview (by ``created_at``, then id), for the triggers that have one."""
    if not trigger_ids:
        return {}
    p = previews_t
    select = (sa.select(p.c.trigger_id, p.c.preview_id)
              .where(p.c.trigger_id.in_(trigger_ids), p.c.deleted_at.is_(None))
              .order_by(p.c.created_at.desc(), p.c.preview_id.desc()))
    return {trigger_id: preview_id for trigger_id, preview_id in (await session.execute(select)).all()}


PREVIEW_JSON_COLUMNS: tuple[str, ...] = ("candidates_json", "selected_candidate_json", "decision_json")
"""The JSON columns of ``active_schedule_previews`` the workflow fills (bound as text, see :func:`json_bind`)."""

BASE_VERSION_PREFIX = "sfs1:"
"""Prefix of the default ``base_version``: ``sfs1:`` + 64 hex digits (69 characters, column limit 128)."""


def preview_base_version(row: dict[str, Any]) -> str:
    """Default ``base_version`` of a preview: ``sfs1:<sha256>`` over the inputs the builder saw.

    The digest covers the trigger's id, user, trigger type, target type/id, feedback id, mock time and payload
    (canonical JSON), so two previews built from the same inputs share a version and any change of input gives a
    new one. The Go column is the re-validation base an apply (confirm) step compares against; the default
    builder reads no schedule state, so the trigger's inputs are all the state its preview depends on.
    """
    import hashlib
    import json

    mock_now = row.get("mock_now")
    inputs = [row["id"], int(row["user_id"]), row["trigger_type"], row["target_type"], int(row["target_id"]),
              row.get("feedback_id") or "", mock_now.isoformat() if mock_now is not None else "",
              json_value(row.get("payload_json")) or {}]
    text = json.dumps(inputs, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)
    return BASE_VERSION_PREFIX + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _preview_row(row: dict[str, Any], decision: PreviewDecision, settings: Settings, now: datetime) -> dict[str, Any]:
    """The Go table's row (spec of ``active_schedule_previews``): every NOT NULL column without a default named."""
    selected = next((c for c in decision.candidates if decision.selected_candidate_id
                     and c.get("id") == decision.selected_candidate_id), None)
    base_version = decision.base_version or preview_base_version(row)
    if len(base_version) > 128:
        raise ContractError(f"preview base_version is longer than 128 characters: {base_version[:40]!r}...")
    return dict(
        preview_id=new_preview_id(), trigger_id=row["id"], user_id=row["user_id"], trigger_type=row["trigger_type"],
        target_type=row["target_type"], target_id=row["target_id"], status=PreviewStatus.READY.value,
        selected_candidate_id=decision.selected_candidate_id if selected is not None else None,
        candidate_count=len(decision.candidates),
        candidates_json_text=json_text(decision.candidates) if decision.candidates else None,
        selected_candidate_json_text=json_text(selected) if selected is not None else None,
        decision_json_text=json_text(decision.preview or {}),
        explanation_text=decision.summary_text, notification_summary=decision.notification_summary,
        base_version=base_version, generated_at=now,
        expires_at=now + timedelta(seconds=settings.scheduler.preview_ttl_seconds), apply_status="none",
        trace_id=row["trace_id"], created_at=now, updated_at=now,
    )


# JSON columns bound as text under ``<column>_text`` (a bind parameter may not reuse its column's name).
_INSERT_PREVIEW = sa.insert(previews_t).values({name: json_bind(f"{name}_text") for name in PREVIEW_JSON_COLUMNS})


def _notification_row(repo: OutboxRepository, row: dict[str, Any], preview_id: str, decision: PreviewDecision,
                      settings: Settings, now: datetime) -> dict[str, Any]:
    payload = build_notification_payload(row, preview_id, decision.notification_summary, to_zone(now, settings.zone),
                                         settings)
    return repo.pending_row(NOTIFICATION_FEISHU_REQUESTED, payload, message_key=str(payload.user_id),
                            event_version=NOTIFICATION_FEISHU_REQUESTED_VERSION, event_id=preview_id,
                            aggregate_id=preview_id)


# -- the workflow ------------------------------------------------------------------------------------------------


async def run_trigger_workflow(
    session: AsyncSession, payload: ActiveScheduleTriggeredPayload, *, builder: PreviewBuilder, settings: Settings,
) -> WorkflowResult:
    """Steps 1-8 of docs/upstream.md#trigger-workflow for one event: :func:`run_trigger_workflow_many` of one."""
    return (await run_trigger_workflow_many(session, [payload], builder=builder, settings=settings))[0]


async def run_trigger_workflow_many(
    session: AsyncSession, payloads: list[ActiveScheduleTriggeredPayload], *, builder: PreviewBuilder,
    settings: Settings,
) -> list[WorkflowResult]:
    """Steps 1-8 of docs/upstream.md#trigger-workflow for many events in ``session``'s open transaction (module
    docstring); results in input
    order. Raises ContractError if any trigger is missing; any other exception means the caller must roll back.

    Cost: 5-6 statements whatever the number of events (lock the triggers, read existing previews, insert the
    previews, insert the notification outbox rows, update the triggers: one UPDATE per final status with per-row
    CASE values, :mod:`smartflow_streams.db.bulk`), plus one per ``rejected`` trigger. Events are applied in input
    order against the locked rows held in memory, so a second event for a trigger already finished earlier in the
    list is an idempotent success, as it would be one by one.
    """
    trigger_ids = list(dict.fromkeys(p.aggregate_id() for p in payloads))
    rows = await _lock_triggers(session, trigger_ids)
    missing = [i for i in trigger_ids if i not in rows]
    if missing:
        raise ContractError(f"trigger not found: {missing[0]}")
    existing = await _existing_preview_ids(
        session, [i for i in trigger_ids if rows[i]["status"] not in TERMINAL_TRIGGER_STATUSES])
    notification_repo = OutboxRepository.for_event(NOTIFICATION_FEISHU_REQUESTED)
    now = clock.db_now()
    aware_now = to_zone(now, settings.zone)
    previews: list[dict[str, Any]] = []
    notifications: list[dict[str, Any]] = []
    traced = tracing.active()
    finished: dict[str, dict[str, Any]] = {}  # trigger id -> the final UPDATE's values (closed / preview_generated)
    results: list[WorkflowResult] = []
    for payload in payloads:
        trigger_id = payload.aggregate_id()
        row = rows[trigger_id]
        if row["status"] in TERMINAL_TRIGGER_STATUSES:
            results.append(WorkflowResult(trigger_id, row["status"], row["preview_id"], False, True))
            continue
        mismatch = _mismatch(row, payload)
        if mismatch:
            await _update_trigger(session, trigger_id, status=TriggerStatus.REJECTED.value,
                                  last_error_code="payload_mismatch", last_error=mismatch[:ERROR_MAX_CHARS],
                                  completed_at=now)
            row["status"] = TriggerStatus.REJECTED.value
            results.append(WorkflowResult(trigger_id, row["status"], None, False, False))
            continue
        preview_id, notified = existing.get(trigger_id), False
        if preview_id is None:
            decision = await builder.build(trigger_dict(row), _business_now(row, aware_now, settings))
            if decision is not None and (decision.notify or decision.write_preview):
                previews.append(_preview_row(row, decision, settings, now))
                preview_id = previews[-1]["preview_id"]
                if decision.notify:
                    notifications.append(_notification_row(notification_repo, row, preview_id, decision, settings,
                                                           now))
                    if traced:  # the second hop joins the trigger's trace
                        tracing.stamp_row(notifications[-1], payload)
                    notified = True
        row["status"] = TriggerStatus.CLOSED.value if preview_id is None else TriggerStatus.PREVIEW_GENERATED.value
        row["preview_id"] = preview_id
        finished[trigger_id] = dict(status=row["status"], preview_id=preview_id)
        results.append(WorkflowResult(trigger_id, row["status"], preview_id, notified, False))
    if previews:
        await session.execute(_INSERT_PREVIEW, previews)
    await notification_repo.enqueue_rows(session, notifications)
    for status in (TriggerStatus.CLOSED.value, TriggerStatus.PREVIEW_GENERATED.value):
        # steps 4 and 6/7, one UPDATE per final status: processed_at, errors cleared, status (and preview),
        # completed_at; a closed trigger's preview_id is left as it is
        rows = [dict(id=trigger_id, status=status, processed_at=now, last_error_code=None, last_error=None,
                     completed_at=now, updated_at=now,
                     **({"preview_id": v["preview_id"]} if status == TriggerStatus.PREVIEW_GENERATED.value else {}))
                for trigger_id, v in finished.items() if v["status"] == status]
        await update_rows(session, triggers_t, rows)
    return results


async def mark_trigger_failed(sessions: Callable[[], AsyncSession], trigger_id: str, code: str, error: str) -> None:
    """Best effort, own transaction: set ``failed`` with ``code`` and ``error`` (first 2000 characters).

    Terminal triggers (``preview_generated``/``closed``/``skipped``/``rejected``) are left alone; a missing trigger
    is a no-op. Errors are logged, never raised (the caller is already handling a failure).
    """
    trigger_id = go_trim_space(trigger_id or "")
    if not trigger_id:
        return
    t = triggers_t
    now = clock.db_now()
    try:
        async with sessions() as session, session.begin():
            await session.execute(
                sa.update(t).where(t.c.id == trigger_id, t.c.status.not_in(TERMINAL_TRIGGER_STATUSES)).values(
                    status=TriggerStatus.FAILED.value, last_error_code=(code or "worker_failed")[:64],
                    last_error=(error or "")[:ERROR_MAX_CHARS], completed_at=now, updated_at=now))
    except Exception:  # noqa: BLE001 - best effort by contract
        log.warning("could not mark trigger %s failed (%s)", trigger_id, code, exc_info=True)


__all__ = [
    "ERROR_MAX_CHARS",
    "FALLBACK_SENTENCE",
    "PreviewStatus",
    "WorkflowResult",
    "build_notification_payload",
    "preview_base_version",
    "fallback_text",
    "mark_trigger_failed",
    "run_trigger_workflow",
    "run_trigger_workflow_many",
    "trigger_dict",
]
