"""Start-up checks and outage logging: a line per state change, a reminder while down, secrets masked."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from smartflow_streams.cli.embedded import free_port
from smartflow_streams.core.preflight import (
    OutageLog, PortClaim, check_ports, database_where, describe, unreachable_brokers,
)


def test_outage_log_writes_state_changes_and_reminders_not_every_retry(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.outage")
    outage = OutageLog(log, "kafka broker", "127.0.0.1:9", reminder_seconds=0.3)
    with caplog.at_level(logging.WARNING, logger="test.outage"):
        for _ in range(50):
            outage.failed(ConnectionRefusedError(111, "Connection refused"), 1.0)
        assert len(caplog.records) == 1
        outage.failed(TimeoutError("timed out"), 2.0)  # another error class: a new state
        time.sleep(0.35)
        outage.failed(TimeoutError("timed out again"), 4.0)  # reminder due
        outage.recovered()
        outage.recovered()  # already up: nothing
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == ("kafka broker 127.0.0.1:9 not reachable (ConnectionRefusedError: [Errno 111] Connection "
                        "refused); retrying in 1.0 s")
    assert lines[1] == "kafka broker 127.0.0.1:9 still not reachable, now: TimeoutError: timed out; retrying in 2.0 s"
    assert lines[2].startswith("kafka broker 127.0.0.1:9 still not reachable after 0.")
    assert lines[2].endswith("(52 attempts): TimeoutError: timed out again; next retry in 4.0 s")
    assert lines[3].startswith("kafka broker 127.0.0.1:9 ok again after ") and lines[3].endswith("(52 failed attempts)")
    assert len(lines) == 4


def test_describe_masks_database_passwords() -> None:
    text = describe(RuntimeError("cannot open mysql+aiomysql://app:Secret123@db:3306/x"))
    assert text == "RuntimeError: cannot open mysql+aiomysql://app:****@db:3306/x"
    assert database_where("mysql+aiomysql://app:Secret123@10.0.0.5:3307/smart?charset=utf8mb4") == (
        "mysql 10.0.0.5:3307/smart (user app)")
    assert database_where("sqlite+aiosqlite:///./var/smartflow.db") == "sqlite file ./var/smartflow.db"


def test_port_checks_name_the_taken_port_and_its_setting() -> None:
    taken, free = free_port(), free_port()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        problems = check_ports([PortClaim("worker web server", "127.0.0.1", taken, "SMARTFLOW_WORKER__WEB_PORT"),
                                PortClaim("relay metrics endpoint", "127.0.0.1", free, "SMARTFLOW_RELAY__METRICS_PORT"),
                                PortClaim("disabled", "127.0.0.1", 0, "X")])
        assert unreachable_brokers([f"127.0.0.1:{taken}"]) == []
    assert problems == [f"worker web server: port 127.0.0.1:{taken} is not free (OSError: [Errno 98] Address already "
                        "in use); stop what listens there or set SMARTFLOW_WORKER__WEB_PORT to a free port"]
    [(server, error)] = unreachable_brokers([f"127.0.0.1:{free}"])
    assert server == f"127.0.0.1:{free}" and isinstance(error, ConnectionRefusedError)
