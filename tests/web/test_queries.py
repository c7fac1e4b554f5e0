"""Where every consumed notification event went (the dashboard's accounting)."""

from __future__ import annotations

from smartflow_streams.web.queries import notification_events


def test_every_consumed_event_is_a_record_status_or_deduplicated() -> None:
    records = {"pending": 0, "sending": 0, "sent": 5, "failed": 0, "dead": 0, "skipped": 20}
    events = notification_events({"consumed": 106, "dead": 2, "pending": 1}, records)
    assert events == {"consumed": 106, "recorded": 25, "deduplicated": 81, "dead_in_outbox": 2}
    assert sum(records.values()) + events["deduplicated"] == events["consumed"]
    # purged outbox rows can leave fewer consumed events than records: never a negative count
    assert notification_events({"consumed": 3}, records)["deduplicated"] == 0
