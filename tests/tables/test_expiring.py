"""ExpiringTable on a real in-process Faust app (``agent.test_context()``, no broker): entries are visible at once,
reach the table as one segment per flush and partition (coalesced: at most one per ``flush_every_seconds``), expire,
and are rebuilt from the table after a restart."""

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
    store = ExpiringTable(app, "expiring", ttl_seconds=60, partitions=2, flush_every_seconds=0)
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


async def test_flushes_within_the_interval_coalesce_into_one_segment(harness, monkeypatch) -> None:
    store, in_event = harness
    store.flush_every, store.flush_max = 1.0, 3
    start = time.time()
    clock = [start]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    for i, key in enumerate(("a", "b")):  # two batches 0.4 s apart, each flushing at its end
        clock[0] = start + 0.4 * i
        await in_event(lambda k=key: (store.set(k, {"s": "sent"}), store.flush(0)))
    assert segments(store) == {}  # 0.4 s old: still buffered
    assert await in_event(lambda: (store.get("a"), store.get("b"))) == ({"s": "sent"}, {"s": "sent"})
    clock[0] = start + 1.0
    await in_event(lambda: (store.set("c", {"s": "dead"}), store.flush(0)))
    assert [v["e"] for v in segments(store).values()] == [{"a": {"s": "sent"}, "b": {"s": "sent"}, "c": {"s": "dead"}}]
    for key in ("d", "e"):  # flush_max entries go at once
        await in_event(lambda k=key: (store.set(k, {"s": "sent"}), store.flush(0)))
    await in_event(lambda: (store.set("f", {"s": "sent"}), store.flush(0)))
    assert len(segments(store)) == 2 and store.get("e") == {"s": "sent"}
    await in_event(lambda: (store.set("g", {"s": "sent"}), store.flush(0, force=True)))
    assert len(segments(store)) == 3 and len(store) == 7


async def test_a_buffered_entry_expires_like_a_written_one(harness, monkeypatch) -> None:
    store, in_event = harness
    store.flush_every = 3600.0
    start = time.time()
    await in_event(lambda: (store.set("a", {"s": "sent"}), store.flush(0)))
    assert store.get("a") == {"s": "sent"} and segments(store) == {}
    monkeypatch.setattr(time, "time", lambda: start + 61)
    assert store.get("a") is None


async def test_memory_per_entry_stays_small_with_one_entry_per_batch(harness, monkeypatch) -> None:
    """The reason for coalescing: with one segment per one-entry batch (what a free agent does at light load) the
    state cost ~1.4 KB per entry in a worker; coalesced it is a few hundred bytes. 2,000 one-entry batches 0.1 s
    apart, inside one event (a test context per event would dominate the measurement)."""
    import tracemalloc

    store, in_event = harness
    store.flush_every, store.ttl = 1.0, 3600
    start = time.time()
    clock = [start]
    monkeypatch.setattr(time, "time", lambda: clock[0])

    def batches() -> int:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(2000):
            clock[0] = start + 0.1 * i
            store.set(f"active-scheduler:{1_000_000 + i}", {"s": "consumed"})
            store.flush(0)
        held = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        return held

    held = await in_event(batches)
    assert len(store) == 2000 and 150 <= len(segments(store)) <= 200  # one per ~1 s of batches, not 2,000
    # coalesced ~490 here (the test producer also holds the changelog messages); one segment per batch ~1,600
    assert held / 2000 < 700, f"{held / 2000:.0f} bytes per entry"
