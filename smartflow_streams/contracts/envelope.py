"""The two JSON layers around every event (docs/upstream.md#two-json-layers) and the Go ``encoding/json`` rules they
must follow.

The rules themselves are implemented in :mod:`.gojson` (re-exported here for existing callers).

Layers:

1. :class:`OutboxEventShell` - stored in the outbox row's ``payload`` column:
   ``{"event_id"?, "event_type", "event_version"?, "aggregate_id"?, "payload": <raw JSON>}``.
2. :class:`KafkaEnvelope` - the Kafka message value:
   ``{"outbox_id", "event_id"?, "event_type", "event_version"?, "service_name"?, "aggregate_id"?, "payload"}``
   (``?`` = omitted when empty, Go ``omitempty``).

Byte compatibility with Go's ``json.Marshal`` (Go 1.23, the upstream toolchain):

* Keys in struct-field order, compact separators, UTF-8 text (no ``\\uXXXX`` for non-ASCII).
* ``<``, ``>``, ``&``, U+2028 and U+2029 are escaped as ``\\u003c``, ``\\u003e``, ``\\u0026``, ``\\u2028``,
  ``\\u2029`` - in plain strings **and** inside embedded raw JSON (Go compacts ``json.RawMessage`` with HTML
  escaping). Lone surrogates (invalid UTF-8 in Go) become U+FFFD.
* Raw JSON fields are kept as compact text: insignificant whitespace removed, every token (number spelling,
  string escapes) kept verbatim, so a payload re-embeds unchanged.
* ``NaN``/``Infinity`` and top-level values other than one JSON document are rejected (Go's ``json.Valid``).

Decoding follows ``json.Unmarshal`` into a struct: unknown keys are ignored; a JSON ``null`` for a non-pointer
field leaves the zero value; duplicate keys: the last wins; integers must be JSON integers within int64
(``42.0``, ``"42"`` and ``true`` are rejected). Limits: Go also matches keys case-insensitively (``"User_ID"``);
this decoder matches exact keys only (Go writers always emit the exact tag). Invalid UTF-8 bytes are replaced by
U+FFFD before decoding. Python-built payloads given as ``dict`` keep insertion order (Go sorts ``map`` keys) and
floats use Python's spelling.

Every validation failure raises :class:`~smartflow_streams.core.errors.ContractError` (never retried).
"""

from __future__ import annotations

# Size (~400 lines): the two wire layers (shell, envelope) share one Go-aware pydantic base and decoder; the Go
# encoding/json rules themselves are in gojson.py.

import json
import re
from collections.abc import Mapping
from enum import Enum
from typing import Annotated, Any, ClassVar, NamedTuple, Self

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, model_validator

from smartflow_streams.contracts.gojson import (
    INT64_MAX,
    INT64_MIN,
    GoObjectWriter,
    as_text as _as_text,
    compact_raw_json,
    compact_validated as _compact_validated,
    decode_fast as _decode_fast,
    decode_payload_last as _decode_payload_last,
    go_json_string,
    go_json_value,
    go_trim_space,
    split_json_object,
)
from smartflow_streams.core.errors import ContractError

DEFAULT_EVENT_VERSION = "v1"
"""Upstream shell/envelope default version (``outbox.DefaultEventVersion``); see
docs/upstream.md#version-v1-accepted."""

ACCEPTED_CONTRACT_VERSIONS: tuple[str, ...] = ("", "1", "v1")

_LEADING_OUTBOX_ID = re.compile(r'\A[ \t\n\r]*\{[ \t\n\r]*"outbox_id"[ \t\n\r]*:[ \t\n\r]*([1-9][0-9]{0,18})[ \t\n\r]*[,}]')



# -- pydantic base ----------------------------------------------------------------------------------------------


def _coerce_raw_json(value: Any) -> str:
    """Raw JSON field input: ``str``/``bytes`` are JSON text; other data is encoded; blank text means absent."""
    if isinstance(value, (str, bytes, bytearray)):
        text = _as_text(value)
        if text.strip(" \t\n\r") == "":
            return ""
        try:
            return compact_raw_json(text)
        except ContractError as exc:
            raise ValueError(str(exc)) from None
    try:
        return go_json_value(value)
    except ContractError as exc:
        raise ValueError(str(exc)) from None


RawJSON = Annotated[str, PlainValidator(_coerce_raw_json)]
"""Compact raw JSON text (``""`` = absent). Serialised embedded, never as a JSON string."""

GoInt = Annotated[int, Field(strict=True, ge=INT64_MIN, le=INT64_MAX)]
"""Go ``int``/``int64`` (64-bit): a JSON integer within int64."""


def describe_validation_error(model_name: str, exc: ValidationError) -> str:
    """One line per pydantic error, ``field: reason``, without pydantic's ``Value error,`` prefix."""
    reasons = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(part) for part in err.get("loc", ()))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        reasons.append(f"{loc}: {msg}" if loc else msg)
    return f"invalid {model_name}: " + "; ".join(reasons)


class GoWireModel(BaseModel):
    """Base for Go-compatible wire models: frozen, strict types, unknown keys ignored, errors as ContractError.

    Subclasses list their ``json.RawMessage`` fields in ``_raw_fields`` and implement ``to_json``. Entry points:
    the constructor (Python values; ``str`` for a raw field is JSON text) and :meth:`parse` (Go JSON text or a
    decoded ``dict``). ``model_validate_json`` is not Go-aware (a JSON string payload would be taken as raw text).
    """

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    _raw_fields: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ContractError(describe_validation_error(type(self).__name__, exc)) from None

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Self:
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError as exc:
            raise ContractError(describe_validation_error(cls.__name__, exc)) from None

    @model_validator(mode="before")
    @classmethod
    def _go_null_and_enums(cls, data: Any) -> Any:
        # Go: a JSON null leaves a non-pointer field at its zero value; enums travel as their string value.
        if not isinstance(data, Mapping):
            return data
        cleaned: dict[Any, Any] = {}
        for key, value in data.items():
            if value is None:
                continue
            cleaned[key] = value.value if isinstance(value, Enum) else value
        return cleaned

    @classmethod
    def parse(cls, raw: str | bytes | bytearray | Mapping[str, Any]) -> Self:
        """Decode Go-written JSON text (or an already-decoded ``dict``) and validate. Raises ContractError."""
        if isinstance(raw, Mapping):
            data = {
                key: (go_json_value(value) if key in cls._raw_fields else value) for key, value in raw.items()
            }
        else:
            text = _as_text(raw)
            fast = _decode_fast(text, cls._raw_fields)
            if fast is not None:
                data = fast
            else:
                try:
                    members = split_json_object(text)
                except ContractError as exc:
                    raise ContractError(f"invalid {cls.__name__}: {exc}") from None
                data = {key: (text if key in cls._raw_fields else value) for key, (value, text) in members.items()}
        return cls(**{str(key): value for key, value in data.items()})

    def to_json(self) -> str:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    def to_json_bytes(self) -> bytes:
        return self.to_json().encode("utf-8")

    def decoded(self, field: str = "payload") -> Any:
        """A raw JSON field decoded to Python data (``None`` when absent)."""
        text = getattr(self, field)
        return json.loads(text) if text else None


# -- layer 1: outbox event shell ---------------------------------------------------------------------------------


class OutboxEventShell(GoWireModel):
    """Go ``outbox.OutboxEventPayload``, stored in the outbox row's ``payload`` column.

    Construction validates: ``event_type`` non-blank, ``payload`` present and not ``null``. :meth:`parse` also
    trims every string with Go's ``TrimSpace`` and defaults a blank ``event_version`` to ``"v1"`` exactly like
    upstream's ``parseOutboxEventPayload`` - the very default behind docs/upstream.md#version-v1-accepted, which is why
    :func:`check_contract_version` accepts ``"v1"``. (Upstream accepts a ``null`` payload here; we reject it.)
    """

    _raw_fields: ClassVar[frozenset[str]] = frozenset({"payload"})

    event_id: str = ""
    event_type: str = ""
    event_version: str = ""
    aggregate_id: str = ""
    payload: RawJSON = ""

    @model_validator(mode="after")
    def _check_required(self) -> Self:
        if go_trim_space(self.event_type) == "":
            raise ValueError("event type is empty")
        if self.payload in ("", "null"):
            raise ValueError("payload is empty")
        return self

    @classmethod
    def parse(cls, raw: str | bytes | bytearray | Mapping[str, Any]) -> Self:
        if not isinstance(raw, Mapping):
            return cls._parse_text(raw)
        shell = super().parse(raw)
        version = go_trim_space(shell.event_version) or DEFAULT_EVENT_VERSION
        return shell.model_copy(
            update={
                "event_id": go_trim_space(shell.event_id),
                "event_type": go_trim_space(shell.event_type),
                "event_version": version,
                "aggregate_id": go_trim_space(shell.aggregate_id),
            }
        )

    @classmethod
    def _parse_text(cls, raw: str | bytes | bytearray) -> Self:
        return cls.model_construct(**parse_shell_fields(raw)._asdict())

    def to_json(self) -> str:
        out = GoObjectWriter()
        out.string("event_id", self.event_id, omitempty=True)
        out.string("event_type", self.event_type)
        out.string("event_version", self.event_version, omitempty=True)
        out.string("aggregate_id", self.aggregate_id, omitempty=True)
        out.raw("payload", self.payload)
        return out.text()


class ShellFields(NamedTuple):
    """A validated shell's fields without the model (the relay's hot path builds no pydantic object per row)."""

    event_id: str
    event_type: str
    event_version: str
    aggregate_id: str
    payload: str


def parse_shell_fields(raw: str | bytes | bytearray) -> ShellFields:
    """Parse shell text with exactly the rules of :meth:`OutboxEventShell.parse`, in one pass (~4x faster).

    JSON decoding validates the payload once; string fields must be strings (``null`` = absent, as in Go);
    fields are trimmed; a blank type or an empty/``null`` payload is rejected; a blank version becomes "v1".
    Raises :class:`ContractError` naming ``OutboxEventShell``.
    """
    return parse_shell_and_payload(raw)[0]


def parse_shell_and_payload(raw: str | bytes | bytearray) -> tuple[ShellFields, Any]:
    """:func:`parse_shell_fields` plus the shell's payload as decoded JSON (what ``json.loads(fields.payload)``
    returns), which the one decode of the shell yields anyway: the relay reads ``trace_id`` from it instead of
    decoding the payload a second time (every Go-written trigger payload has one: ~6 % of the relay's CPU)."""
    text = _as_text(raw)
    fast = _decode_payload_last(text)
    if fast is not None:
        values, payload_raw = fast
    else:
        try:
            members = split_json_object(text)
        except ContractError as exc:
            raise ContractError(f"invalid OutboxEventShell: {exc}") from None
        values = {key: value for key, (value, _) in members.items()}
        payload_raw = members["payload"][1] if "payload" in members else None
    fields: list[str] = []
    for name in ("event_id", "event_type", "event_version", "aggregate_id"):
        value = values.get(name)
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise ContractError(f"invalid OutboxEventShell: {name}: Input should be a valid string")
        fields.append(go_trim_space(value))
    event_id, event_type, event_version, aggregate_id = fields
    payload = _compact_validated(payload_raw) if payload_raw is not None else ""
    if not event_type:
        raise ContractError("invalid OutboxEventShell: event type is empty")
    if payload in ("", "null"):
        raise ContractError("invalid OutboxEventShell: payload is empty")
    return ShellFields(event_id, event_type, event_version or DEFAULT_EVENT_VERSION, aggregate_id,
                       payload), values.get("payload")


# -- layer 2: Kafka envelope -------------------------------------------------------------------------------------


class KafkaEnvelope(GoWireModel):
    """Go ``kafka.Envelope`` (@a6c1e5d), the Kafka message value.

    ``outbox_id`` must be > 0 and ``payload`` present and not ``null``; a blank ``event_type`` is accepted so the
    consumer can dead-letter the row by ``outbox_id`` (docs/upstream.md#consumer-loop step 3). For envelopes that do
    not parse at all,
    :func:`try_outbox_id` recovers the id when it can be trusted.
    """

    _raw_fields: ClassVar[frozenset[str]] = frozenset({"payload"})

    outbox_id: GoInt = 0
    event_id: str = ""
    event_type: str = ""
    event_version: str = ""
    service_name: str = ""
    aggregate_id: str = ""
    payload: RawJSON = ""

    @model_validator(mode="after")
    def _check_required(self) -> Self:
        if self.outbox_id <= 0:
            raise ValueError("outbox_id must be greater than 0")
        if self.payload in ("", "null"):
            raise ValueError("payload is missing")
        return self

    @classmethod
    def from_shell(cls, outbox_id: int, shell: OutboxEventShell, service_name: str = "") -> KafkaEnvelope:
        """The relay's envelope for a row: ``event_id`` falls back to the outbox id as a decimal string
        (docs/upstream.md#relay-loop)."""
        return cls(
            outbox_id=outbox_id,
            event_id=go_trim_space(shell.event_id) or str(outbox_id),
            event_type=shell.event_type,
            event_version=shell.event_version,
            service_name=go_trim_space(service_name),
            aggregate_id=shell.aggregate_id,
            payload=shell.payload,
        )

    @staticmethod
    def relay_bytes(outbox_id: int, shell: OutboxEventShell | ShellFields, service_name: str = "") -> bytes:
        """``from_shell(...).to_json_bytes()`` without re-validating the already-validated shell (the relay's hot
        path: about 4x cheaper per row). Same bytes, by construction: both go through :func:`_envelope_json`."""
        return _envelope_json(outbox_id, go_trim_space(shell.event_id) or str(outbox_id), shell.event_type,
                              shell.event_version, go_trim_space(service_name), shell.aggregate_id,
                              shell.payload).encode("utf-8")

    def to_json(self) -> str:
        return _envelope_json(self.outbox_id, self.event_id, self.event_type, self.event_version, self.service_name,
                              self.aggregate_id, self.payload)


def _envelope_json(outbox_id: int, event_id: str, event_type: str, event_version: str, service_name: str,
                   aggregate_id: str, payload: str) -> str:
    # Field order and omitempty of Go's kafka.Envelope; written out by hand (not GoObjectWriter): once per row.
    parts = ['{"outbox_id":', str(int(outbox_id))]
    if event_id:
        parts += (',"event_id":', go_json_string(event_id))
    parts += (',"event_type":', go_json_string(event_type))
    if event_version:
        parts += (',"event_version":', go_json_string(event_version))
    if service_name:
        parts += (',"service_name":', go_json_string(service_name))
    if aggregate_id:
        parts += (',"aggregate_id":', go_json_string(aggregate_id))
    parts += (',"payload":', payload or "null", "}")
    return "".join(parts)


def try_outbox_id(data: str | bytes | bytearray) -> int | None:
    """A positive int64 ``outbox_id`` from a message that :meth:`KafkaEnvelope.parse` rejected, else ``None``.

    Valid JSON objects: the top-level ``outbox_id`` if it is a JSON integer in 1..2**63-1. Broken JSON: only
    when the text *starts* with ``{"outbox_id": <digits>`` followed by ``,`` or ``}`` (how the Go relay and
    :meth:`KafkaEnvelope.to_json` write it), so an id nested in a payload is never mistaken for the row's.
    """
    try:
        text = _as_text(data)
    except ContractError:
        return None
    try:
        members = split_json_object(text)
    except ContractError:
        match = _LEADING_OUTBOX_ID.match(text)
        value: Any = int(match.group(1)) if match else None
    else:
        value = members.get("outbox_id", (None, ""))[0]
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 < value <= INT64_MAX else None


def check_contract_version(version: str | None) -> None:
    """Accept ``""``, ``"1"`` or ``"v1"`` (after Go ``TrimSpace``); anything else raises ContractError.

    Upstream's contract handlers accept only ``""`` and ``"1"``, yet the shell parser defaults a missing
    version to ``"v1"``, so an event published without an explicit version was dead-lettered
    (docs/upstream.md#version-v1-accepted).
    We deliberately accept ``"v1"`` as well to fix that; everything we publish still says ``"1"``.
    """
    normalized = go_trim_space(version or "")
    if normalized not in ACCEPTED_CONTRACT_VERSIONS:
        raise ContractError(
            f"event_version {version!r} not supported (accepted: {', '.join(repr(v) for v in ACCEPTED_CONTRACT_VERSIONS)})"
        )


__all__ = [
    "ACCEPTED_CONTRACT_VERSIONS",
    "DEFAULT_EVENT_VERSION",
    "GoInt",
    "GoObjectWriter",
    "GoWireModel",
    "KafkaEnvelope",
    "OutboxEventShell",
    "RawJSON",
    "check_contract_version",
    "compact_raw_json",
    "describe_validation_error",
    "ShellFields",
    "go_json_string",
    "go_json_value",
    "go_trim_space",
    "parse_shell_and_payload",
    "parse_shell_fields",
    "split_json_object",
    "try_outbox_id",
]
