"""The one MariaDB starter of the tests, the benchmarks and the fault harness.

:class:`MariaDBServer` runs ``scripts/mariadb.sh`` on a private data folder and a free port (3 attempts: a free
port can be taken by someone else before the server binds it; 120 s per script call) and can stop and restart on
the same port (fault case ``e``). :func:`new_database` creates an empty ``<prefix>_<random>`` database on a server
and returns its URL. Everything binds 127.0.0.1.
"""

from __future__ import annotations

import pathlib
import subprocess
import time
import uuid

from sqlalchemy.engine import make_url

import config
from smartflow_streams.cli.embedded import free_port
from smartflow_streams.db.engine import create_engine

ROOT = pathlib.Path(__file__).resolve().parents[2]


class MariaDBServer:
    """A MariaDB server of our own (scripts/mariadb.sh on a private datadir and port) that a case may stop."""

    SCRIPT = ROOT / "scripts" / "mariadb.sh"

    def __init__(self, datadir: pathlib.Path) -> None:
        self.datadir = datadir
        self.port = 0
        self.url = ""

    def _run(self, cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(self.SCRIPT), cmd, str(self.datadir), str(self.port)],
                              capture_output=True, text=True, timeout=120)

    def start(self) -> str:
        for _ in range(3):
            if not self.port:
                self.port = free_port()
            result = self._run("start")
            if result.returncode == 0:
                self.url = result.stdout.strip().splitlines()[-1]
                return self.url
            self._run("stop")
            self.port = 0
        raise RuntimeError(f"MariaDB did not start: {result.stderr[-2000:]}")

    def restart_same_port(self) -> None:
        result = self._run("start")
        if result.returncode != 0:
            raise RuntimeError(f"MariaDB did not restart: {result.stderr[-2000:]}")

    def stop(self) -> None:
        self._run("stop")
        pidfile = self.datadir / "run" / "mysqld.pid"
        deadline = time.monotonic() + 30
        while pidfile.exists() and time.monotonic() < deadline:  # shutdown returns before the pid file goes
            time.sleep(0.05)

    async def create_database(self, prefix: str = "f") -> str:
        return await new_database(self.url, prefix)


async def new_database(server_url: str, prefix: str) -> str:
    """Create an empty ``<prefix>_<random>`` database (utf8mb4) on the server of ``server_url``; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(config.load_settings(database_url=server_url))
    async with admin.begin() as conn:
        await conn.exec_driver_sql(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
    await admin.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


async def drop_database(server_url: str, database_url: str) -> None:
    """Drop the database of ``database_url`` on the server of ``server_url`` (if it exists)."""
    admin = create_engine(config.load_settings(database_url=server_url))
    async with admin.begin() as conn:
        await conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {make_url(database_url).database}")
    await admin.dispose()
