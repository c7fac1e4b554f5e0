"""The Faust app factory: consumer group naming and the consumer fetch wait hook."""

from __future__ import annotations

import config
from smartflow_streams.startup.faust_app import build_app, worker_group_id


async def test_worker_consumer_uses_the_configured_fetch_wait() -> None:
    for wait in (10, 1500):
        settings = config.load_settings(worker={"fetch_max_wait_ms": wait}, kafka_bootstrap="127.0.0.1:9")
        app = build_app(settings, id=f"fetch-wait-{wait}")
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        assert consumer._fetch_max_wait_ms == wait  # read by aiokafka when start() builds the fetcher


def test_single_service_worker_uses_the_catalog_group() -> None:
    one = config.load_settings(worker={"services": ["notification"]})
    assert worker_group_id(one) == "smartflow-notification-outbox-consumer"
    both = config.load_settings(worker={"group_id": "shared"})
    assert worker_group_id(both) == "shared"
