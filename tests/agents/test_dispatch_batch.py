"""Batch scheduling of :meth:`agents.dispatch.Dispatcher.handle_batch`: per-key order, cross-key concurrency, the
in-flight bound, the current-event context per event, and outcomes in input order.

The per-event pipeline itself is exercised against real databases in ``test_agents.py``; here ``handle`` is
replaced by a recorder so the scheduling can be observed exactly.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
import faust
import pytest

import config
from agents.dispatch import Dispatcher, Position


class FakeEvent:
    """The two attributes of a Faust event the dispatcher reads (weak-referenceable, like the real one)."""

    def __init__(self, partition: int, key: bytes, offset: int) -> None:
        self.value = f"{partition}:{key.decode()}:{offset}".encode()
        self.message = SimpleNamespace(topic="t", partition=partition, key=key, offset=offset)


def event(partition: int, key: bytes, offset: int) -> FakeEvent:
    return FakeEvent(partition, key, offset)


class RecordingDispatcher(Dispatcher):
    def __init__(self, dialect: str, max_in_flight: int, delay: float = 0.01) -> None:
        settings = config.load_settings(worker={"max_in_flight": max_in_flight})
        runtime = SimpleNamespace(settings=settings, engine=SimpleNamespace(dialect=SimpleNamespace(name=dialect)))
        super().__init__(runtime)
        self.delay = delay
        self.order: list[bytes] = []
        self.running = 0
        self.peak = 0
        self.context_ok = True

    async def handle(self, service: str, raw: bytes | None, pos: Position, verdict: object = None) -> str:
        current = faust.current_event()
        self.context_ok &= current is not None and current.message.offset == pos.offset
        self.running += 1
        self.peak = max(self.peak, self.running)
        await asyncio.sleep(self.delay)
        self.order.append(raw or b"")
        self.running -= 1
        return f"done {pos.offset}"


async def test_keys_in_order_and_concurrent_up_to_the_bound() -> None:
    events = [event(p, f"user-{k}".encode(), p * 100 + i) for i in range(5) for p in range(3) for k in range(4)]
    dispatcher = RecordingDispatcher("mysql", max_in_flight=5)
    outcomes = await dispatcher.handle_batch("notification", events)

    assert outcomes == [f"done {e.message.offset}" for e in events]
    assert dispatcher.peak == 5  # 12 keys, bounded by max_in_flight
    assert dispatcher.context_ok
    for p in range(3):
        for k in range(4):
            prefix = f"{p}:user-{k}:".encode()
            seen = [int(v.rsplit(b":", 1)[1]) for v in dispatcher.order if v.startswith(prefix)]
            assert seen == sorted(seen) and len(seen) == 5


@pytest.mark.parametrize("dialect, expected_peak", [("sqlite", 1), ("mysql", 3)])
async def test_sqlite_runs_one_event_at_a_time(dialect: str, expected_peak: int) -> None:
    events = [event(0, f"k{k}".encode(), k) for k in range(3)]
    dispatcher = RecordingDispatcher(dialect, max_in_flight=8)
    await dispatcher.handle_batch("notification", events)
    assert dispatcher.peak == expected_peak
    if dialect == "sqlite":
        assert dispatcher.order == [e.value for e in events]
