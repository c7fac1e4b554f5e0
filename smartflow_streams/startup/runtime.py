"""Worker runtime: the long-lived objects agents, timers and web views share (one per worker process).

Everything bound to the event loop (DB pool, HTTP session) is created lazily on first use inside the worker's
loop, so importing the app (``faust -A smartflow_streams``) touches no network.

Layering: the runtime holds only objects of the rooms below it (db, notification, scheduler, the accelerator
interfaces); the agents' dispatcher is built by :func:`agents.define_agents` from it, never imported here.
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from config import Settings
from smartflow_streams.db.engine import create_engine, session_factory
from smartflow_streams.notification.limiter import RateLimiter
from smartflow_streams.notification.feishu import WebhookProvider
from smartflow_streams.notification.service import DedupeCache, NotificationService
from smartflow_streams.scheduler.jobs import TaskReader
from smartflow_streams.scheduler.preview import PreviewBuilder


class ConsumptionState(Protocol):
    """Accelerator (a Faust table in the worker): what this worker already saw consumed/dead. May forget."""

    def terminal(self, service: str, outbox_id: int) -> str | None: ...

    def record(self, service: str, outbox_id: int, status: str, counted: bool = True) -> None: ...

    def flush(self, service: str, partition: int) -> None:
        """Write what :meth:`record` buffered for (service, partition); called once per batch and partition."""


class WorkerRuntime:
    def __init__(
        self, settings: Settings, *, preview_builder: PreviewBuilder | None = None,
        task_reader: TaskReader | None = None, dedupe: DedupeCache | None = None,
        consumption: ConsumptionState | None = None,
    ) -> None:
        from smartflow_streams.scheduler.jobs import JobOnlyTaskReader
        from smartflow_streams.scheduler.preview import DeterministicPreviewBuilder

        self.settings = settings
        self.preview_builder: PreviewBuilder = preview_builder or DeterministicPreviewBuilder()
        self.task_reader: TaskReader = task_reader or JobOnlyTaskReader()
        self.dedupe = dedupe
        self.consumption = consumption
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None
        self._notifications: NotificationService | None = None
        from smartflow_streams.web.auth import AuthFailures

        # shared by the admin routes and the APIs (one count per client address)
        self.auth_failures = AuthFailures(limit=settings.worker.auth_failures_per_minute)

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            self._engine = create_engine(self.settings, pool_size=max(10, self.settings.worker.max_in_flight))
            self._sessions = session_factory(self._engine)
        return self._engine

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        self.engine  # noqa: B018 - creates the pair
        assert self._sessions is not None
        return self._sessions

    @property
    def notifications(self) -> NotificationService:
        if self._notifications is None:
            cfg = self.settings.notification
            # the limiter is always on: custom bots are always limited (Feishu's per-bot quota); the provider
            # applies it to flow webhooks only when notification.rate_limit_enabled
            provider = WebhookProvider(
                cfg, limiter=RateLimiter(cfg.rate_per_second, cfg.rate_per_minute), zone=self.settings.zone,
            )
            self._notifications = NotificationService(self.settings, self.sessions, provider, self.dedupe)
        return self._notifications

    async def close(self) -> None:
        if self._notifications is not None:
            await self._notifications.provider.close()
            self._notifications = None
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None
