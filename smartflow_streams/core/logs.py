"""Logging setup shared by the relay, the worker and the CLI: one line per record, secrets scrubbed.

Two formats (``SMARTFLOW_LOG_FORMAT``): ``text`` (default, ``time LEVEL logger: message``) and ``json``, one JSON
object per line with the keys of :data:`JSON_KEYS`, for log shippers (Loki, Elasticsearch, Cloud Logging).
``service``, ``event_type``, ``outbox_id`` and ``trace_id`` come from the record's ``extra=`` (code that knows
them passes them: ``log.warning("...", extra=log_fields(service=..., outbox_id=...))``); unknown ones are
``null``. Masking is the same in both formats: :class:`~smartflow_streams.core.masking.MaskingFilter` scrubs the
message and the traceback, and :class:`JsonFormatter` scrubs every string field it adds.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from smartflow_streams.core.masking import MaskingFilter, install_log_masking, scrub_text

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONTEXT_KEYS = ("service", "event_type", "outbox_id", "trace_id")
JSON_KEYS = ("time", "level", "logger", "message", *CONTEXT_KEYS)
"""Always present in a JSON line, in this order; ``exc`` (the traceback) follows when there is one."""


def log_fields(**fields: Any) -> dict[str, Any]:
    """``extra=`` for a log call: only the context keys the JSON format knows (a typo fails loudly here)."""
    unknown = set(fields) - set(CONTEXT_KEYS)
    if unknown:
        raise ValueError(f"unknown log context keys {sorted(unknown)}; known: {CONTEXT_KEYS}")
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per record, no newline inside (tracebacks are a string field). Time is UTC, ISO 8601
    with milliseconds (``2026-01-31T08:00:00.123Z``). ``default_service`` fills ``service`` when the record
    has none (a worker that consumes one service)."""

    def __init__(self, default_service: str | None = None) -> None:
        super().__init__()
        self.default_service = default_service

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must still produce a line
            message = f"{record.msg!r} % {record.args!r}"
        created = time.gmtime(record.created)
        data: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", created) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": scrub_text(message),
        }
        for key in CONTEXT_KEYS:
            value = getattr(record, key, None)
            if key == "service" and value is None:
                value = self.default_service
            data[key] = scrub_text(value) if isinstance(value, str) else value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            data["exc"] = scrub_text(record.exc_text)
        return json.dumps(data, ensure_ascii=False, default=str)


def json_logging_config(default_service: str | None = None) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` with one stdout handler in JSON format and the masking filter.

    ``merge: True`` is mode's flag (the Faust worker): it keeps mode's root level (``-l``) and replaces its
    colour handler ``default`` with this one."""
    return {
        "version": 1,
        "merge": True,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter, "default_service": default_service}},
        "filters": {"masking": {"()": MaskingFilter}},
        "handlers": {"default": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout",
                                 "formatter": "json", "filters": ["masking"]}},
    }


def setup_logging(level: str = "info", log_format: str = "text", default_service: str | None = None) -> None:
    """Configure the root logger of the relay or the CLI, on stderr (the CLI's stdout is its output; the worker's
    logging goes through :func:`json_logging_config`)."""
    root = logging.getLogger()
    if log_format == "json":
        for handler in list(root.handlers):
            root.removeHandler(handler)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter(default_service))
        root.addHandler(handler)
        root.setLevel(getattr(logging, level.upper(), logging.INFO))
    else:
        logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), format=TEXT_FORMAT)
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    for name in ("aiokafka", "aiokafka.client"):
        logging.getLogger(name).addFilter(_drop_connect_failures)
    install_log_masking()


def _drop_connect_failures(record: logging.LogRecord) -> bool:
    """aiokafka logs ``Unable connect to ...`` at ERROR on every attempt; the caller's outage line
    (:class:`smartflow_streams.core.preflight.OutageLog`) reports it once per state change instead."""
    return not str(record.msg).startswith("Unable connect to")
