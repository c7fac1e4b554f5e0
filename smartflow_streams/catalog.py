"""Service catalog and route registry: ``event_type -> service -> (table, topic, consumer group)``.

Invariants (docs/upstream.md#services-and-routes):
- An event type has exactly one owning service: the one that *consumes* it. Registering the same pair again
  is a no-op; registering it for a different service raises :class:`RouteConflictError`.
- Resolving a service's route: an explicitly registered route first, then the catalog defaults with config
  overrides (``SMARTFLOW_SERVICES__<SVC>__{TOPIC,GROUP_ID,TABLE}``), then the naming convention
  (``<svc with - as _>_outbox_messages``, ``smartflow.<svc>.outbox``, ``smartflow-<svc>-outbox-consumer``).
- Resolving an event whose type is not registered raises :class:`RouteNotRegisteredError`: never a default.
- An empty service name resolves to the ``agent`` route only for legacy *rows*
  (docs/upstream.md#legacy-rows-without-a-service-name); the relay uses
  :meth:`RouteRegistry.owner_of` for those instead, so they reach their real owner.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

from config import Settings, get_settings
from smartflow_streams.core.errors import RouteConflictError, RouteError, RouteNotRegisteredError

AGENT = "agent"
TASK = "task"
MEMORY = "memory"
ACTIVE_SCHEDULER = "active-scheduler"
NOTIFICATION = "notification"
TASKCLASS_FORUM = "taskclass-forum"
LLM = "llm"
TOKEN_STORE = "token-store"

BUILTIN_SERVICES: tuple[str, ...] = (
    AGENT, TASK, MEMORY, ACTIVE_SCHEDULER, NOTIFICATION, TASKCLASS_FORUM, LLM, TOKEN_STORE,
)

# docs/upstream.md#event-ownership: event type -> owning (consuming) service.
BUILTIN_EVENT_OWNERS: dict[str, str] = {
    "chat.history.persist.requested": AGENT,
    "chat.token.usage.adjust.requested": AGENT,
    "agent.state.snapshot.persist": AGENT,
    "agent.timeline.persist.requested": AGENT,
    "task.urgency.promote.requested": TASK,
    "memory.extract.requested": MEMORY,
    "active_schedule.triggered": ACTIVE_SCHEDULER,
    "notification.feishu.requested": NOTIFICATION,
    "forum.post.liked": TOKEN_STORE,
    "forum.post.imported": TOKEN_STORE,
    "credit.charge.requested": TOKEN_STORE,
}

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_TABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")  # always fullmatch: "$" would accept a trailing newline


@dataclass(frozen=True)
class ServiceRoute:
    service_name: str
    table: str
    topic: str
    group_id: str


def convention_route(service: str) -> ServiceRoute:
    """The naming convention; the eight built-in services use exactly these names by default."""
    return ServiceRoute(
        service_name=service,
        table=service.replace("-", "_") + "_outbox_messages",
        topic=f"smartflow.{service}.outbox",
        group_id=f"smartflow-{service}-outbox-consumer",
    )


def _check_service(service: str) -> str:
    name = (service or "").strip()
    if not name:
        raise RouteError("service name is empty")
    if not _NAME_RE.fullmatch(name):
        raise RouteError(f"invalid service name {service!r}")
    return name


class RouteRegistry:
    """Thread-safe event and route registry. One process-global instance: :data:`registry`."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._lock = threading.Lock()
        self._owners: dict[str, str] = {}
        self._routes: dict[str, ServiceRoute] = {}
        self._settings = settings

    @property
    def settings(self) -> Settings:
        return self._settings or get_settings()

    def register_event(self, event_type: str, service: str) -> None:
        event_type = (event_type or "").strip()
        if not event_type:
            raise RouteError("event type is empty")
        service = _check_service(service)
        with self._lock:
            current = self._owners.get(event_type)
            if current is not None and current != service:
                raise RouteConflictError(
                    f"event type {event_type} already registered to service {current}, not {service}"
                )
            self._owners[event_type] = service

    def register_route(self, route: ServiceRoute) -> None:
        _check_service(route.service_name)
        if not _TABLE_RE.fullmatch(route.table):
            raise RouteError(f"invalid table name {route.table!r}")
        with self._lock:
            self._routes[route.service_name] = route

    def owner_of(self, event_type: str) -> str:
        with self._lock:
            owner = self._owners.get((event_type or "").strip())
        if owner is None:
            raise RouteNotRegisteredError(f"outbox route not registered: eventType={event_type}")
        return owner

    def service_route(self, service: str) -> ServiceRoute:
        service = (service or "").strip() or AGENT
        with self._lock:
            explicit = self._routes.get(service)
        if explicit is not None:
            return explicit
        base = convention_route(_check_service(service))
        override = self.settings.services.get(service)
        if override is None:
            return base
        table = override.table or base.table
        if not _TABLE_RE.fullmatch(table):
            raise RouteError(f"invalid table override {table!r} for service {service}")
        return ServiceRoute(service, table, override.topic or base.topic, override.group_id or base.group_id)

    def event_route(self, event_type: str) -> ServiceRoute:
        return self.service_route(self.owner_of(event_type))

    def services(self) -> list[str]:
        """Built-in services plus any registered through events or routes, in a stable order."""
        with self._lock:
            extra = set(self._owners.values()) | set(self._routes)
        return list(BUILTIN_SERVICES) + sorted(extra - set(BUILTIN_SERVICES))

    def event_types_of(self, service: str) -> list[str]:
        with self._lock:
            return sorted(e for e, s in self._owners.items() if s == service)


def _default_registry() -> RouteRegistry:
    reg = RouteRegistry()
    for event_type, owner in BUILTIN_EVENT_OWNERS.items():
        reg.register_event(event_type, owner)
    return reg


registry = _default_registry()
