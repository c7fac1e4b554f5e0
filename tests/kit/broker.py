"""The one broker starter: a Tansu (Kafka-protocol) process on 127.0.0.1 and a free port, stopped on exit."""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Iterator

from smartflow_streams.cli.embedded import free_port, start_tansu, stop_process


@contextlib.contextmanager
def tansu_broker(log_path: pathlib.Path) -> Iterator[str]:
    """Run Tansu with its output in ``log_path``; yields the bootstrap address ``127.0.0.1:<port>``."""
    port = free_port()
    log = open(log_path, "wb")
    proc = start_tansu(port, log)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(proc)
        log.close()
