"""agents.batching.take_batches on a real Faust agent (``agent.test_context()``: Faust's in-memory channel, real
stream, real acks): no wake-up while idle, a free agent takes an event at once, a loaded one lingers, events that
arrive during processing kept for the next batch, at most ``max_`` per batch, acks only after the batch came back."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import faust
import pytest

from agents.batching import take_batches

SLACK = 0.25  # scheduling slack on a loaded 2-core CI box (seconds)


class Recorder:
    """Agent body over take_batches that records each batch: when it came, its values, their acks."""

    def __init__(self, max_: int, within: float, hold: float = 0.0) -> None:
        self.max_, self.within, self.hold = max_, within, hold
        self.batches: list[tuple[float, list[Any]]] = []
        self.acked_while_held: list[bool] = []
        self.events: list[Any] = []
        self.got = asyncio.Event()
        self.stream: faust.StreamT | None = None

    async def body(self, stream: faust.StreamT) -> Any:
        self.stream = stream
        async for batch in take_batches(stream, self.max_, self.within):
            self.batches.append((time.monotonic(), [e.value for e in batch]))
            self.events.extend(batch)
            self.acked_while_held.extend(e.message.acked for e in batch)
            self.got.set()
            if self.hold:
                await asyncio.sleep(self.hold)
            for event in batch:
                yield event.value

    async def wait_values(self, n: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while sum(len(v) for _, v in self.batches) < n:
            assert time.monotonic() < deadline, f"only {self.batches} after {timeout} s"
            await asyncio.sleep(0.01)


def agent_for(recorder: Recorder, name: str) -> Any:
    app = faust.App(f"test-batching-{name}", broker="kafka://127.0.0.1:1", store="memory://")
    topic = app.topic(f"test-batching-{name}", value_serializer="raw")
    return app.agent(topic, name=name)(recorder.body)


async def test_a_free_agent_takes_an_event_without_lingering() -> None:
    recorder = Recorder(max_=10, within=1.0)
    agent = agent_for(recorder, "free")
    async with agent.test_context() as ctx:
        await asyncio.sleep(0.05)
        for value in (b"a", b"b"):
            t0 = time.monotonic()
            await ctx.put(value, wait=False)
            await asyncio.wait_for(recorder.got.wait(), 5)
            recorder.got.clear()
            took = recorder.batches[-1][0] - t0
            assert took < 1.0 - SLACK, f"{value!r} waited {took:.3f} s: a free agent must not linger"
            await asyncio.sleep(0.05)  # its batch came back with nothing waiting: free again
        assert [v for _, v in recorder.batches] == [[b"a"], [b"b"]]


async def test_no_wake_ups_while_idle() -> None:
    """Faust's take_events(within=0.03) wakes ~33 times a second with nothing to do; take_batches waits once."""
    recorder = Recorder(max_=10, within=0.03)
    agent = agent_for(recorder, "nowake")
    async with agent.test_context() as ctx:
        await ctx.put(b"start", wait=False)
        await recorder.wait_values(1)
        stream = recorder.stream
        assert stream is not None
        calls = 0
        real = stream.wait_for_stopped

        async def counting(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            return await real(*args, **kwargs)

        stream.wait_for_stopped = counting
        await ctx.put(b"one", wait=False)  # the loop is parked on the old wait; this event makes it go round once
        await recorder.wait_values(2)
        await asyncio.sleep(0.6)  # 20 windows of 30 ms
        assert calls <= 3, f"{calls} wake-ups in 0.6 s idle"


async def test_events_arriving_during_processing_form_the_next_batch_after_one_linger() -> None:
    recorder = Recorder(max_=100, within=0.1, hold=0.4)
    agent = agent_for(recorder, "during")
    async with agent.test_context() as ctx:
        await ctx.put(b"first", wait=False)
        await asyncio.wait_for(recorder.got.wait(), 5)
        for value in (b"b1", b"b2", b"b3", b"b4", b"b5"):  # arrive while the first batch is held for 0.4 s
            await ctx.put(value, wait=False)
        await recorder.wait_values(6)
        (t_first, first), (t_second, second) = recorder.batches
        assert first == [b"first"] and second == [b"b1", b"b2", b"b3", b"b4", b"b5"]
        # they were waiting when the first batch came back: the agent is loaded and lingers 0.1 s more
        assert 0.5 - 0.02 <= t_second - t_first <= 0.5 + SLACK, t_second - t_first


async def test_a_full_batch_goes_at_once_and_no_batch_exceeds_max() -> None:
    recorder = Recorder(max_=3, within=1.0, hold=0.05)  # the hold lets the stream's reader fill the next batch
    agent = agent_for(recorder, "full")
    async with agent.test_context() as ctx:
        t0 = time.monotonic()
        for i in range(7):
            await ctx.put(f"v{i}".encode(), wait=False)
        await recorder.wait_values(6)
        assert [v for _, v in recorder.batches[:2]] == [[b"v0", b"v1", b"v2"], [b"v3", b"v4", b"v5"]]
        assert recorder.batches[1][0] - t0 < 1.0 - SLACK, "full batches must not wait for the linger"
        await recorder.wait_values(7)
        assert [v for _, v in recorder.batches] == [[b"v0", b"v1", b"v2"], [b"v3", b"v4", b"v5"], [b"v6"]]
        assert recorder.batches[2][0] - t0 >= 1.0 - 0.02  # it was waiting behind a full batch: loaded, lingers


async def test_events_are_acked_only_after_their_batch_returned() -> None:
    recorder = Recorder(max_=10, within=0.01, hold=0.2)
    agent = agent_for(recorder, "acks")
    async with agent.test_context() as ctx:
        for value in (b"x", b"y"):
            await ctx.put(value, wait=False)
        await asyncio.wait_for(recorder.got.wait(), 5)
        assert not any(recorder.acked_while_held)
        assert not any(e.message.acked for e in recorder.events)  # still held by the body
        await asyncio.sleep(0.2 + SLACK)
        assert all(e.message.acked for e in recorder.events)


def test_max_must_be_positive() -> None:
    async def run() -> None:
        async for _ in take_batches(None, 0, 0.01):  # type: ignore[arg-type]
            pass

    with pytest.raises(ValueError, match="max_ must be >= 1"):
        asyncio.run(run())
