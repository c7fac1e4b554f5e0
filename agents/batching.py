"""Batches of a Faust stream that wait for their first event: an idle agent sleeps, a busy one batches by itself.

Faust's ``stream.take_events(max_, within)`` wakes every ``within`` seconds whether or not anything arrived (an idle
worker with two agents and a 30 ms window woke ~67 times a second) and, while a batch is being processed, lets no
new event into its buffer, so each batch starts filling only after the previous one returned. :func:`take_batches`
keeps its contract and changes the timing:

- **No event, no wake-up.** The generator waits for the first event without a timeout (stopping the stream still
  ends it at once).
- **A free agent takes an event at once.** When the previous batch came back and nothing was waiting, the next
  event (with whatever arrived with it, e.g. the rest of its fetch) is a batch without any linger.
- **A loaded agent lingers.** When events were already waiting as the previous batch came back (they arrived
  while it ran), the agent collects for ``within`` seconds more (or until ``max_``) before the next batch, as
  ``take_events`` does after every batch: under load a batch holds ~rate x (processing time + ``within``) events,
  so the cost per batch (~5-7 ms of worker CPU, ~4 SQL statements per hop) is shared.

Invariants (the same as ``take_events``; ``tests/agents/test_batching.py``):
- An event is acked only after the batch that holds it was yielded and the consumer of the generator came back
  (or left it: Faust acks a message even when an agent raises, the dispatcher catches and records every failure
  before that, see :mod:`agents.dispatch`). Faust commits a partition only up to its first unacked offset, so a
  crash redelivers every event not yet processed, including those buffered for the next batch.
- At most ``max_`` events are held (the stream's own reader waits while the buffer is full, so Faust's flow control
  pauses fetching behind it), and a batch never holds more than ``max_``.
- Events leave in arrival order (the stream's order: per partition, offset order).

Limits: uses two stream internals that ``take_events`` itself uses, ``add_processor`` and ``_enable_passive``
(faust-streaming 0.15.3, pinned in pyproject.toml); acking is the public ``stream.ack``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from faust.types import EventT, StreamT


async def take_batches(stream: StreamT, max_: int, within: float) -> AsyncIterator[list[EventT]]:
    """Yield lists of at most ``max_`` events of ``stream``; each list's events are acked after it is consumed."""
    if max_ < 1:
        raise ValueError(f"max_ must be >= 1, got {max_}")
    linger = max(0.0, float(within))
    pending: list[EventT] = []
    have_events = asyncio.Event()  # set while pending holds an event
    full = asyncio.Event()  # set while pending holds max_ events
    room = asyncio.Event()  # set while pending holds fewer than max_
    room.set()

    async def add_to_pending(value: Any) -> Any:
        event = stream.current_event
        if event is None:
            raise RuntimeError("take_batches found no current event (a stream of plain values cannot be acked)")
        while len(pending) >= max_:
            await stream.wait(room)  # type: ignore[arg-type]  # mode accepts anything with an awaitable .wait()
            if stream.should_stop:
                return value  # not buffered, not acked: redelivered after the restart
        pending.append(event)
        have_events.set()
        if len(pending) >= max_:
            full.set()
            room.clear()
        return value

    stream.enable_acks = False  # acks are ours, after each batch
    stream.add_processor(add_to_pending)
    stream._enable_passive(aiter(stream.channel))  # type: ignore[attr-defined]  # the reader take_events starts
    loaded = False  # events were already waiting when the previous batch came back
    while not stream.should_stop:
        await stream.wait_for_stopped(have_events)  # type: ignore[arg-type]  # no timeout: an idle agent sleeps
        if not pending:
            continue
        if loaded and linger > 0 and not full.is_set():
            await stream.wait_for_stopped(full, timeout=linger)  # type: ignore[arg-type]
        batch = pending.copy()  # never more than max_: the reader waits for room
        pending.clear()
        have_events.clear()
        full.clear()
        room.set()
        try:
            yield batch
        finally:
            for event in batch:
                await stream.ack(event)
        loaded = bool(pending)
