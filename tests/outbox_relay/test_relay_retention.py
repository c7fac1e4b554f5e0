"""Retention inside a real relay process: `python -m outbox_relay` with SMARTFLOW_RETENTION__ENABLED deletes old
consumed rows on its schedule and exports smartflow_retention_deleted_total on its /metrics."""

from __future__ import annotations

from datetime import timedelta

import aiohttp
import pytest
import sqlalchemy as sa

import config
from smartflow_streams.core import clock
from smartflow_streams.db.models import outbox_admin_audit, outbox_table
from smartflow_streams.cli.embedded import free_port
from tests.kit.support import base_env, spawn_relay, terminate, wait_for

pytestmark = pytest.mark.slow
N_TABLE = outbox_table("notification_outbox_messages")


async def test_relay_process_runs_retention_and_exports_the_metric(db, kafka_bootstrap, tmp_path) -> None:
    config.set_settings(config.load_settings(database_url=db.url))
    old, young = clock.db_now() - timedelta(days=9), clock.db_now() - timedelta(days=2)
    async with db.engine.begin() as conn:
        await conn.execute(sa.insert(N_TABLE), [
            dict(biz_type="notification.feishu.requested", service_name="notification", topic="t", message_key="1",
                 payload="{}", status="consumed", retry_count=0, max_retry=20, created_at=at, updated_at=at,
                 consumed_at=at) for at in [old] * 5 + [young]])
    port = free_port()
    env = base_env(db.url, kafka_bootstrap, SMARTFLOW_RELAY__SERVICES='["notification"]',
                   SMARTFLOW_RELAY__METRICS_PORT=str(port), SMARTFLOW_RETENTION__ENABLED="true",
                   SMARTFLOW_RETENTION__BATCH_SIZE="2", SMARTFLOW_RETENTION__INTERVAL_SECONDS="0.5")
    relay = spawn_relay(env, tmp_path / "relay.log")
    try:
        async def left() -> bool:
            async with db.engine.connect() as conn:
                return (await conn.execute(sa.select(sa.func.count()).select_from(N_TABLE))).scalar() == 1
        await wait_for(left, 60, interval=0.3, what="old consumed rows deleted by the relay")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                text = await response.text()
        assert 'smartflow_retention_deleted_total{table="notification_outbox_messages"} 5.0' in text
    finally:
        assert terminate(relay) == 0
    async with db.engine.connect() as conn:
        actors = (await conn.execute(sa.select(outbox_admin_audit.c.actor).where(
            outbox_admin_audit.c.action == "retention"))).scalars().all()
    assert len(actors) == 1 and actors[0].startswith("retention:")
