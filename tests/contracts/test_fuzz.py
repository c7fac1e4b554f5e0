"""Property-based fuzzing of the wire boundary (hypothesis): whatever bytes arrive, the parsers either return a
valid model or raise :class:`ContractError` (which the dispatcher turns into ``dead`` with the reason); nothing else
ever escapes, and ``try_outbox_id`` never raises. The DB-backed half of the same promise (every poison message ends
``dead`` or in ``outbox_dead_messages``) is tested with real processes in ``tests/faults`` case g.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings, strategies as st

from smartflow_streams.contracts.envelope import KafkaEnvelope, OutboxEventShell, try_outbox_id
from smartflow_streams.contracts.events import ActiveScheduleTriggeredPayload, FeishuNotificationRequestedPayload
from smartflow_streams.core.errors import ContractError

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)

ENVELOPE_FIELDS = ["outbox_id", "event_id", "event_type", "event_version", "aggregate_id", "service_name", "payload"]
TRIGGER_FIELDS = ["trigger_id", "user_id", "trigger_type", "source", "target_type", "target_id", "feedback_id",
                  "dedupe_key", "is_mock_time", "mock_now", "requested_at", "payload", "trace_id"]
NOTIFY_FIELDS = ["user_id", "trigger_id", "preview_id", "trigger_type", "target_type", "target_id", "dedupe_key",
                 "target_url", "summary_text", "fallback_used", "trace_id", "requested_at"]


def shaped(fields: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with the contract's own field names and random values (the likeliest real-world breakage)."""
    return st.dictionaries(st.sampled_from(fields), json_values, max_size=len(fields))


def only_contract_errors(parse: Any, raw: Any) -> None:
    try:
        parse(raw)
    except ContractError:
        pass


@FUZZ
@given(st.binary(max_size=300))
def test_envelope_bytes(raw: bytes) -> None:
    only_contract_errors(KafkaEnvelope.parse, raw)
    oid = try_outbox_id(raw)
    assert oid is None or 1 <= oid < 2**63


@FUZZ
@given(st.one_of(json_values, shaped(ENVELOPE_FIELDS)))
def test_envelope_json(value: Any) -> None:
    text = json.dumps(value)
    only_contract_errors(KafkaEnvelope.parse, text)
    oid = try_outbox_id(text)
    assert oid is None or 1 <= oid < 2**63


@FUZZ
@given(st.one_of(st.text(max_size=200), shaped(["event_id", "event_type", "event_version", "aggregate_id",
                                                 "payload"]).map(json.dumps)))
def test_outbox_shell(text: str) -> None:
    only_contract_errors(OutboxEventShell.parse, text)


@FUZZ
@given(st.one_of(json_values, shaped(TRIGGER_FIELDS)))
def test_trigger_payload(value: Any) -> None:
    only_contract_errors(ActiveScheduleTriggeredPayload.parse, json.dumps(value))


@FUZZ
@given(st.one_of(json_values, shaped(NOTIFY_FIELDS)))
def test_notification_payload(value: Any) -> None:
    only_contract_errors(FeishuNotificationRequestedPayload.parse, json.dumps(value))


@FUZZ
@given(st.integers(min_value=1, max_value=2**63 - 1), st.text(max_size=30))
def test_a_recoverable_outbox_id_is_found_in_a_truncated_envelope(outbox_id: int, tail: str) -> None:
    raw = f'{{"outbox_id":{outbox_id},"event_type":"x","payl{tail}'
    only_contract_errors(KafkaEnvelope.parse, raw)
    assert try_outbox_id(raw) == outbox_id


SHELL_FIELDS = ["event_id", "event_type", "event_version", "aggregate_id", "payload"]
_WS = st.sampled_from(["", "", " ", "\n  ", "\t"])


def _reference_shell_fields(text: str) -> tuple[str, ...] | str:
    """The general member-by-member path (no fast path), as a tuple or the error text."""
    from smartflow_streams.contracts.envelope import _compact_validated, go_trim_space, split_json_object

    try:
        members = split_json_object(text)
    except ContractError as exc:
        return f"invalid OutboxEventShell: {exc}"
    out = []
    for name in SHELL_FIELDS[:4]:
        value = members[name][0] if name in members else None
        value = "" if value is None else value
        if not isinstance(value, str):
            return f"invalid OutboxEventShell: {name}: Input should be a valid string"
        out.append(go_trim_space(value))
    payload = _compact_validated(members["payload"][1]) if "payload" in members else ""
    if not out[1]:
        return "invalid OutboxEventShell: event type is empty"
    if payload in ("", "null"):
        return "invalid OutboxEventShell: payload is empty"
    return (out[0], out[1], out[2] or "v1", out[3], payload)


@st.composite
def shell_texts(draw: st.DrawFn) -> str:
    """Shell-like objects written with random whitespace, key order, duplicate keys and nested "payload" keys."""
    keys = draw(st.lists(st.sampled_from(SHELL_FIELDS + ["x"]), max_size=7))
    nested = st.dictionaries(st.sampled_from(["payload", "a"]), json_values, max_size=3)
    values = [draw(st.text(max_size=8) if k not in ("payload", "x") else st.one_of(json_values, nested))
              for k in keys]
    ws = draw(_WS)
    sep = draw(st.sampled_from([":", ": ", " :"]))
    body = ("," + ws).join(f"{json.dumps(k)}{sep}{json.dumps(v, ensure_ascii=draw(st.booleans()))}"
                           for k, v in zip(keys, values))
    return "{" + ws + body + draw(_WS) + "}"


@FUZZ
@given(shell_texts())
def test_shell_fast_path_equals_general_path(text: str) -> None:
    from smartflow_streams.contracts.envelope import parse_shell_fields

    try:
        got: tuple[str, ...] | str = tuple(parse_shell_fields(text))
    except ContractError as exc:
        got = str(exc)
    assert got == _reference_shell_fields(text)


_TYPED = {"outbox_id": st.integers(min_value=1, max_value=2**63 - 1), "user_id": st.integers(1, 10**9),
          "target_id": st.integers(0, 10**9), "fallback_used": st.booleans(), "is_mock_time": st.booleans()}


@st.composite
def object_texts(draw: st.DrawFn, fields: list[str]) -> str:
    """Objects with a contract's field names (plus nested "payload" keys), random whitespace and key order; values
    mostly of the right JSON type (so many parse), sometimes anything."""
    keys = [k for k in draw(st.permutations(fields)) if draw(st.integers(0, 7))]  # each field kept 7 times in 8
    keys += draw(st.lists(st.sampled_from(fields + ["x"]), max_size=2))  # unknown keys and duplicates
    if "payload" in keys and draw(st.booleans()):  # where Go writes it
        keys = [k for k in keys if k != "payload"] + ["payload"]
    nested = st.dictionaries(st.sampled_from(["payload", "a"]), json_values, max_size=3)
    ws = draw(_WS)

    def value(key: str) -> Any:
        if draw(st.integers(0, 9)) == 0:
            return draw(st.one_of(json_values, nested))
        if key == "payload":
            return draw(nested)
        return draw(_TYPED.get(key, st.text(max_size=10)))

    body = ("," + ws).join(f"{json.dumps(k)}:{ws}{json.dumps(value(k), ensure_ascii=draw(st.booleans()))}"
                           for k in keys)
    return "{" + ws + body + "}"


def _outcome(parse: Any, text: str) -> Any:
    try:
        return parse(text).model_dump()
    except ContractError as exc:
        return str(exc)


@FUZZ
@given(st.data())
def test_model_fast_decode_equals_general_path(data: st.DataObject) -> None:
    from unittest import mock

    from smartflow_streams.contracts import envelope

    model, fields = data.draw(st.sampled_from([(KafkaEnvelope, ENVELOPE_FIELDS),
                                               (ActiveScheduleTriggeredPayload, TRIGGER_FIELDS),
                                               (FeishuNotificationRequestedPayload, NOTIFY_FIELDS)]))
    text = data.draw(object_texts(fields))
    fast = _outcome(model.parse, text)
    with mock.patch.object(envelope, "_decode_fast", return_value=None):
        assert fast == _outcome(model.parse, text)
