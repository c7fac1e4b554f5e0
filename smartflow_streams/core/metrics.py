"""Prometheus metrics of smartflow-streams (one registry per process: prometheus_client's default).

The relay serves these on its own ``/metrics`` (it is a separate process); the Faust worker serves them next to
Faust's sensor metrics on its ``/metrics``. Label ``service`` is a catalog service name (8 built-in), so label
cardinality stays below 100 series per metric.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

relay_claimed = Counter("smartflow_relay_claimed_total", "Outbox rows claimed by the relay", ["service"])
relay_published = Counter("smartflow_relay_published_total", "Outbox rows published to Kafka", ["service"])
relay_retried = Counter("smartflow_relay_retried_total", "Outbox rows sent back to pending by the relay", ["service"])
relay_dead = Counter("smartflow_relay_dead_total", "Outbox rows the relay moved to dead", ["service"])
relay_batch_seconds = Histogram(
    "smartflow_relay_batch_seconds", "Claim-to-marked time of one relay batch", ["service"], buckets=_LATENCY_BUCKETS
)
relay_commit_to_publish_seconds = Histogram(
    "smartflow_relay_commit_to_publish_seconds", "Row created_at to marked published", ["service"],
    buckets=_LATENCY_BUCKETS,
)
relay_is_leader = Gauge("smartflow_relay_table_leader", "1 while this relay holds the table lease", ["service"])
outbox_backlog = Gauge("smartflow_outbox_rows", "Outbox rows by status", ["service", "status"])
outbox_oldest_pending = Gauge(
    "smartflow_outbox_oldest_pending_seconds", "Age of the oldest pending outbox row", ["service"]
)

consumed = Counter(
    "smartflow_outbox_consumed_total", "Outbox messages handled by agents, by outcome", ["service", "outcome"]
)
agent_batch_events = Histogram(
    "smartflow_agent_batch_events", "Events per batch an agent took from its stream", ["service"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
batch_fallbacks = Counter(
    "smartflow_batch_fallbacks_total", "Agent batches that raised and were handled one event at a time", ["service"]
)
commit_to_consume_seconds = Histogram(
    "smartflow_commit_to_consume_seconds", "Row created_at to handler done", ["service"], buckets=_LATENCY_BUCKETS
)
notifications = Counter("smartflow_notifications_total", "Notification delivery outcomes", ["status"])
notification_provider_seconds = Histogram(
    "smartflow_notification_provider_seconds", "Webhook call latency", ["kind"], buckets=_LATENCY_BUCKETS
)
notification_dedupe_hits = Counter(
    "smartflow_notification_dedupe_hits_total", "Duplicate notification requests suppressed", ["layer"]
)
notification_rate_limit_wait_seconds = Counter(
    "smartflow_notification_rate_limit_wait_seconds_total", "Seconds spent waiting for the webhook rate limiter"
)
notification_records = Gauge("smartflow_notification_records", "Notification records by status", ["status"])
retention_deleted = Counter(
    "smartflow_retention_deleted_total", "Rows deleted by scheduled retention", ["table"]
)
consumer_lag = Gauge(
    "smartflow_consumer_lag", "Messages on the partition not yet committed by this worker's group (highwater minus "
    "committed offset), per assigned partition of the worker's service topics", ["group", "topic", "partition"]
)
