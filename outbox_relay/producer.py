"""Kafka side of the relay: one shared aiokafka producer and topic provisioning.

Invariants:
- acks=all and keyed partitioning (murmur2 on ``message_key``, as Apache Kafka's Java client), so one user's
  events land on one partition. Messages are appended to one batch per partition in row order and aiokafka keeps
  at most one in-flight batch per partition, so the order of rows of one key is the order on the partition.
- Failures say whether a retry helps (:class:`DeliveryFailure`): only errors about the message itself (bigger
  than ``max_request_size``, corrupt) are permanent; the relay dead-letters those at once and retries the rest.
- No idempotent producer by default (Tansu rejects InitProducerId v0;
  docs/operations.md#tansu-and-apache-kafka); ``relay.enable_idempotence`` turns it on for
  Apache Kafka (needs ``acks=all``). Delivery stays at-least-once either way (a relay crash between ack and mark
  republishes) and consumers dedupe by outbox id. Never transactional.
- Connection security (TLS, SASL) comes from :mod:`smartflow_streams.core.kafka_security`, shared with the worker.
- :meth:`KafkaPublisher.publish` never waits longer than ``publish_timeout_seconds`` (10 s): what is not
  acknowledged by then counts as failed and the rows go back to ``pending`` with backoff.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    CorruptRecordException, MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError,
)
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from config import Settings
from smartflow_streams.core.kafka_security import aiokafka_security_kwargs
from smartflow_streams.core.preflight import OutageLog, describe

log = logging.getLogger(__name__)


START_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 30.0
"""Producer start retries back off from 1 s, doubling, to 30 s while the broker stays unreachable."""

MAX_REQUEST_SIZE = 1_048_576
"""aiokafka's default ``max_request_size`` (the producer keeps it); a bigger message can never be delivered."""


@dataclass(frozen=True)
class DeliveryFailure:
    """Why a message was not acknowledged; ``retriable`` says whether sending it again can help."""

    reason: str
    retriable: bool


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
        self._retry_delay = START_RETRY_SECONDS
        self.outage: OutageLog | None = None  # set by the relay: one log line per broker state change

    async def ready(self) -> bool:
        if self._producer is not None:
            return True
        loop = asyncio.get_running_loop()
        if loop.time() < self._next_attempt:
            return False
        async with self._lock:
            if self._producer is not None:
                return True
            if loop.time() < self._next_attempt:  # another table's attempt failed while this one waited
                return False
            relay = self.settings.relay
            producer = build_producer(self.settings)
            try:
                await asyncio.wait_for(producer.start(), relay.topic_check_timeout_seconds)
            except Exception as exc:  # noqa: BLE001 - broker down is an expected state
                delay = self._retry_delay
                self._retry_delay = min(delay * 2, MAX_RETRY_SECONDS)
                if self.outage is not None:
                    self.outage.failed(exc, delay)
                else:
                    log.warning("kafka producer not started (%s); retrying in %g s", describe(exc), delay)
                self._next_attempt = loop.time() + delay
                await _stop_quietly(producer)
                return False
            self._producer = producer
            self._retry_delay = START_RETRY_SECONDS
            if self.outage is not None:
                self.outage.recovered()
            return True

    async def publish(self, messages: Sequence[OutgoingMessage]) -> dict[int, DeliveryFailure]:
        """Send all messages and wait for acks; returns ``{row_id: failure}`` for those not acknowledged.

        Messages go out through aiokafka's batch API: one ``BatchBuilder`` per partition (filled in the given
        order, murmur2 of the key as the default partitioner), closed and submitted at once, one future per
        partition batch instead of one per message (about 3x less producer CPU per row than ``send()``).
        A message larger than the producer's ``max_request_size`` is a permanent failure on its own; when a
        whole partition batch fails with a non-retriable error, its messages are sent once more one per batch so
        only the culprit is classified permanent and its batch-mates are delivered.
        """
        if not messages:
            return {}
        producer = self._producer
        if producer is None:
            return {m.row_id: DeliveryFailure("kafka producer not ready", True) for m in messages}
        timeout = self.settings.relay.publish_timeout_seconds
        failed: dict[int, DeliveryFailure] = {}
        sendable: list[OutgoingMessage] = []
        for m in messages:
            size = DefaultRecordBatchBuilder.estimate_size_in_bytes(m.key, m.value, m.headers)
            if size > MAX_REQUEST_SIZE:
                failed[m.row_id] = DeliveryFailure(
                    f"Kafka message of {size} bytes exceeds max_request_size {MAX_REQUEST_SIZE}", False)
            else:
                sendable.append(m)
        batches = await self._deliver(producer, sendable, timeout, failed)
        retry_alone = [m for batch, exc in batches if len(batch) > 1 and not _retriable(exc) for m in batch]
        for batch, exc in batches:
            if exc is not None and not (len(batch) > 1 and not _retriable(exc)):
                for m in batch:
                    failed[m.row_id] = DeliveryFailure(_reason(exc, timeout), _retriable(exc))
        if retry_alone:
            for batch, exc in await self._deliver(producer, retry_alone, timeout, failed, one_per_batch=True):
                if exc is not None:
                    failed[batch[0].row_id] = DeliveryFailure(_reason(exc, timeout), _retriable(exc))
        if any(f.retriable for f in failed.values()):
            await self._reset_if_broken()
        return failed

    async def _deliver(
        self, producer: AIOKafkaProducer, messages: Sequence[OutgoingMessage], timeout: float,
        failed: dict[int, DeliveryFailure], *, one_per_batch: bool = False,
    ) -> list[tuple[list[OutgoingMessage], BaseException | None]]:
        """Submit ``messages`` as partition batches and wait up to ``timeout`` for their acks; returns each batch
        with its exception (``None`` = acknowledged). Messages never submitted are added to ``failed``."""
        submitted: list[tuple[list[OutgoingMessage], asyncio.Future]] = []

        async def submit(topic: str, partition: int, builder: BatchBuilder, batch: list[OutgoingMessage]) -> None:
            builder.close()  # a closed batch does not linger: it is sent on the next sender pass
            submitted.append((batch, await producer.send_batch(builder, topic, partition=partition)))

        async def enqueue_all() -> None:
            partitions: dict[str, list[int]] = {}
            open_batches: dict[tuple[str, int], tuple[BatchBuilder, list[OutgoingMessage]]] = {}
            for m in messages:
                if m.topic not in partitions:
                    partitions[m.topic] = sorted(await producer.partitions_for(m.topic))
                tp = (m.topic, partition_for(m.key, partitions[m.topic]))
                builder, batch = open_batches.get(tp) or (None, [])
                if builder is None or builder.append(timestamp=None, key=m.key, value=m.value,
                                                     headers=m.headers) is None:
                    if builder is not None:
                        await submit(*tp, builder, batch)
                    builder, batch = producer.create_batch(), []
                    builder.append(timestamp=None, key=m.key, value=m.value, headers=m.headers)
                batch.append(m)
                if one_per_batch:
                    await submit(*tp, builder, batch)
                    open_batches.pop(tp, None)
                else:
                    open_batches[tp] = (builder, batch)
            for tp, (builder, batch) in open_batches.items():
                await submit(*tp, builder, batch)

        try:
            await asyncio.wait_for(enqueue_all(), timeout)
        except Exception as exc:  # noqa: BLE001 - classified per message below
            sent = {m.row_id for batch, _ in submitted for m in batch}
            for m in messages:
                if m.row_id not in sent:
                    failed[m.row_id] = DeliveryFailure(f"Kafka delivery not attempted: {type(exc).__name__}: {exc}",
                                                       True)
        if not submitted:
            return []
        done, _ = await asyncio.wait([f for _, f in submitted], timeout=timeout)
        out: list[tuple[list[OutgoingMessage], BaseException | None]] = []
        for batch, fut in submitted:
            if fut not in done:
                fut.cancel()
                out.append((batch, asyncio.TimeoutError()))
            else:
                out.append((batch, fut.exception()))
        return out

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


def build_producer(settings: Settings) -> AIOKafkaProducer:
    """The relay's producer (not started): acks, idempotence and security from the settings."""
    relay = settings.relay
    return AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers(),
        acks="all" if relay.acks in ("all", "-1") else int(relay.acks),
        linger_ms=relay.linger_ms,
        max_batch_size=relay.max_batch_bytes,
        request_timeout_ms=int(relay.publish_timeout_seconds * 1000),
        enable_idempotence=relay.enable_idempotence,
        client_id=f"{settings.app_id}-relay",
        **aiokafka_security_kwargs(settings),
    )


@functools.lru_cache(maxsize=16_384)
def _key_hash(key: bytes) -> int:
    return murmur2(key) & 0x7FFFFFFF


def partition_for(key: bytes, partitions: Sequence[int]) -> int:
    """Apache Kafka's default partitioner (murmur2 of the key, as aiokafka's ``DefaultPartitioner``); the hash is
    cached per key because one user's events repeat their key: 16,384 keys, ~3.5 MiB (tracemalloc in a chain run:
    ~216 bytes per cached key, its bytes included; 65,536 keys grew the relay by ~14 MiB)."""
    return partitions[_key_hash(key) % len(partitions)]


# Errors about the message itself: sending the same bytes again cannot succeed. Everything else (timeouts,
# connections, leadership, also authorisation and unknown topics, which an operator can fix) is retried with backoff.
_MESSAGE_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError, CorruptRecordException)


def _retriable(exc: BaseException | None) -> bool:
    return not isinstance(exc, _MESSAGE_ERRORS)


def _reason(exc: BaseException | None, timeout: float) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return f"Kafka delivery timed out after {timeout:g} s"
    return f"Kafka delivery failed: {type(exc).__name__}: {exc}"


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), 5)
    except Exception:  # noqa: BLE001
        pass


async def ensure_topics(settings: Settings, topics: Sequence[str], partitions: int, timeout: float) -> list[str]:
    """Create missing topics; returns the topics created. Raises on timeout or broker error (caller retries)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers(), request_timeout_ms=int(timeout * 1000),
                                **aiokafka_security_kwargs(settings))

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
