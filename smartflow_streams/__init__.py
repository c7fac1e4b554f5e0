"""smartflow-streams: a service-level transactional outbox over Kafka, consumed by Faust agents.

``faust -A smartflow_streams worker`` finds :data:`app` here; it is built lazily (PEP 562) so that importing the
package for its library parts (catalog, repository, contracts) does not build a Faust app.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "app":
        from smartflow_streams.startup.faust_app import app

        return app
    raise AttributeError(f"module 'smartflow_streams' has no attribute {name!r}")
