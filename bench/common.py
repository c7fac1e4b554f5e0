"""Shared benchmark plumbing: Tansu and MariaDB (from the test kit, ``tests.kit``), bulk-fill outbox tables,
percentiles, RSS, machine info. Benchmarks run from the repository root (``python bench/<name>.py`` puts the root
on ``sys.path``, like pytest's ``pythonpath = ["."]``), so ``tests.kit`` is imported as a package, never by
adding ``tests/`` to the path."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import platform
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

import config
from smartflow_streams.core import clock
from tests.kit.broker import tansu_broker
from tests.kit.mariadb import MariaDBServer, new_database

ROOT = pathlib.Path(__file__).resolve().parent.parent
EVENT = "notification.feishu.requested"


@contextlib.contextmanager
def tansu() -> Iterator[str]:
    with tansu_broker(ROOT / "var" / "bench-tansu.log") as bootstrap:
        yield bootstrap


@contextlib.contextmanager
def mariadb() -> Iterator[str]:
    datadir = ROOT / "var" / f"bench-mysql-{uuid.uuid4().hex[:6]}"
    server = MariaDBServer(datadir)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(datadir, ignore_errors=True)


new_mysql_database = new_database  # (server_url, prefix) -> URL of a fresh empty database


def sqlite_url() -> str:
    path = ROOT / "var" / f"bench-{uuid.uuid4().hex[:6]}.sqlite"
    return f"sqlite+aiosqlite:///{path}"


def shell_json(i: int) -> str:
    payload = {"user_id": 1000 + i % 500, "trigger_id": f"ast_{uuid.UUID(int=i)}", "preview_id": f"asp_{i}",
               "trigger_type": "important_urgent_task", "target_type": "task_pool", "target_id": i,
               "dedupe_key": f"{1000 + i % 500}:important_urgent_task:2026-04-30T10:00:00+08:00",
               "target_url": "/assistant/00000000-0000-0000-0000-000000000000", "summary_text": "任务需要安排",
               "requested_at": "2026-04-30T10:12:13+08:00"}
    return json.dumps({"event_id": f"asp_{i}", "event_type": EVENT, "event_version": "1",
                       "aggregate_id": f"asp_{i}", "payload": payload}, ensure_ascii=False, separators=(",", ":"))


async def bulk_fill(engine: Any, table: sa.Table, topic: str, n: int, start: int = 0, keys: int = 500) -> None:
    """Insert n pending rows in chunks of 5000 (executemany), like many committed business transactions."""
    now = clock.db_now()
    for chunk in range(start, start + n, 5000):
        rows = [dict(biz_type=EVENT, service_name="notification", topic=topic, message_key=str(i % keys),
                     payload=shell_json(i), status="pending", retry_count=0, max_retry=20, next_retry_at=now,
                     created_at=now, updated_at=now) for i in range(chunk, min(chunk + 5000, start + n))]
        async with engine.begin() as conn:
            await conn.execute(sa.insert(table), rows)


def percentiles(values: list[float], ps: tuple[float, ...] = (50, 95, 99)) -> dict[str, float]:
    if not values:
        return {f"p{int(p)}": float("nan") for p in ps}
    ordered = sorted(values)
    return {f"p{int(p)}": ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))] for p in ps}


def rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) in MiB from /proc."""
    fields = {}
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (0.0 once it is gone)."""
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pids_named(name: str, port: int | None = None) -> list[int]:
    """Pids of the running processes whose command name is ``name`` (e.g. ``mariadbd``, ``tansu``); with ``port``,
    only those whose command line names that port (on a shared machine: this run's server, not another's)."""
    out = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == name and (
                        port is None or f":{port}" in (args := (entry / "cmdline").read_bytes().decode(
                            errors="replace").replace("\0", " ")) or f"--port={port}" in args):
                    out.append(int(entry.name))
    return out


def machine() -> str:
    import aiokafka
    import faust
    import sqlalchemy

    cpu = "?"
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (f"{platform.platform()} | {os.cpu_count()} cores | {cpu} | Python {sys.version.split()[0]} | "
            f"aiokafka {aiokafka.__version__} | faust {faust.__version__} | SQLAlchemy {sqlalchemy.__version__}")


def settings_for(db_url: str, bootstrap: str, topic: str, **relay: Any) -> config.Settings:
    settings = config.load_settings(database_url=db_url, kafka_bootstrap=bootstrap,
                                    services={"notification": {"topic": topic}},
                                    relay={"services": ["notification"], "metrics_port": 0, **relay})
    config.set_settings(settings)
    return settings


class StatementCounter:
    """Counts SQL statements an engine sends (executemany counts once)."""

    def __init__(self, engine: Any) -> None:
        self.count = 0
        sa.event.listen(engine.sync_engine, "before_cursor_execute", self._on)

    def _on(self, *_args: Any) -> None:
        self.count += 1


def now_ms() -> float:
    return time.time() * 1000
