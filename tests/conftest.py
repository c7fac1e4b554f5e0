"""Shared fixtures: real MariaDB (private datadir, started once per session), SQLite files, a real Tansu broker.

``db`` is parametrised over both backends, so every repository test runs on MariaDB and SQLite. Set
``SMARTFLOW_TEST_MYSQL_URL`` to use an existing MySQL/MariaDB server (a database per test is created in it).
"""

from __future__ import annotations

import os
import pathlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

import config
from smartflow_streams.core import clock
from smartflow_streams.db.engine import create_engine, session_factory
from smartflow_streams.db.schema import upgrade_schema
from tests.kit.broker import tansu_broker
from tests.kit.mariadb import MariaDBServer, new_database
from tests.kit.mariadb import drop_database as drop_server_database

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def mariadb_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    existing = os.environ.get("SMARTFLOW_TEST_MYSQL_URL")
    if existing:
        yield existing
        return
    server = MariaDBServer(tmp_path_factory.mktemp("mariadb"))
    yield server.start()
    server.stop()


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
        url = await new_database(mariadb_url, "t")
    settings = config.load_settings(database_url=url, **overrides)
    config.set_settings(settings)
    engine = create_engine(settings)
    return DB(kind, url, settings, engine, session_factory(engine))


async def drop_database(db: DB, mariadb_url: str | None) -> None:
    await db.engine.dispose()
    if db.kind == "mariadb" and mariadb_url:
        await drop_server_database(mariadb_url, db.url)


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
    with tansu_broker(tmp_path_factory.mktemp("tansu") / "tansu.log") as bootstrap:
        yield bootstrap


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
