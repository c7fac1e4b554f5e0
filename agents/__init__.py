"""Faust agents: one per consumed service topic, ``concurrency=1`` (faust-streaming #606: at-least-once breaks
with more), parallelism from partitions, workers and, inside one agent, from batches: the agent takes up to
``worker.batch_max`` events (:func:`agents.batching.take_batches`: at once when the agent is free, after
``worker.batch_within_seconds`` more when events were already waiting; no wake-up while idle), hands them to
:meth:`agents.dispatch.Dispatcher.handle_batch` (different message keys concurrently, one key in order), and Faust
acks the batch only when that returns.

Importing this package registers the handlers of the two contract events (``agents.active_scheduler``,
``agents.notification``); other services register theirs through :mod:`smartflow_streams.startup.handlers`.
"""

from __future__ import annotations

import logging
from typing import Any

import faust

from agents import active_scheduler, notification  # noqa: F401 - registers handlers
from agents.batching import take_batches
from agents.dispatch import Dispatcher
from smartflow_streams.core import metrics
from smartflow_streams.catalog import registry
from smartflow_streams.startup.runtime import WorkerRuntime

log = logging.getLogger("agents")


def define_agents(app: faust.App, runtime: WorkerRuntime, services: list[str]) -> dict[str, Any]:
    """One agent per service topic, all sharing one :class:`Dispatcher` over ``runtime``; returns ``{service: agent}``."""
    dispatcher = Dispatcher(runtime, consumption=runtime.consumption)
    agents: dict[str, Any] = {}
    for service in services:
        route = registry.service_route(service)
        topic = app.topic(route.topic, value_serializer="raw", key_serializer="raw",
                          partitions=runtime.settings.worker.topic_partitions)
        agents[service] = app.agent(topic, name=f"outbox-{service}", concurrency=1)(_agent_fn(runtime, dispatcher, service))
    return agents


def _agent_fn(runtime: WorkerRuntime, dispatcher: Dispatcher, service: str) -> Any:
    worker = runtime.settings.worker

    async def process(stream: faust.StreamT) -> Any:
        async for events in take_batches(stream, worker.batch_max, worker.batch_within_seconds):
            metrics.agent_batch_events.labels(service).observe(len(events))
            for outcome in await dispatcher.handle_batch(service, list(events)):
                yield outcome

    process.__name__ = process.__qualname__ = f"outbox_{service.replace('-', '_')}"
    return process
