"""Response and request-body helpers shared by the worker's views.

Invariants:
- Every JSON body is scrubbed after serialisation (last line of defence): the operator-configured tokens in
  :data:`SERVED_SECRETS` (admin and API tokens) and any ``Bearer <x>`` credential become ``****``; bodies carry
  ``Cache-Control: no-store``. Free text read from the database (``last_error``, reasons, test messages) is
  scrubbed field by field with :func:`smartflow_streams.core.masking.scrub_text` by the views themselves. The body pass
  deliberately does not use the process-wide :data:`~smartflow_streams.core.masking.SECRETS` (anything an operator
  registers there for logs must not be able to mask the envelope).
- Upstream-compatible APIs answer with upstream's envelope: ``{"status": "10000", "info": "success", "data": ...}``
  on success, ``{"status": "<code>", "info": "<message>"}`` on error; HTTP 401 for 40014, 400 for other 4xxxx codes,
  500 for 50000.
- :func:`read_json_object` never raises on a bad body: it returns ``None`` for anything that is not a JSON object
  (empty, not UTF-8, invalid JSON, nested too deep for the parser, an array, a scalar); a body over aiohttp's
  ``client_max_size`` (1 MiB) raises :class:`aiohttp.web.HTTPRequestEntityTooLarge` (413) for the caller.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from smartflow_streams.core.masking import SecretRegistry

SUCCESS = "10000"
UNAUTHORIZED = 40014
MISSING_PARAM = 40004
WRONG_PARAM = 40005
INTERNAL = 50000


SERVED_SECRETS = SecretRegistry()
"""Operator-configured tokens (admin, API) that must never appear in a served body."""

_BEARER_RE = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")


def scrub_served(text: str) -> str:
    return _BEARER_RE.sub(r"\1****", SERVED_SECRETS.scrub(text))


def json_response(data: Any, status: int = 200) -> web.Response:
    text = scrub_served(json.dumps(data, ensure_ascii=False, default=str))
    return web.Response(text=text, status=status, content_type="application/json",
                        headers={"Cache-Control": "no-store"})


def error_response(status: int, message: str, **extra: Any) -> web.Response:
    """Our own routes' error shape: ``{"error": message, ...}``."""
    return json_response({"error": message, **extra}, status)


def upstream_ok(data: Any) -> web.Response:
    return json_response({"status": SUCCESS, "info": "success", "data": data})


def upstream_error(code: int, message: str) -> web.Response:
    http = 401 if code == UNAUTHORIZED else 500 if code >= INTERNAL else 400
    return json_response({"status": str(code), "info": message}, http)


async def read_json_object(request: web.Request) -> dict[str, Any] | None:
    try:
        raw = await request.read()
        value = json.loads(raw.decode("utf-8")) if raw.strip() else None
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: a body nested ~100,000 deep
        return None
    return value if isinstance(value, dict) else None


def query_int(request: web.Request, name: str, default: int, *, low: int = 1, high: int = 500) -> int:
    """An integer query parameter clamped to ``[low, high]``; raises ``ValueError`` when it is not an integer."""
    raw = request.query.get(name)
    if raw is None or raw.strip() == "":
        return default
    return max(low, min(high, int(raw)))
