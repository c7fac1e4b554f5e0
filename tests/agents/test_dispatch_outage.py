"""An unroutable message that arrives while the database is down is not acked with nothing recorded: the batch holds
(nothing committed past it) until the database is back, then it is stored. A real private MariaDB is stopped and
restarted on the same data directory and port. The retry delay is capped at 1 s here (8 s in production), so the
outage outlasts the 8 attempts after which a recordable failure gives up (~8 s here, ~30 s in production) within
15 s instead of 60 s."""

from __future__ import annotations

import asyncio
import pathlib
import subprocess
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

import config
from agents import dispatch
from agents.dispatch import Dispatcher
from smartflow_streams.db.engine import create_engine
from smartflow_streams.db.models import outbox_dead_messages
from smartflow_streams.db.schema import upgrade_schema
from smartflow_streams.cli.embedded import free_port
from smartflow_streams.startup.runtime import WorkerRuntime

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUTAGE_SECONDS = 15.0


def _mariadb(cmd: str, datadir: pathlib.Path, port: int) -> str:
    result = subprocess.run(["bash", str(ROOT / "scripts" / "mariadb.sh"), cmd, str(datadir), str(port)],
                            capture_output=True, text=True, timeout=120, check=True)
    return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""


class Event:
    def __init__(self, value: bytes, offset: int) -> None:
        self.value = value
        self.message = SimpleNamespace(topic="t.outage", partition=0, key=b"k", offset=offset)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_unroutable_message_during_an_outage_is_held_then_stored(tmp_path: pathlib.Path, monkeypatch) -> None:
    monkeypatch.setattr(dispatch, "RECORD_MAX_DELAY", 1.0)
    assert sum(min(0.25 * 2 ** i, 1.0) for i in range(dispatch.RECORD_ATTEMPTS)) < OUTAGE_SECONDS - 5
    datadir, port = tmp_path / "mysql", free_port()
    url = _mariadb("start", datadir, port)
    try:
        settings = config.load_settings(database_url=url)
        config.set_settings(settings)
        engine = create_engine(settings)
        await upgrade_schema(engine)
        await engine.dispose()
        runtime = WorkerRuntime(settings)
        try:
            dispatcher = Dispatcher(runtime)
            async with runtime.engine.connect() as conn:  # the pool is warm before the outage
                await conn.execute(sa.text("SELECT 1"))
            _mariadb("stop", datadir, port)
            batch = asyncio.ensure_future(dispatcher.handle_batch("notification", [Event(b"\xff not json", 41)]))
            await asyncio.sleep(OUTAGE_SECONDS)
            assert not batch.done(), batch.result()  # not acked: before the fix, "unrecorded" after 8 attempts
            _mariadb("start", datadir, port)
            outcomes = await asyncio.wait_for(batch, 60)
            assert outcomes == ["unroutable"]
            async with runtime.engine.connect() as conn:
                rows = (await conn.execute(sa.select(outbox_dead_messages))).mappings().all()
            assert [(r["topic"], r["kafka_partition"], r["kafka_offset"]) for r in rows] == [("t.outage", 0, 41)]
            assert "invalid envelope" in rows[0]["reason"]
        finally:
            await runtime.close()
    finally:
        subprocess.run(["bash", str(ROOT / "scripts" / "mariadb.sh"), "stop", str(datadir), str(port)], check=False)
