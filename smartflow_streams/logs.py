"""Logging setup shared by the relay, the worker and the CLI: one line per record, secrets scrubbed."""

from __future__ import annotations

import logging

from smartflow_streams.masking import install_log_masking


def setup_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    for name in ("aiokafka", "aiokafka.client"):
        logging.getLogger(name).addFilter(_drop_connect_failures)
    install_log_masking()


def _drop_connect_failures(record: logging.LogRecord) -> bool:
    """aiokafka logs ``Unable connect to ...`` at ERROR on every attempt; the caller's outage line
    (:class:`smartflow_streams.preflight.OutageLog`) reports it once per state change instead."""
    return not str(record.msg).startswith("Unable connect to")
