"""Wire contracts shared with the upstream Go services: shell, Kafka envelope, event payloads, dedupe keys; Go JSON
(:mod:`.gojson`) and Go time (:mod:`.gotime`) rules kept apart from the models that use them.

Everything here is byte-compatible with Go's ``encoding/json`` output so Go and Python can run side by side;
every validation failure raises :class:`~smartflow_streams.core.errors.ContractError` (poison, never retried).
"""

from smartflow_streams.contracts.dedupe import (
    conversation_id_for_trigger,
    job_dedupe_key,
    job_id,
    new_preview_id,
    new_trigger_id,
    notification_dedupe_key,
    session_id_for_trigger,
    trigger_dedupe_key,
)
from smartflow_streams.contracts.envelope import (
    ACCEPTED_CONTRACT_VERSIONS,
    DEFAULT_EVENT_VERSION,
    KafkaEnvelope,
    OutboxEventShell,
    check_contract_version,
    try_outbox_id,
)
from smartflow_streams.contracts.gojson import compact_raw_json, go_json_string, go_json_value, go_trim_space
from smartflow_streams.contracts.events import (
    ACTIVE_SCHEDULE_TRIGGERED,
    ACTIVE_SCHEDULE_TRIGGERED_VERSION,
    NOTIFICATION_FEISHU_REQUESTED,
    NOTIFICATION_FEISHU_REQUESTED_VERSION,
    ActiveScheduleTriggeredPayload,
    FeishuNotificationRequestedPayload,
    TargetType,
    TriggerSource,
    TriggerType,
)

__all__ = [
    "ACCEPTED_CONTRACT_VERSIONS",
    "ACTIVE_SCHEDULE_TRIGGERED",
    "ACTIVE_SCHEDULE_TRIGGERED_VERSION",
    "DEFAULT_EVENT_VERSION",
    "NOTIFICATION_FEISHU_REQUESTED",
    "NOTIFICATION_FEISHU_REQUESTED_VERSION",
    "ActiveScheduleTriggeredPayload",
    "FeishuNotificationRequestedPayload",
    "KafkaEnvelope",
    "OutboxEventShell",
    "TargetType",
    "TriggerSource",
    "TriggerType",
    "check_contract_version",
    "compact_raw_json",
    "conversation_id_for_trigger",
    "go_json_string",
    "go_json_value",
    "go_trim_space",
    "job_dedupe_key",
    "job_id",
    "new_preview_id",
    "new_trigger_id",
    "notification_dedupe_key",
    "session_id_for_trigger",
    "trigger_dedupe_key",
    "try_outbox_id",
]
