"""The consumer-group offset reset documented in docs/observability-retention-replay.md, run as written against
the real local broker: after the reset to a timestamp, the group reads only what was produced after it."""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tests.kit.support import ROOT

pytestmark = pytest.mark.slow
DOC = ROOT / "docs" / "observability-retention-replay.md"


def documented_reset():  # type: ignore[no-untyped-def]
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    snippet = next(b for b in blocks if "async def reset(" in b)
    namespace: dict = {}
    exec(compile(snippet, str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
    return namespace["reset"]


async def test_documented_offset_reset_moves_the_group_to_a_timestamp(kafka_bootstrap) -> None:
    reset = documented_reset()
    topic, group = f"t.{uuid.uuid4().hex[:8]}.reset", f"g-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for i in range(5):
            await producer.send_and_wait(topic, b"before-%d" % i, key=b"k")
        await asyncio.sleep(1.0)
        cut = int(time.time() * 1000)
        await asyncio.sleep(0.2)
        for i in range(3):
            await producer.send_and_wait(topic, b"after-%d" % i, key=b"k")
    finally:
        await producer.stop()
    await reset(kafka_bootstrap, group, topic, cut)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    got: list[bytes] = []
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(got) < 3:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                got += [r.value for r in records]
        await asyncio.sleep(0.5)
        for records in (await consumer.getmany(timeout_ms=300)).values():
            got += [r.value for r in records]
    finally:
        await consumer.stop()
    assert got == [b"after-0", b"after-1", b"after-2"]
