"""Shared fixtures: real MariaDB (private datadir, started once per session), SQLite files, a real Tansu broker.

``db`` is parametrised over both backends, so every repository test runs on MariaDB and SQLite. Set
``SMARTFLOW_TEST_MYSQL_URL`` to use an existing MySQL/MariaDB server (a database per test is created in it).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

import config
from smartflow_streams.core import clock
from smartflow_streams.db.engine import create_engine, session_factory
from smartflow_streams.db.schema import upgrade_schema
from smartflow_streams.cli.embedded import free_port, start_tansu, stop_process

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def mariadb_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    existing = os.environ.get("SMARTFLOW_TEST_MYSQL_URL")
    if existing:
        yield existing
        return
    datadir = tmp_path_factory.mktemp("mariadb")
    script = ROOT / "scripts" / "mariadb.sh"
    for attempt in range(3):  # a free port can be taken by someone else before the server binds it
        port = free_port()
        result = subprocess.run(["bash", str(script), "start", str(datadir), str(port)], capture_output=True,
                                text=True, timeout=120)
        if result.returncode == 0:
            break
        subprocess.run(["bash", str(script), "stop", str(datadir), str(port)], check=False)
    else:
        raise RuntimeError(f"MariaDB did not start: {result.stderr[-2000:]}")
    url = result.stdout.strip().splitlines()[-1]
    yield url
    subprocess.run(["bash", str(script), "stop", str(datadir), str(port)], check=False)


@dataclass
class DB:
    kind: str
    url: str
    settings: config.Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]


async def make_database(kind: str, tmp_path: pathlib.Path, mariadb_url: str | None, **overrides) -> DB:
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / f'db-{uuid.uuid4().hex[:6]}.sqlite'}"
    else:
        assert mariadb_url is not None
        name = f"t_{uuid.uuid4().hex[:10]}"
        admin = create_engine(config.load_settings(database_url=mariadb_url))
        async with admin.begin() as conn:
            await conn.exec_driver_sql(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
        await admin.dispose()
        url = make_url(mariadb_url).set(database=name).render_as_string(hide_password=False)
    settings = config.load_settings(database_url=url, **overrides)
    config.set_settings(settings)
    engine = create_engine(settings)
    return DB(kind, url, settings, engine, session_factory(engine))


async def drop_database(db: DB, mariadb_url: str | None) -> None:
    await db.engine.dispose()
    if db.kind == "mariadb" and mariadb_url:
        admin = create_engine(config.load_settings(database_url=mariadb_url))
        async with admin.begin() as conn:
            await conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {make_url(db.url).database}")
        await admin.dispose()


@pytest.fixture(params=["sqlite", "mariadb"])
def db_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def db(db_kind: str, tmp_path: pathlib.Path, request: pytest.FixtureRequest) -> AsyncIterator[DB]:
    mysql = request.getfixturevalue("mariadb_url") if db_kind == "mariadb" else None
    handle = await make_database(db_kind, tmp_path, mysql)
    await upgrade_schema(handle.engine)
    try:
        yield handle
    finally:
        await drop_database(handle, mysql)
        config.set_settings(None)
        clock.set_offset(timedelta(0))


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    existing = os.environ.get("SMARTFLOW_TEST_KAFKA_BOOTSTRAP")
    if existing:
        yield existing
        return
    port = free_port()
    log = open(tmp_path_factory.mktemp("tansu") / "tansu.log", "wb")
    proc = start_tansu(port, log)
    yield f"127.0.0.1:{port}"
    stop_process(proc)
    log.close()


@pytest.fixture(scope="session", autouse=True)
def _no_leftover_processes() -> Iterator[None]:
    yield
    from tests.kit.support import kill_leftovers

    kill_leftovers()


@pytest.fixture(autouse=True)
def _reset_settings() -> Iterator[None]:
    yield
    config.set_settings(None)


def count(rows: object) -> int:
    return len(list(rows))  # type: ignore[arg-type]


__all__ = ["DB", "make_database", "drop_database", "sa"]
