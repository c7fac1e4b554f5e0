"""Faust agents: one per consumed service topic, ``concurrency=1`` (faust-streaming #606: at-least-once breaks
with more), parallelism from partitions and workers. Each is a thin loop over :class:`agents.dispatch.Dispatcher`.

Importing this package registers the handlers of the two contract events (``agents.active_scheduler``,
``agents.notification``); other services register theirs through :mod:`smartflow_streams.handlers`.
"""

from __future__ import annotations

import logging
from typing import Any

import faust

from agents import active_scheduler, notification  # noqa: F401 - registers handlers
from agents.dispatch import Position
from smartflow_streams.catalog import registry

log = logging.getLogger("agents")


def define_agents(app: faust.App, runtime: Any, services: list[str]) -> dict[str, Any]:
    """One agent per service topic; returns ``{service: agent}``."""
    agents: dict[str, Any] = {}
    for service in services:
        route = registry.service_route(service)
        topic = app.topic(route.topic, value_serializer="raw", key_serializer="raw",
                          partitions=runtime.settings.worker.topic_partitions)
        agents[service] = app.agent(topic, name=f"outbox-{service}", concurrency=1)(_agent_fn(runtime, service))
    return agents


def _agent_fn(runtime: Any, service: str) -> Any:
    async def process(stream: faust.StreamT) -> Any:
        async for event in stream.events():
            message = event.message
            outcome = await runtime.dispatcher.handle(
                service, event.value, Position(message.topic, message.partition, message.offset, message.key))
            yield outcome

    process.__name__ = process.__qualname__ = f"outbox_{service.replace('-', '_')}"
    return process
