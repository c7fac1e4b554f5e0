"""The Faust app factory: consumer group naming and the consumer fetch wait hook."""

from __future__ import annotations

import config
from smartflow_streams.faust_app import build_app, worker_group_id


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


async def test_idle_fetch_wait_grows_to_its_ceiling_and_records_still_arrive(kafka_bootstrap: str) -> None:
    """Real Tansu: empty fetches double the worker consumer's fetch wait up to worker.fetch_idle_max_wait_ms."""
    import asyncio
    import uuid

    from aiokafka import AIOKafkaProducer, TopicPartition

    from outbox_relay.producer import ensure_topics

    settings = config.load_settings(worker={"fetch_max_wait_ms": 10, "fetch_idle_max_wait_ms": 160},
                                    kafka_bootstrap=kafka_bootstrap)
    topic = f"t.{uuid.uuid4().hex[:8]}.fetch-wait"
    await ensure_topics(settings, [topic], 1, 10)
    app = build_app(settings, id=f"fetch-idle-{uuid.uuid4().hex[:6]}")
    consumer = app.consumer._thread._create_worker_consumer(app.transport)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0)])
        await consumer.seek_to_beginning(TopicPartition(topic, 0))
        for _ in range(100):
            if consumer._fetcher._fetch_max_wait_ms == 160:
                break
            await asyncio.sleep(0.05)
        assert consumer._fetcher._fetch_max_wait_ms == 160
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"x")
        finally:
            await producer.stop()
        record = await asyncio.wait_for(consumer.getone(), 10)
        assert record.value == b"x"
    finally:
        await consumer.stop()
