"""The Faust app factory: consumer group naming, the consumer fetch wait hook, and ``faust worker``'s start-up
checks (run as the real command: one line instead of a traceback)."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

import pytest

import config
from smartflow_streams.cli.embedded import free_port
from smartflow_streams.startup.faust_app import build_app, worker_group_id
from tests.kit.support import ROOT


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


def _worker(env_extra: dict[str, str], tmp_path: pathlib.Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTFLOW_")}
    env.update(SMARTFLOW_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/w.db", SMARTFLOW_WORKER__DATADIR=str(tmp_path),
               **env_extra)
    return subprocess.run([sys.executable, "-m", "faust", "-A", "smartflow_streams", "worker", "-l", "info"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_worker_without_broker_says_so_in_one_line(tmp_path: pathlib.Path) -> None:
    port = free_port()
    result = _worker({"SMARTFLOW_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}",
                      "SMARTFLOW_WORKER__WEB_PORT": str(free_port())}, tmp_path)
    out = (result.stdout + result.stderr).strip()
    assert result.returncode == 1, out
    assert out.splitlines() == [
        f"smartflow worker: no Kafka broker reachable at 127.0.0.1:{port} (127.0.0.1:{port}: ConnectionRefusedError: "
        "[Errno 111] Connection refused); start the broker first (`smartflow up` runs an embedded one) or point "
        "SMARTFLOW_KAFKA_BOOTSTRAP at a running one"], out


@pytest.mark.slow
def test_worker_with_taken_web_port_names_it_and_its_setting(tmp_path: pathlib.Path, kafka_bootstrap: str) -> None:
    port = free_port()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        result = _worker({"SMARTFLOW_KAFKA_BOOTSTRAP": kafka_bootstrap, "SMARTFLOW_WORKER__WEB_PORT": str(port)},
                         tmp_path)
    out = (result.stdout + result.stderr).strip()
    assert result.returncode == 1, out
    assert out.splitlines() == [
        f"smartflow worker: worker web server: port 127.0.0.1:{port} is not free (OSError: [Errno 98] Address "
        "already in use); stop what listens there or set SMARTFLOW_WORKER__WEB_PORT to a free port"], out


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
