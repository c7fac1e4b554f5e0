"""Logging setup shared by the relay, the worker and the CLI: one line per record, secrets scrubbed."""

from __future__ import annotations

import logging

from smartflow_streams.core.masking import install_log_masking


def setup_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    install_log_masking()
