"""Pure parts of the relay's producer: the partitioner matches Kafka's default, errors say if a retry helps."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError, NotLeaderForPartitionError
from aiokafka.partitioner import DefaultPartitioner

from outbox_relay.producer import _reason, _retriable, partition_for


@pytest.mark.parametrize("partitions", [[0], [0, 1, 2], list(range(12))])
def test_partition_for_matches_aiokafka_default_partitioner(partitions: list[int]) -> None:
    for key in [b"", b"1", b"42", b"user:1001", "用户".encode(), bytes(range(200))]:
        assert partition_for(key, partitions) == DefaultPartitioner()(key, partitions, partitions)


def test_only_message_errors_are_permanent() -> None:
    assert not _retriable(MessageSizeTooLargeError())
    assert _retriable(NotLeaderForPartitionError()) and _retriable(KafkaConnectionError())
    assert _retriable(asyncio.TimeoutError()) and _retriable(RuntimeError("broker gone"))
    assert _reason(asyncio.TimeoutError(), 10) == "Kafka delivery timed out after 10 s"
