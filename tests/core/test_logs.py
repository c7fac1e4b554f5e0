"""The JSON log format in-process: keys, context fields, tracebacks and masking (the real-process check of both
formats is tests/deploy/test_monitoring.py)."""

from __future__ import annotations

import io
import json
import logging
import logging.config

import pytest

from smartflow_streams.core.logs import JSON_KEYS, JsonFormatter, json_logging_config, log_fields
from smartflow_streams.core.masking import SECRETS, MaskingFilter


def _logger(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(MaskingFilter())
    logger = logging.getLogger(f"test.json.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def test_one_object_per_line_with_context_and_default_service():
    logger, stream = _logger(JsonFormatter(default_service="notification"))
    logger.info("consumed outbox_id=%d", 7, extra=log_fields(outbox_id=7, event_type="notification.feishu.requested",
                                                             trace_id="trace_abc"))
    logger.warning("no context\nsecond line")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert list(first) == list(JSON_KEYS)
    assert first["message"] == "consumed outbox_id=7" and first["outbox_id"] == 7 and first["trace_id"] == "trace_abc"
    assert first["service"] == "notification" and first["level"] == "info" and first["time"].endswith("Z")
    assert second["message"] == "no context\nsecond line" and second["outbox_id"] is None


def test_secrets_masked_in_message_fields_and_traceback():
    SECRETS.add("json-log-secret-123", pin=True)
    logger, stream = _logger(JsonFormatter())
    try:
        raise RuntimeError("POST failed: token json-log-secret-123")
    except RuntimeError:
        logger.exception("send failed with json-log-secret-123", extra=log_fields(trace_id="json-log-secret-123"))
    text = stream.getvalue()
    assert "json-log-secret-123" not in text
    line = json.loads(text)
    assert "RuntimeError" in line["exc"] and "****" in line["exc"] and line["trace_id"] == "****"


def test_unknown_context_key_is_refused():
    with pytest.raises(ValueError, match="unknown log context keys"):
        log_fields(user_id=1)


def test_worker_dict_config_builds_a_json_handler():
    cfg = json_logging_config("active-scheduler")
    cfg.pop("merge")
    stream = io.StringIO()
    cfg["handlers"]["default"]["stream"] = stream
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        logging.config.dictConfig({**cfg, "root": {"level": "INFO", "handlers": ["default"]}})
        logging.getLogger("faust.worker").info("ready")
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    line = json.loads(stream.getvalue())
    assert line["logger"] == "faust.worker" and line["service"] == "active-scheduler"
