"""What one delivery attempt is given and what it returns: :class:`SendRequest`, :class:`SendResult`, :class:`Outcome`."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Outcome(str, Enum):
    SUCCESS = "success"
    TEMPORARY = "temporary_fail"
    PERMANENT = "permanent_fail"
    SKIPPED = "skipped"

    @property
    def retriable(self) -> bool:
        return self is Outcome.TEMPORARY


@dataclass(frozen=True)
class SendRequest:
    notification_id: int
    user_id: int
    trigger_id: str
    preview_id: str
    trigger_type: str
    target_type: str
    target_id: int
    target_url: str
    message_text: str
    fallback_used: bool
    trace_id: str
    attempt_count: int


@dataclass
class SendResult:
    outcome: Outcome
    error_code: str = ""
    error_message: str = ""
    provider_message_id: str = ""
    request_json: dict[str, Any] = field(default_factory=dict)
    response_json: dict[str, Any] = field(default_factory=dict)
    latency_seconds: float = 0.0
    retry_after_seconds: float | None = None
    rate_limit_wait_seconds: float = 0.0

