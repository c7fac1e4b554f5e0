"""Preview decisions: what the triggered workflow (docs/upstream.md#trigger-workflow step 6) should propose, and
whether to notify.

A :class:`PreviewBuilder` turns a trigger into a :class:`PreviewDecision` (``None`` = no candidates, the trigger is
``closed``). Builders run **inside** the outbox consume transaction, which holds the outbox row and the trigger
row locks, so an implementation must be fast and must not do network I/O: keep it well under 1 s (the lock
holders block the other consumer of the same row and, on MySQL, wait at most ``innodb_lock_wait_timeout``,
50 s by default). Upstream ran the dry-run and an LLM candidate selection here
(docs/upstream.md#no-slow-work-in-transactions).
An LLM planner belongs before the workflow (e.g. precomputed into the trigger ``payload``) or after it (an
asynchronous follow-up that updates the ``ready`` preview); the builder then only reads what is already there.

:class:`DeterministicPreviewBuilder` is the default: a fixed Chinese sentence naming the target id, no I/O,
no links (a summary containing ``://`` or ``www.`` is dropped by the notification service for the fallback text).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from smartflow_streams.contracts.events import TargetType, TriggerType
from smartflow_streams.contracts.gotime import format_go_time

TARGET_NOUNS: dict[str, str] = {
    TargetType.TASK_POOL.value: "任务",
    TargetType.TASK_ITEM.value: "任务项",
    TargetType.SCHEDULE_EVENT.value: "日程",
}


@dataclass
class PreviewDecision:
    """The builder's answer.

    ``notify``: enqueue ``notification.feishu.requested``; ``write_preview``: the decision is worth a preview.
    When both are false the trigger is ``closed``; when either is true a ``ready`` preview is written (a
    notification always points at a preview). Where each field lands in ``active_schedule_previews`` (the Go
    services' columns):

    * ``summary_text`` -> ``explanation_text``; ``notification_summary`` -> ``notification_summary`` (the text
      sent to the user: <= 180 characters are kept by the notification service, no links);
    * ``preview`` (JSON-able detail) -> ``decision_json``;
    * ``candidates`` -> ``candidates_json`` (NULL when empty) and ``candidate_count``; ``selected_candidate_id``
      (the ``id`` of one of them; ``""`` or an unknown id leaves both NULL) -> ``selected_candidate_id`` and
      ``selected_candidate_json``;
    * ``base_version`` (<= 128 characters) -> ``base_version``; ``""`` = the workflow's default, a digest of the
      trigger's inputs (:func:`smartflow_streams.scheduler.workflow.preview_base_version`). A builder that reads
      the user's schedule should put the version of what it read here, so an apply step can detect a change.
    """

    notify: bool
    write_preview: bool
    summary_text: str
    notification_summary: str
    preview: dict[str, Any] = field(default_factory=dict)
    candidates: list[dict[str, Any]] = field(default_factory=list)
    selected_candidate_id: str = ""
    base_version: str = ""


@runtime_checkable
class PreviewBuilder(Protocol):
    """Build the decision for one trigger. Runs inside the DB transaction: fast, no network (module docstring)."""

    async def build(self, trigger: dict[str, Any], now: datetime) -> PreviewDecision | None:
        """``trigger``: the ``active_schedule_triggers`` row as a dict (``payload`` = decoded ``payload_json``);
        ``now``: the business now, aware (``mock_now`` for a mock-time trigger). ``None`` = no candidates."""
        ...


def _target_label(trigger: dict[str, Any]) -> str:
    noun = TARGET_NOUNS.get(str(trigger.get("target_type") or ""), "任务")
    target_id = int(trigger.get("target_id") or 0)
    return f"{noun} #{target_id}" if target_id > 0 else ""


class DeterministicPreviewBuilder:
    """Rule-based, instant builder: always a preview and a notification with a one-sentence summary, and one
    candidate (``c1``, selected) carrying the suggested action.

    * ``important_urgent_task``: "任务 #<id> 已到紧急阈值，建议在今天安排处理时段。"
    * ``unfinished_feedback``: "你反馈任务 #<id> 未完成，建议重新安排一个新的处理时段。" (without an id when
      ``target_id`` is 0).
    """

    async def build(self, trigger: dict[str, Any], now: datetime) -> PreviewDecision | None:
        trigger_type = str(trigger.get("trigger_type") or "")
        label = _target_label(trigger)
        if trigger_type == TriggerType.UNFINISHED_FEEDBACK.value:
            subject = f"你反馈{label}" if label else "你反馈有一项已安排的任务"
            summary = f"{subject}未完成，建议重新安排一个新的处理时段。"
            action = "reschedule_unfinished"
        else:
            summary = f"{label or '任务'} 已到紧急阈值，建议在今天安排处理时段。"
            action = "schedule_today"
        candidate = {"id": "c1", "action": action, "target_type": trigger.get("target_type"),
                     "target_id": int(trigger.get("target_id") or 0)}
        detail = {
            "generator": "deterministic",
            "trigger_id": trigger.get("id"),
            "trigger_type": trigger_type,
            "target_type": trigger.get("target_type"),
            "target_id": int(trigger.get("target_id") or 0),
            "feedback_id": trigger.get("feedback_id") or "",
            "suggestions": [{k: v for k, v in candidate.items() if k != "id"}],
            "generated_for": format_go_time(now),
        }
        return PreviewDecision(notify=True, write_preview=True, summary_text=summary,
                               notification_summary=summary, preview=detail, candidates=[candidate],
                               selected_candidate_id="c1")


__all__ = ["DeterministicPreviewBuilder", "PreviewBuilder", "PreviewDecision", "TARGET_NOUNS"]
