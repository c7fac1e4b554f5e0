"""ExpiringTable on a real in-process Faust app (``agent.test_context()``, no broker): entries are visible at once,
reach the table as one segment per flush and partition, expire, and are rebuilt from the table after a restart."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import faust
import pytest

from tables.expiring import ExpiringTable


@pytest.fixture
def harness():
    app = faust.App(f"test-expiring-{uuid.uuid4().hex[:6]}", broker="kafka://127.0.0.1:1", store="memory://",
                    autodiscover=False)
    store = ExpiringTable(app, "expiring", ttl_seconds=60, partitions=2)
    steps: list[Callable[[], Any]] = []

    @app.agent(app.topic("expiring-input", value_serializer="raw"))
    async def run(stream):  # type: ignore[no-untyped-def]
        async for _ in stream:
            yield steps.pop(0)()

    app.finalize()
    app.flow_control.resume()

    async def in_event(fn: Callable[[], Any], partition: int = 0) -> Any:
        """Run ``fn`` while Faust processes one event of ``partition`` (table writes need a current event)."""
        steps.append(fn)
        async with run.test_context() as ctx:
            event = await ctx.put(b"x", partition=partition)
            return ctx.results[event.message.offset]

    return store, in_event


def segments(store: ExpiringTable) -> dict[str, Any]:
    return {k: v for k, v in store.table.items() if v}


async def test_entries_visible_at_once_and_written_as_one_segment_per_flush_and_partition(harness) -> None:
    store, in_event = harness
    await in_event(lambda: (store.set("a", {"s": "sent"}), store.set("b", {"s": "dead"})), partition=0)
    await in_event(lambda: store.set("c", {"s": "sent"}), partition=1)
    assert await in_event(lambda: store.get("a")) == {"s": "sent"}  # before any flush
    assert segments(store) == {}
    await in_event(lambda: store.flush(0), partition=0)
    await in_event(lambda: store.flush(1), partition=1)
    written = segments(store)
    assert len(written) == 2  # one changelog message per partition, not one per entry
    by_partition = {v["p"]: v["e"] for v in written.values()}
    assert by_partition == {0: {"a": {"s": "sent"}, "b": {"s": "dead"}}, 1: {"c": {"s": "sent"}}}
    assert await in_event(lambda: store.flush(0)) is None and len(segments(store)) == 2  # nothing new: no write
    assert store.get("b") == {"s": "dead"} and store.get("zzz") is None  # also outside stream processing


async def test_expired_entries_are_ignored_then_deleted_by_the_next_flush(harness, monkeypatch) -> None:
    store, in_event = harness
    await in_event(lambda: (store.set("old", {"s": "sent"}), store.flush(0)))
    start = time.time()
    monkeypatch.setattr(time, "time", lambda: start + 61)
    await in_event(lambda: (store.set("new", {"s": "sent"}), store.set("old-again", {"s": "dead"})))
    assert await in_event(lambda: store.get("old")) is None  # past the ttl: ignored before any cleanup
    await in_event(lambda: store.flush(0))
    assert [v["e"] for v in segments(store).values()] == [{"new": {"s": "sent"}, "old-again": {"s": "dead"}}]
    assert len(store) == 2


async def test_index_rebuilt_from_the_table_after_a_restart_including_the_previous_layout(harness) -> None:
    store, in_event = harness
    await in_event(lambda: (store.set("a", {"s": "sent"}), store.flush(0)))
    await in_event(lambda: (store.set("a", {"s": "dead"}), store.flush(0)))  # a later segment wins
    now = time.time()
    await in_event(lambda: store.table.__setitem__("legacy-key", {"s": "skipped", "t": now, "p": 0}))
    store._index.clear()  # what a new process starts with: only the (recovered) table
    store._segments.clear()
    assert await in_event(lambda: store.get("a")) == {"s": "dead"}
    assert store.get("legacy-key") == {"s": "skipped"}
    assert store.get("missing") is None


async def test_writes_outside_stream_processing_are_refused(harness) -> None:
    store, _ = harness
    with pytest.raises(RuntimeError, match="only allowed while processing an event"):
        store.set("a", {"s": "sent"})
