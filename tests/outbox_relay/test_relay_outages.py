"""The relay as a real process against closed ports: one log line per state change (what, where with secrets
masked, the error, the next retry), a reminder while down, backoff instead of a line per retry, Ctrl-C without a
traceback, and a taken metrics port named with the setting that moves it."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from smartflow_streams.cli.embedded import free_port
from tests.kit.support import ROOT, SPAWNED

pytestmark = pytest.mark.slow


def relay_env(tmp_path: pathlib.Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTFLOW_")}
    env.update(SMARTFLOW_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/relay.db",
               SMARTFLOW_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}", SMARTFLOW_RELAY__METRICS_PORT="0",
               SMARTFLOW_RELAY__OUTAGE_REMINDER_SECONDS="5", SMARTFLOW_LOG_LEVEL="info", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def run_relay(env: dict[str, str], seconds: float, *args: str) -> tuple[int, str, float]:
    """Runs ``python -m outbox_relay`` for ``seconds``, then Ctrl-C (SIGINT); returns exit code, output, and how
    long it took to exit after the SIGINT."""
    proc = subprocess.Popen([sys.executable, "-m", "outbox_relay", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    SPAWNED.append(proc)  # type: ignore[arg-type]
    try:
        out, _ = proc.communicate(timeout=seconds)
        return proc.returncode, out, 0.0
    except subprocess.TimeoutExpired:
        pass
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, out, time.monotonic() - sent


def warnings(out: str) -> list[str]:
    return [line for line in out.splitlines() if " WARNING " in line or " ERROR " in line]


def test_no_broker_one_line_per_state_change_and_a_reminder(tmp_path: pathlib.Path) -> None:
    env = relay_env(tmp_path)
    bootstrap = env["SMARTFLOW_KAFKA_BOOTSTRAP"]
    code, out, stop_seconds = run_relay(env, 16, "--create-schema")
    assert code == 0, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    assert stop_seconds < 10
    lines = warnings(out)
    # before: ~175 lines in 40 s (a line per table per retry); now 2 first lines (producer, topic check) and
    # at most a reminder each per 5 s; retries back off 1, 2, 4, 8 s
    assert 2 <= len(lines) <= 8, "\n".join(lines)
    first = [line for line in lines if f"kafka broker {bootstrap} not reachable (KafkaConnectionError: " in line]
    assert len(first) == 1 and "retrying in 1.0 s" in first[0], "\n".join(lines)
    assert any(f"kafka broker {bootstrap} still not reachable after" in line and "next retry in" in line
               for line in lines), "\n".join(lines)
    assert all(bootstrap in line for line in lines), "\n".join(lines)


def test_unreachable_database_named_with_password_masked_and_clean_ctrl_c(tmp_path: pathlib.Path) -> None:
    port = free_port()
    env = relay_env(tmp_path, SMARTFLOW_DATABASE_URL=f"mysql+aiomysql://app:S3cretPw99@127.0.0.1:{port}/smart")
    code, out, stop_seconds = run_relay(env, 9)
    assert code == 0, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    assert stop_seconds < 5
    assert "S3cretPw99" not in out
    lines = warnings(out)
    assert 1 <= len(lines) <= 3, "\n".join(lines)  # before: one line per second with neither host nor cause
    assert re.search(rf"WARNING outbox_relay: database mysql 127\.0\.0\.1:{port}/smart \(user app\) not reachable "
                     r"\(OperationalError: \(2003, .Can't connect to MySQL server on '127\.0\.0\.1'.*\); retrying in "
                     r"1\.0 s", lines[0]), lines[0]


def test_taken_metrics_port_is_named_with_its_setting(tmp_path: pathlib.Path) -> None:
    port = free_port()
    env = relay_env(tmp_path, SMARTFLOW_RELAY__METRICS_PORT=str(port))
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        code, out, _ = run_relay(env, 60, "--create-schema")
    assert code == 2, out[-3000:]
    assert "Traceback" not in out
    assert (f"ERROR outbox_relay: relay metrics port 127.0.0.1:{port} cannot be bound (OSError: [Errno 98] "
            in out), out[-2000:]
    assert "set SMARTFLOW_RELAY__METRICS_PORT to a free port, or 0 to disable the endpoint" in out
