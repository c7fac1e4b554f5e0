"""Go ``encoding/json`` rules, byte-exact, for the wire models (:mod:`.envelope`, :mod:`.events`).

Encoding follows Go's ``json.Marshal`` (Go 1.23): compact separators, UTF-8 text, ``<``, ``>``, ``&``, U+2028,
U+2029 escaped as ``\\u003c``... in plain strings and inside embedded raw JSON, lone surrogates as U+FFFD; raw JSON
is compacted with every token kept verbatim; ``NaN``/``Infinity`` and trailing data are rejected (``json.Valid``).
Decoding helpers split an object into ``key -> (value, raw text)`` with the last duplicate key winning, as
``json.Unmarshal``. ``go_trim_space`` is Go's ``strings.TrimSpace`` (its ``unicode.IsSpace`` set, which differs from
Python's ``str.strip``). Integers on the wire are int64 (:data:`INT64_MIN`..:data:`INT64_MAX`). Hand-written on
purpose: no library reproduces Go's output byte for byte. Errors raise
:class:`~smartflow_streams.core.errors.ContractError`.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

from smartflow_streams.core.errors import ContractError

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

# Go's unicode.IsSpace set, used by strings.TrimSpace (Python's str.strip also strips U+001C..U+001F).
_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
_JSON_WS = re.compile(r"[ \t\n\r]*")
_STRING_OR_WS = re.compile(r'("(?:[^"\\]|\\.)*")|[ \t\n\r]+', re.DOTALL)
_ANY_WS = re.compile(r"[ \t\n\r]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_HTML_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_HTML_UNSAFE = re.compile("[<>&\u2028\u2029]")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


# -- Go encoding/json helpers -----------------------------------------------------------------------------------


def go_trim_space(value: str) -> str:
    """Go ``strings.TrimSpace``."""
    return value.strip(_GO_SPACE)


def _html_escape(text: str) -> str:
    if not _HTML_UNSAFE.search(text):
        return text
    return _HTML_UNSAFE.sub(lambda m: _HTML_ESCAPES[m.group(0)], text)


_PLAIN_STRING = re.compile('[^"\\\\\x00-\x1f<>&\u2028\u2029\ud800-\udfff\x7f]*')


def go_json_string(value: str) -> str:
    """A JSON string literal exactly as Go's ``json.Marshal`` writes it."""
    if _PLAIN_STRING.fullmatch(value):  # nothing to escape (the common case for ids and types): skip json.dumps
        return f'"{value}"'
    clean = _SURROGATE.sub("\ufffd", value)
    return _html_escape(json.dumps(clean, ensure_ascii=False))


def go_json_value(value: Any) -> str:
    """Encode JSON-able Python data the way Go would (compact, UTF-8, HTML-escaped). Dict order is kept."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ContractError(f"value is not JSON-encodable: {exc}") from None
    return _html_escape(_SURROGATE.sub("\ufffd", text))


def as_text(data: str | bytes | bytearray) -> str:
    if isinstance(data, (bytes, bytearray)):
        return bytes(data).decode("utf-8", errors="replace")
    if isinstance(data, str):
        return data
    raise ContractError(f"expected JSON text, got {type(data).__name__}")


def _decode_value(text: str, index: int) -> tuple[Any, int]:
    try:
        return _DECODER.raw_decode(text, index)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, NaN/Infinity, absurd nesting
        raise ContractError(f"invalid JSON: {exc}") from None


def _skip_ws(text: str, index: int) -> int:
    match = _JSON_WS.match(text, index)
    return match.end() if match else index


def compact_raw_json(raw: str | bytes | bytearray) -> str:
    """Validate one JSON document and return it compacted like Go's ``json.Compact`` + HTML escaping.

    Tokens are kept verbatim (``1.50`` stays ``1.50``, ``"\\u00e9"`` stays escaped). Raises ContractError.
    """
    text = as_text(raw)
    start = _skip_ws(text, 0)
    if start == len(text):
        raise ContractError("invalid JSON: empty document")
    _, end = _decode_value(text, start)
    if _skip_ws(text, end) != len(text):
        raise ContractError(f"invalid JSON: extra data after the document at offset {end}")
    return compact_validated(text[start:end])


def compact_validated(body: str) -> str:
    """Compaction + HTML escaping of JSON text that is already known to be one valid document."""
    # Fast paths (the relay calls this for every row): Go and our enqueue write compact JSON, so usually there is
    # no whitespace at all; otherwise a template substitution keeps strings and drops whitespace without a
    # Python callback per token.
    if _ANY_WS.search(body):
        body = _STRING_OR_WS.sub(r"\1", body)
    return _html_escape(body)


def split_json_object(data: str | bytes | bytearray) -> dict[str, tuple[Any, str]]:
    """Decode a top-level JSON object into ``{key: (decoded value, raw value text)}`` (last duplicate wins)."""
    text = as_text(data)
    index = _skip_ws(text, 0)
    if index >= len(text) or text[index] != "{":
        raise ContractError("invalid JSON: expected a JSON object")
    members: dict[str, tuple[Any, str]] = {}
    index = _skip_ws(text, index + 1)
    if index < len(text) and text[index] == "}":
        return _finish_object(text, index + 1, members)
    while True:
        if index >= len(text) or text[index] != '"':
            raise ContractError(f"invalid JSON: expected an object key at offset {index}")
        key, index = _decode_value(text, index)
        index = _skip_ws(text, index)
        if index >= len(text) or text[index] != ":":
            raise ContractError(f"invalid JSON: expected ':' at offset {index}")
        value_start = _skip_ws(text, index + 1)
        value, index = _decode_value(text, value_start)
        members[key] = (value, text[value_start:index])
        index = _skip_ws(text, index)
        if index < len(text) and text[index] == ",":
            index = _skip_ws(text, index + 1)
            continue
        if index < len(text) and text[index] == "}":
            return _finish_object(text, index + 1, members)
        raise ContractError(f"invalid JSON: expected ',' or '}}' at offset {index}")


def decode_payload_last(text: str) -> tuple[dict[str, Any], str] | None:
    """Fast path of :func:`split_json_object` for objects whose *last* member is ``"payload"`` (how Go's
    ``json.Marshal`` and :meth:`OutboxEventShell.to_json` write shells): ``(decoded object, raw payload text)``,
    or ``None`` when the shape does not match (the caller then takes the general path).

    The whole text is decoded by the C JSON decoder (~10x cheaper than the member-by-member split). The raw
    payload is found from the right: an occurrence of ``"payload":`` preceded (after whitespace) by ``{`` or
    ``,`` whose value ends right before the final ``}``. In valid JSON such a quote can only open an object key
    (a quote inside a string is escaped, and a closing quote cannot be followed by ``payload``), and only a
    top-level member's value can end right before the final ``}``, so the result equals the general path's.
    At most 8 candidates are tried (deeper nesting of ``"payload"`` keys takes the general path).
    """
    last = len(text) - 1
    if last < 0 or text[last] != "}":
        return None
    try:
        obj = _DECODER.decode(text)
    except (ValueError, RecursionError):
        return None
    if type(obj) is not dict or "payload" not in obj:
        return None
    pos = last
    for _ in range(8):
        pos = text.rfind('"payload":', 0, pos)
        if pos < 1:
            return None
        before = pos - 1
        while before > 0 and text[before] in " \t\n\r":
            before -= 1
        if text[before] not in ",{":
            continue
        start = _skip_ws(text, pos + 10)
        try:
            _, end = _DECODER.raw_decode(text, start)
        except (ValueError, RecursionError):
            continue
        if _skip_ws(text, end) == last:
            return obj, text[start:end]
    return None


def decode_fast(text: str, raw_fields: frozenset[str]) -> dict[str, Any] | None:
    """What ``split_json_object`` + keeping the raw text of ``raw_fields`` gives, through the C decoder: for models
    without raw fields, and for those whose only raw field is a last ``"payload"`` (:func:`decode_payload_last`).
    ``None``: take the general path (also for invalid input, so errors read the same)."""
    if not raw_fields:
        try:
            obj = _DECODER.decode(text)
        except (ValueError, RecursionError):
            return None
        return obj if type(obj) is dict else None
    if raw_fields == _PAYLOAD_ONLY:
        fast = decode_payload_last(text)
        if fast is not None:
            obj, payload_raw = fast
            obj["payload"] = payload_raw
            return obj
    return None


_PAYLOAD_ONLY = frozenset({"payload"})


def _finish_object(text: str, index: int, members: dict[str, tuple[Any, str]]) -> dict[str, tuple[Any, str]]:
    if _skip_ws(text, index) != len(text):
        raise ContractError(f"invalid JSON: extra data after the object at offset {index}")
    return members


@functools.lru_cache(maxsize=256)
def _key_literal(key: str) -> str:
    return go_json_string(key)


class GoObjectWriter:
    """Builds one Go-marshalled JSON object field by field, applying ``omitempty`` per call."""

    def __init__(self) -> None:
        self._parts: list[str] = []

    def _add(self, key: str, fragment: str) -> None:
        self._parts.append(f"{_key_literal(key)}:{fragment}")

    def string(self, key: str, value: str, *, omitempty: bool = False) -> None:
        if not (omitempty and value == ""):
            self._add(key, go_json_string(value))

    def int(self, key: str, value: int, *, omitempty: bool = False) -> None:
        if not (omitempty and value == 0):
            self._add(key, str(int(value)))

    def bool(self, key: str, value: bool) -> None:
        self._add(key, "true" if value else "false")

    def raw(self, key: str, value: str | None, *, omitempty: bool = False) -> None:
        """``json.RawMessage``: omitted when empty with omitempty, ``null`` when empty without it."""
        if not value:
            if not omitempty:
                self._add(key, "null")
            return
        self._add(key, value)

    def text(self) -> str:
        return "{" + ",".join(self._parts) + "}"
