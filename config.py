"""Every knob of smartflow-streams in one typed object.

Environment: prefix ``SMARTFLOW_``, nested delimiter ``__`` (e.g. ``SMARTFLOW_RELAY__BATCH_SIZE=200``,
``SMARTFLOW_SERVICES__NOTIFICATION__TOPIC=custom.topic``, ``SMARTFLOW_FAUST__BROKER_SESSION_TIMEOUT=6``).
An optional ``.env`` file in the working directory is read too. Invalid values fail at start-up with a
:class:`ConfigError` whose message names the offending ``SMARTFLOW_...`` key.

Every key and its default is listed in README.md ("Configuration"); keep the two in step.
"""

from __future__ import annotations

import functools
import json
import os
import re
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

ENV_PREFIX = "SMARTFLOW_"


class ConfigError(ValueError):
    """Configuration is invalid; the message names the environment key(s) at fault."""


class ServiceOverride(BaseModel):
    """Per-service override of the catalog defaults (upstream ``outbox.services.<svc>.*``)."""

    topic: str | None = None
    group_id: str | None = None
    table: str | None = None


class OutboxSettings(BaseModel):
    max_retry: int = Field(20, description="max_retry written on new rows; <=0 means 20 (upstream)")
    error_max_bytes: int = Field(2000, ge=16, description="last_error cap in UTF-8 bytes, never splits a character")


class RelaySettings(BaseModel):
    services: list[str] = Field(default_factory=list, description="services to relay; empty = whole catalog")
    batch_size: int = Field(500, ge=1, le=10_000)
    lease_seconds: float = Field(
        30.0, gt=0, description="row claim lease in shared mode (exclusive=false); a crashed relay's rows are due "
        "again after it")
    exclusive: bool = Field(
        True, description="one active relay per table (table lease, also its claim on the rows) so per-key order holds")
    table_lease_seconds: float = Field(
        10.0, gt=0, description="leader lease per table when exclusive; a crashed leader's rows are published by the "
        "next one after it")
    idle_poll_max_ms: int = Field(50, ge=1, description="poll interval ceiling when a table is idle")
    idle_deep_poll_ms: int = Field(
        250, ge=1, description="idle probe interval once nothing was due for idle_deep_after_seconds: the most a "
        "first row after a quiet period waits (instead of idle_poll_max_ms); an idle relay then sends ~4 probes/s")
    idle_deep_after_seconds: float = Field(2.0, ge=0, description="quiet time before the idle probe slows down")
    partial_poll_ms: float = Field(
        10.0, ge=0, description="wait after a partial batch before the next read: rows committed meanwhile go out "
        "together (fewer, bigger batches under light load) at the cost of up to this much latency per row")
    publish_timeout_seconds: float = Field(10.0, gt=0, description="per-batch Kafka delivery timeout")
    topic_check_timeout_seconds: float = Field(10.0, gt=0)
    topic_partitions: int = Field(3, ge=1)
    topic_replication_factor: int = Field(1, ge=1)
    linger_ms: int = Field(5, ge=0)
    max_batch_bytes: int = Field(1_048_576, ge=1024)
    acks: str = Field("all", pattern=r"^(all|0|1|-1)$")
    summary_interval_seconds: float = Field(30.0, gt=0)
    republish_after_seconds: float = Field(
        600.0, gt=0, description="a published row not consumed within this is republished (lost message sweep)"
    )
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(6067, ge=0, le=65535, description="0 disables the relay's /metrics endpoint")


class WorkerSettings(BaseModel):
    services: list[str] = Field(
        default_factory=lambda: ["active-scheduler", "notification"],
        description="services whose topics this worker consumes",
    )
    group_id: str | None = Field(None, description="consumer group when several services share a worker")
    topic_partitions: int = Field(3, ge=1)
    web_host: str = "127.0.0.1"
    web_port: int = Field(6066, ge=1, le=65535)
    datadir: str = "./var/faust"
    batch_max: int = Field(
        200, ge=1, description="events an agent takes from its stream at once (acked after the whole batch)")
    batch_within_seconds: float = Field(
        0.01, gt=0, description="longest wait for a batch to fill; the latency an idle agent adds to one event")
    fetch_max_wait_ms: int = Field(
        1500, ge=1, le=60_000, description="longest a consumer fetch may wait for records (Faust hard-codes 1500; "
        "Apache Kafka answers as soon as records arrive, Tansu only after the whole wait: use 10 there)")
    fetch_idle_max_wait_ms: int | None = Field(
        None, ge=1, le=60_000, description="when above fetch_max_wait_ms: each fetch that brings no record doubles "
        "the wait up to this, the first record resets it (an idle worker on Tansu: 10 ms waits = 100 fetches/s; "
        "the first record after a quiet period then waits up to this long)")
    max_in_flight: int = Field(
        16, ge=1, description="message keys of one batch processed concurrently per agent (per key: in order; "
        "SQLite always uses 1, one writer), and notification records claimed and POSTed at once per agent (the most "
        "a kill -9 can leave POSTed but unrecorded)")
    batched_handlers: bool = Field(
        True, description="handlers that can (both contract events) process a whole batch in a few multi-row "
        "statements; false = one event at a time (the reference path, also the fallback when a batch fails)")
    consumption_state_seconds: int = Field(
        3600, ge=60, description="how long the consumption-state table remembers a consumed/dead outbox id (relay "
        "duplicates arrive within minutes; older ones are decided by the database); memory ~0.3 KB per entry")


class NotificationSettings(BaseModel):
    max_attempts: int = Field(5, ge=1)
    base_delay_seconds: float = Field(300.0, ge=0)
    max_delay_seconds: float = Field(1800.0, ge=0)
    sending_lease_seconds: float = Field(600.0, gt=0)
    retry_scan_every_seconds: float = Field(60.0, gt=0)
    retry_batch_size: int = Field(
        50, ge=1, description="records per retry-scanner pass (sent in chunks of `worker.max_in_flight`)")
    summary_max_chars: int = Field(180, ge=1)
    frontend_base_url: str = "https://smartflow.example.com"
    http_timeout_seconds: float = Field(5.0, gt=0)
    outcome_flush_seconds: float = Field(
        0.05, ge=0, description="longest an answered POST waits for its chunk-mates before its outcome is written "
        "(one write per chunk when all answer within it; a kill -9 may re-send what is answered but unwritten)")
    allowed_hosts: list[str] = Field(
        default_factory=lambda: ["feishu.cn", "www.feishu.cn", "open.feishu.cn", "open.larksuite.com"]
    )
    allow_plain_http: bool = Field(False, description="allow http:// webhooks (tests on 127.0.0.1 only)")
    rate_limit_enabled: bool = True
    rate_per_second: float = Field(5.0, gt=0)
    rate_per_minute: float = Field(100.0, gt=0)
    max_body_bytes: int = Field(20_000, ge=256)
    dedupe_window_seconds: int = Field(1800, ge=1)


class SchedulerSettings(BaseModel):
    job_scan_every_seconds: float = Field(60.0, gt=0)
    job_scan_limit: int = Field(50, ge=1)
    preview_ttl_seconds: int = Field(3600, ge=1)


class Settings(BaseSettings):
    """The whole configuration. Construct through :func:`load_settings` to get key-naming errors."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        case_sensitive=False,
    )

    database_url: str = "sqlite+aiosqlite:///./var/smartflow.db"
    kafka_bootstrap: str = "127.0.0.1:19092"
    time_zone: str = "Asia/Shanghai"
    app_id: str = "smartflow-streams"
    log_level: str = Field("info", pattern=r"^(?i:debug|info|warning|error)$")
    admin_token: SecretStr | None = None
    api_tokens: dict[str, int] = Field(
        default_factory=dict, description="bearer token -> user id for the upstream-compatible HTTP APIs"
    )
    services: dict[str, ServiceOverride] = Field(default_factory=dict)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    relay: RelaySettings = Field(default_factory=RelaySettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    notification: NotificationSettings = Field(default_factory=NotificationSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    faust: dict[str, Any] = Field(default_factory=dict, description="pass-through faust.App settings")

    @field_validator("kafka_bootstrap")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        for part in value.split(","):
            host, sep, port = part.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"expected comma-separated host:port, got {part!r}")
        return value

    @field_validator("time_zone")
    @classmethod
    def _check_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("database_url")
    @classmethod
    def _check_db(cls, value: str) -> str:
        if not (value.startswith("sqlite+aiosqlite://") or value.startswith("mysql+aiomysql://")):
            raise ValueError("must be an async SQLAlchemy URL: sqlite+aiosqlite://... or mysql+aiomysql://...")
        return value

    @field_validator("services", mode="before")
    @classmethod
    def _normalise_service_keys(cls, value: Any) -> Any:
        # Env keys cannot comfortably hold '-': SMARTFLOW_SERVICES__ACTIVE_SCHEDULER__TOPIC means active-scheduler.
        if isinstance(value, dict):
            return {str(k).replace("_", "-").lower(): v for k, v in value.items()}
        return value

    @field_validator("faust", mode="before")
    @classmethod
    def _coerce_faust(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        coerced = {str(k).lower(): _coerce_scalar(v) for k, v in value.items()}
        known = _faust_setting_names()
        unknown = sorted(k for k in coerced if known and k not in known)
        if unknown:
            names = ", ".join(f"{ENV_PREFIX}FAUST__{k.upper()}" for k in unknown)
            raise ValueError(f"unknown Faust setting(s): {names}")
        return coerced

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def bootstrap_servers(self) -> list[str]:
        return [p.strip() for p in self.kafka_bootstrap.split(",") if p.strip()]

    def masked(self) -> dict[str, Any]:
        """The settings as JSON-able data with secrets and DB passwords masked (for logs and views)."""
        from smartflow_streams.masking import mask_database_url

        data = self.model_dump(mode="json")
        data["database_url"] = mask_database_url(self.database_url)
        data["admin_token"] = "****" if self.admin_token else None
        data["api_tokens"] = {"****": uid for uid in self.api_tokens.values()}
        return data


def _coerce_scalar(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


@functools.lru_cache(maxsize=1)
def _faust_setting_names() -> frozenset[str]:
    try:
        from faust.types.settings import Settings as FaustSettings
    except ImportError:  # pragma: no cover - faust is a hard dependency
        return frozenset()
    names = {n for n in dir(FaustSettings) if not n.startswith("_")}
    return frozenset(names)


def _env_key(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if not isinstance(p, int)]
    return ENV_PREFIX + "__".join(p.upper().replace("-", "_") for p in parts)


def load_settings(**overrides: Any) -> Settings:
    """Build :class:`Settings` from the environment (plus keyword overrides, used by tests).

    Raises :class:`ConfigError` naming every bad key, e.g. ``SMARTFLOW_RELAY__BATCH_SIZE: Input should be
    greater than or equal to 1``.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = [f"{_env_key(err['loc']) or ENV_PREFIX}: {err['msg']}" for err in exc.errors()]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
    except SettingsError as exc:  # a list/map key whose value is not JSON (found by the config fuzz test)
        match = re.search(r'field "([^"]+)"', str(exc))
        prefix = ENV_PREFIX + (match.group(1).upper() if match else "")
        keys = sorted(k for k in os.environ if k.upper() == prefix or k.upper().startswith(prefix + "__"))
        raise ConfigError(f"invalid configuration:\n  {', '.join(keys) or prefix}: not valid JSON "
                          f"(lists and maps are JSON, e.g. '[\"notification\"]')") from None


_settings: Settings | None = None


def get_settings() -> Settings:
    """Process-wide settings, loaded once on first use."""
    global _settings
    if _settings is None:
        _settings = load_settings()
    return _settings


def set_settings(settings: Settings | None) -> None:
    """Replace the process-wide settings (tests, embedded runner)."""
    global _settings
    _settings = settings
