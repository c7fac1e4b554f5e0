"""Outbox event shell and Kafka envelope: Go byte compatibility, parsing rules, poison handling."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

import config
from smartflow_streams.contracts import (
    ACCEPTED_CONTRACT_VERSIONS,
    KafkaEnvelope,
    OutboxEventShell,
    check_contract_version,
    compact_raw_json,
    go_json_string,
    go_json_value,
    go_trim_space,
    try_outbox_id,
)
from smartflow_streams.core.errors import ContractError

TRIGGER_PAYLOAD = (
    '{"trigger_id":"ast_6f1c2a9e-8f0b-4c1d-9a7e-3b5d2c1e0f4a","user_id":42,"trigger_type":"important_urgent_task",'
    '"source":"worker_due_job","target_type":"task_pool","target_id":7,'
    '"dedupe_key":"42:important_urgent_task:task_pool:7:2026-04-30T10:00:00+08:00","is_mock_time":false,'
    '"requested_at":"2026-04-30T10:12:13.123456+08:00",'
    '"payload":{"job_id":"asj_task_42_7","urgency_threshold_at":"2026-04-30T10:05:00+08:00"},'
    '"trace_id":"trace_active_job_asj_task_42_7"}'
)

# What Go's json.Marshal(outbox.OutboxEventPayload{...}) stores in the outbox row (enqueue helper: event id = aggregate).
GO_SHELL = (
    '{"event_id":"ast_6f1c2a9e-8f0b-4c1d-9a7e-3b5d2c1e0f4a","event_type":"active_schedule.triggered",'
    '"event_version":"1","aggregate_id":"ast_6f1c2a9e-8f0b-4c1d-9a7e-3b5d2c1e0f4a","payload":' + TRIGGER_PAYLOAD + "}"
)

# What the Go relay writes to Kafka for that row (outbox id 1024, service active-scheduler).
GO_ENVELOPE = (
    '{"outbox_id":1024,"event_id":"ast_6f1c2a9e-8f0b-4c1d-9a7e-3b5d2c1e0f4a","event_type":"active_schedule.triggered",'
    '"event_version":"1","service_name":"active-scheduler","aggregate_id":"ast_6f1c2a9e-8f0b-4c1d-9a7e-3b5d2c1e0f4a",'
    '"payload":' + TRIGGER_PAYLOAD + "}"
)

# TriggerService.CreateAndPublish path: no event id in the shell, so the relay fills in the outbox id.
GO_SHELL_NO_EVENT_ID = (
    '{"event_type":"active_schedule.triggered","event_version":"1",'
    '"aggregate_id":"ast_6f1c2a9e-8f0b-4c1d-9a7e-3b5d2c1e0f4a","payload":' + TRIGGER_PAYLOAD + "}"
)
GO_ENVELOPE_FROM_OUTBOX_ID = (
    '{"outbox_id":77,"event_id":"77","event_type":"active_schedule.triggered","event_version":"1",'
    '"service_name":"active-scheduler","aggregate_id":"ast_6f1c2a9e-8f0b-4c1d-9a7e-3b5d2c1e0f4a",'
    '"payload":' + TRIGGER_PAYLOAD + "}"
)


@pytest.fixture(autouse=True)
def _shanghai_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "_settings", config.load_settings(time_zone="Asia/Shanghai"))


# -- Go JSON encoding helpers --------------------------------------------------------------------------------------


def test_go_json_string_escapes_like_go() -> None:
    assert go_json_string("a<b>&c") == '"a\\u003cb\\u003e\\u0026c"'
    assert go_json_string("\u2028\u2029") == '"\\u2028\\u2029"'
    assert go_json_string('q"\\') == '"q\\"\\\\"'
    assert go_json_string("\b\f\n\r\t\x01\x1f") == '"\\b\\f\\n\\r\\t\\u0001\\u001f"'
    assert go_json_string("你好，é\x7f") == '"你好，é\x7f"'
    assert go_json_string("x\ud800y") == '"x\ufffdy"'


def test_go_json_value_is_compact_and_html_escaped() -> None:
    assert go_json_value({"b": 1, "a": [True, None, "<"]}) == '{"b":1,"a":[true,null,"\\u003c"]}'
    with pytest.raises(ContractError):
        go_json_value(float("nan"))
    with pytest.raises(ContractError):
        go_json_value({"x": object()})


def test_compact_raw_json_keeps_tokens_verbatim() -> None:
    raw = '{ "a" : 1.50 ,\n "b" : [ 1e3 , -0 ] , "c" : "\\u00e9 x <y>" , "d":"a\\"b" }'
    assert compact_raw_json(raw) == '{"a":1.50,"b":[1e3,-0],"c":"\\u00e9 x \\u003cy\\u003e","d":"a\\"b"}'
    assert compact_raw_json(b'  "text"  ') == '"text"'
    assert compact_raw_json("null") == "null"


@pytest.mark.parametrize("raw", ["", "   ", "{", '{"a":NaN}', "Infinity", "[1] [2]", "{'a':1}", '{"a":1}x', "\ufeff{}"])
def test_compact_raw_json_rejects_invalid(raw: str) -> None:
    with pytest.raises(ContractError):
        compact_raw_json(raw)


def test_go_trim_space_matches_go_set() -> None:
    assert go_trim_space("\t\n\v\f\r \x85\xa0\u3000x y\u2003") == "x y"
    assert go_trim_space("\x1cx\x1f") == "\x1cx\x1f"  # Go does not treat U+001C..U+001F as space


# -- outbox event shell --------------------------------------------------------------------------------------------


def test_shell_go_sample_round_trips_byte_identical() -> None:
    shell = OutboxEventShell.parse(GO_SHELL)
    assert shell.event_type == "active_schedule.triggered"
    assert shell.event_version == "1"
    assert shell.payload == TRIGGER_PAYLOAD
    assert shell.to_json() == GO_SHELL


def test_shell_parse_defaults_version_to_v1_like_upstream() -> None:
    shell = OutboxEventShell.parse('{"event_type":"memory.extract.requested","payload":{"a":1}}')
    assert shell.event_version == "v1"
    assert shell.event_id == "" and shell.aggregate_id == ""
    blank = OutboxEventShell.parse('{"event_type":"x","event_version":"  ","payload":{}}')
    assert blank.event_version == "v1"


def test_shell_parse_trims_like_go_and_ignores_unknown_keys() -> None:
    text = '{"event_id":" e1 ","event_type":" x.y ","event_version":" 1 ","aggregate_id":" a ","extra":[1],"payload":[1, 2]}'
    shell = OutboxEventShell.parse(text.encode())
    assert (shell.event_id, shell.event_type, shell.event_version, shell.aggregate_id) == ("e1", "x.y", "1", "a")
    assert shell.to_json() == '{"event_id":"e1","event_type":"x.y","event_version":"1","aggregate_id":"a","payload":[1,2]}'


def test_shell_to_json_omits_empty_optional_fields() -> None:
    shell = OutboxEventShell(event_type="x", payload={"k": "v"})
    assert shell.to_json() == '{"event_type":"x","payload":{"k":"v"}}'


def test_shell_constructor_compacts_payload_text() -> None:
    shell = OutboxEventShell(event_type="x", payload='{ "k" : "<v>" ,"n": 1.0 }')
    assert shell.payload == '{"k":"\\u003cv\\u003e","n":1.0}'
    assert shell.decoded() == {"k": "<v>", "n": 1.0}


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        "null",
        '"{}"',
        "{}",
        '{"event_type":"","payload":{}}',
        '{"event_type":"   ","payload":{}}',
        '{"payload":{}}',
        '{"event_type":"x"}',
        '{"event_type":"x","payload":null}',
        '{"event_type":5,"payload":{}}',
        '{"event_type":"x","event_id":7,"payload":{}}',
        '{"event_type":"x","payload":{}} trailing',
    ],
)
def test_shell_parse_rejects_poison(text: str) -> None:
    with pytest.raises(ContractError):
        OutboxEventShell.parse(text)


def test_shell_constructor_rejects_invalid_with_contract_error() -> None:
    with pytest.raises(ContractError):
        OutboxEventShell(event_type="x", payload="{not json")
    with pytest.raises(ContractError):
        OutboxEventShell(event_type=" ", payload="{}")
    with pytest.raises(ContractError):
        OutboxEventShell(event_type="x", payload="   ")


def test_shell_is_frozen() -> None:
    shell = OutboxEventShell(event_type="x", payload="{}")
    with pytest.raises(ValidationError):
        shell.event_type = "y"  # type: ignore[misc]


# -- Kafka envelope ------------------------------------------------------------------------------------------------


def test_envelope_go_sample_round_trips_byte_identical() -> None:
    envelope = KafkaEnvelope.parse(GO_ENVELOPE.encode())
    assert envelope.outbox_id == 1024
    assert envelope.service_name == "active-scheduler"
    assert envelope.payload == TRIGGER_PAYLOAD
    assert envelope.to_json_bytes() == GO_ENVELOPE.encode()
    assert envelope.to_json() == GO_ENVELOPE


def test_envelope_minimal_omits_empty_fields() -> None:
    text = '{"outbox_id":1,"event_type":"","payload":{}}'
    envelope = KafkaEnvelope.parse(text)
    assert envelope.event_type == ""  # blank type still parses so the row can be dead-lettered by id
    assert envelope.to_json() == text


def test_envelope_from_shell_matches_go_relay() -> None:
    shell = OutboxEventShell.parse(GO_SHELL)
    assert KafkaEnvelope.from_shell(1024, shell, "active-scheduler").to_json() == GO_ENVELOPE
    no_id = OutboxEventShell.parse(GO_SHELL_NO_EVENT_ID)
    assert KafkaEnvelope.from_shell(77, no_id, "active-scheduler").to_json() == GO_ENVELOPE_FROM_OUTBOX_ID


def test_envelope_from_shell_keeps_v1_default_and_service_optional() -> None:
    shell = OutboxEventShell.parse('{"event_type":"memory.extract.requested","payload":{"a":1}}')
    envelope = KafkaEnvelope.from_shell(9, shell)
    assert envelope.to_json() == '{"outbox_id":9,"event_id":"9","event_type":"memory.extract.requested","event_version":"v1","payload":{"a":1}}'


def test_envelope_from_shell_rejects_bad_outbox_id() -> None:
    shell = OutboxEventShell(event_type="x", payload="{}")
    with pytest.raises(ContractError):
        KafkaEnvelope.from_shell(0, shell)


def test_envelope_parse_accepts_whitespace_duplicates_and_unknown_keys() -> None:
    text = '{\n  "outbox_id": 5,\n  "outbox_id": 6,\n  "biz_type": "legacy",\n  "event_type": "t",\n  "payload": { "a" : [ 1 , 2 ] }\n}'
    envelope = KafkaEnvelope.parse(text)
    assert envelope.outbox_id == 6
    assert envelope.to_json() == '{"outbox_id":6,"event_type":"t","payload":{"a":[1,2]}}'


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"garbage",
        b"[1,2]",
        b"null",
        b'{"event_type":"t","payload":{}}',
        b'{"outbox_id":0,"event_type":"t","payload":{}}',
        b'{"outbox_id":-3,"event_type":"t","payload":{}}',
        b'{"outbox_id":"5","event_type":"t","payload":{}}',
        b'{"outbox_id":5.0,"event_type":"t","payload":{}}',
        b'{"outbox_id":true,"event_type":"t","payload":{}}',
        b'{"outbox_id":9223372036854775808,"event_type":"t","payload":{}}',
        b'{"outbox_id":5,"event_type":"t"}',
        b'{"outbox_id":5,"event_type":"t","payload":null}',
        b'{"outbox_id":5,"event_type":7,"payload":{}}',
        b'{"outbox_id":5,"event_type":"t","payload":{}',
    ],
)
def test_envelope_parse_rejects_poison(text: bytes) -> None:
    with pytest.raises(ContractError):
        KafkaEnvelope.parse(text)


def test_envelope_max_int64_outbox_id() -> None:
    envelope = KafkaEnvelope.parse('{"outbox_id":9223372036854775807,"event_type":"t","payload":1}')
    assert envelope.to_json() == '{"outbox_id":9223372036854775807,"event_type":"t","payload":1}'


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"outbox_id":12,"event_type":5,"payload":{}}', 12),
        (b'{"outbox_id":12}', 12),
        ('{"event_type":"t","outbox_id":13,"payload":null}', 13),
        (b'{"outbox_id":14,"event_type":"t","payload":{"x":', 14),
        (b' {\n "outbox_id" : 15 , "payload": broken', 15),
        (b'{"outbox_id":0,"payload":{}}', None),
        (b'{"outbox_id":-1}', None),
        (b'{"outbox_id":"12"}', None),
        (b'{"outbox_id":true}', None),
        (b'{"outbox_id":1.5}', None),
        (b'{"outbox_id":9223372036854775808}', None),
        (b'{"payload":{"outbox_id":16},"x":', None),
        (b'{"event_type":"t","outbox_id":17,', None),
        (b"[17]", None),
        (b"garbage", None),
        (b"", None),
    ],
)
def test_try_outbox_id(data: bytes | str, expected: int | None) -> None:
    assert try_outbox_id(data) == expected


# -- versions ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["", "1", "v1", " 1 ", None])
def test_check_contract_version_accepts(version: str | None) -> None:
    check_contract_version(version)


@pytest.mark.parametrize("version", ["2", "V1", "1.0", "v2", "one"])
def test_check_contract_version_rejects(version: str) -> None:
    with pytest.raises(ContractError):
        check_contract_version(version)


def test_accepted_versions_constant() -> None:
    assert ACCEPTED_CONTRACT_VERSIONS == ("", "1", "v1")


def test_model_validate_also_raises_contract_error() -> None:
    with pytest.raises(ContractError, match="outbox_id"):
        KafkaEnvelope.model_validate({"outbox_id": 0, "payload": "{}"})


def test_relay_bytes_equal_from_shell_bytes() -> None:
    from smartflow_streams.contracts.envelope import KafkaEnvelope, OutboxEventShell

    for text in ('{"event_type":"a.b","payload":{"x":"<&>","n":1.50}}',
                 '{"event_id":" e1 ","event_type":"a.b","event_version":"1","aggregate_id":"k","payload":[1, 2]}'):
        shell = OutboxEventShell.parse(text)
        assert KafkaEnvelope.relay_bytes(7, shell, " svc ") == KafkaEnvelope.from_shell(7, shell, " svc ").to_json_bytes()


@pytest.mark.parametrize("raw", [
    '{"event_id":"e1","event_type":"t","event_version":"1","aggregate_id":"a","payload":{"trace_id":"x","n":1.50}}',
    '{"event_type":"t","payload":{"trace_id":"x"},"event_id":"e"}',  # payload not last: general path
    '{"event_type":"t","payload":{"a":1},"payload":{"trace_id":"second"}}',  # duplicate key: last wins
    '{ "event_type" : "t" , "payload" : { "trace_id" : "t\\u003c1\\u003e" , "payload" : { "trace_id" : "inner" } } }',
    '{"event_type":"t","payload":[1,{"trace_id":"in a list"}]}',
    '{"event_type":"t","payload":"just a string"}',
    '{"event_type":"t","payload":{"trace_id":7}}',
])
def test_shell_and_payload_equals_fields_then_json_loads(raw: str) -> None:
    """The relay's one-decode path gives the same fields and the same payload value as decoding the payload text
    again (what it did before)."""
    from smartflow_streams.contracts.envelope import parse_shell_and_payload, parse_shell_fields

    fields, payload = parse_shell_and_payload(raw)
    assert fields == parse_shell_fields(raw)
    assert payload == json.loads(fields.payload)
