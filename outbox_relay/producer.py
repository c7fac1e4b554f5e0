"""Kafka side of the relay: one shared aiokafka producer and topic provisioning.

Invariants:
- acks=all and keyed partitioning (murmur2 on ``message_key``, as Apache Kafka's Java client), so one user's
  events land on one partition. aiokafka keeps at most one in-flight batch per partition, so the order of
  ``send()`` calls for one key is the order on the partition.
- No idempotent or transactional producer (Tansu rejects InitProducerId v0; infra-notes 1.4): delivery is
  at-least-once and consumers dedupe by outbox id.
- :meth:`KafkaPublisher.publish` never waits longer than ``publish_timeout_seconds`` (10 s): what is not
  acknowledged by then counts as failed and the rows go back to ``pending`` with backoff.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from config import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutgoingMessage:
    row_id: int
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


class KafkaPublisher:
    """Lazily (re)started producer; a missing broker makes :meth:`ready` false instead of raising."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._next_attempt = 0.0

    async def ready(self) -> bool:
        if self._producer is not None:
            return True
        loop = asyncio.get_running_loop()
        if loop.time() < self._next_attempt:
            return False
        async with self._lock:
            if self._producer is not None:
                return True
            relay = self.settings.relay
            producer = AIOKafkaProducer(
                bootstrap_servers=self.settings.bootstrap_servers(),
                acks="all" if relay.acks in ("all", "-1") else int(relay.acks),
                linger_ms=relay.linger_ms,
                max_batch_size=relay.max_batch_bytes,
                request_timeout_ms=int(relay.publish_timeout_seconds * 1000),
                enable_idempotence=False,
                client_id=f"{self.settings.app_id}-relay",
            )
            try:
                await asyncio.wait_for(producer.start(), relay.topic_check_timeout_seconds)
            except Exception as exc:  # noqa: BLE001 - broker down is an expected state
                log.warning("kafka producer not started (%s); retrying in 2 s", type(exc).__name__)
                self._next_attempt = loop.time() + 2.0
                await _stop_quietly(producer)
                return False
            self._producer = producer
            return True

    async def publish(self, messages: Sequence[OutgoingMessage]) -> dict[int, str]:
        """Send all messages and wait for acks; returns ``{row_id: error}`` for those not acknowledged."""
        if not messages:
            return {}
        producer = self._producer
        if producer is None:
            return {m.row_id: "kafka producer not ready" for m in messages}
        timeout = self.settings.relay.publish_timeout_seconds
        failed: dict[int, str] = {}
        futures: dict[int, asyncio.Future] = {}

        async def enqueue_all() -> None:
            for m in messages:
                futures[m.row_id] = await producer.send(m.topic, m.value, key=m.key, headers=m.headers)

        try:
            await asyncio.wait_for(enqueue_all(), timeout)
            done, pending = await asyncio.wait(futures.values(), timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - classify per message below
            reason = f"Kafka delivery failed: {type(exc).__name__}: {exc}"
            return {m.row_id: reason for m in messages if m.row_id not in futures or not futures[m.row_id].done()
                    or futures[m.row_id].exception() is not None}
        for row_id, fut in futures.items():
            if fut in pending:
                fut.cancel()
                failed[row_id] = f"Kafka delivery timed out after {timeout:g} s"
            elif fut.exception() is not None:
                exc = fut.exception()
                failed[row_id] = f"Kafka delivery failed: {type(exc).__name__}: {exc}"
        for m in messages:
            if m.row_id not in futures:
                failed[m.row_id] = "Kafka delivery not attempted"
        if failed:
            await self._reset_if_broken()
        return failed

    async def _reset_if_broken(self) -> None:
        # After a delivery failure recreate the producer on the next batch: aiokafka recovers on its own from
        # most broker restarts, but a fresh client also re-reads metadata after the broker lost all topics.
        async with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            await _stop_quietly(producer)

    async def close(self) -> None:
        async with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            await _stop_quietly(producer)


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), 5)
    except Exception:  # noqa: BLE001
        pass


async def ensure_topics(settings: Settings, topics: Sequence[str], partitions: int, timeout: float) -> list[str]:
    """Create missing topics; returns the topics created. Raises on timeout or broker error (caller retries)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers(), request_timeout_ms=int(timeout * 1000))

    async def run() -> list[str]:
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            missing = [t for t in topics if t not in existing]
            if missing:
                try:
                    await admin.create_topics([
                        NewTopic(t, num_partitions=partitions,
                                 replication_factor=settings.relay.topic_replication_factor)
                        for t in missing
                    ])
                except TopicAlreadyExistsError:
                    pass
            return missing
        finally:
            await admin.close()

    return await asyncio.wait_for(run(), timeout)
