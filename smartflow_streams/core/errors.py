"""Error taxonomy. Every error says whether retrying can help (``retriable``), like aiokafka's errors.

Callers classify with :func:`is_retriable`: a retriable failure sends an outbox row back to ``pending`` with
backoff; a non-retriable one (poison) ends it ``dead`` with the reason. Unknown exceptions are treated as
retriable, bounded by the row's ``max_retry`` (default 20), so a bug cannot loop forever.
"""

from __future__ import annotations


class SmartflowError(Exception):
    """Base class. ``retriable`` tells whether the same input can succeed later."""

    retriable: bool = False
    code: str = "error"


class ContractError(SmartflowError):
    """Input violates an event contract (bad JSON, missing field, bad version). Poison: never retried."""

    code = "contract_invalid"


class RouteError(SmartflowError):
    """An event type has no owner, or a repository was asked to write another service's event."""

    code = "route_invalid"


class RouteNotRegisteredError(RouteError):
    code = "route_not_registered"


class RouteConflictError(RouteError):
    code = "route_conflict"


class NoHandlerError(SmartflowError):
    """The owning service has no handler for this event type. Poison for that service."""

    code = "no_handler"


class TransientError(SmartflowError):
    """Temporary failure (DB deadlock, broker down, lease held by another worker): retry later."""

    retriable = True
    code = "transient"


class LeaseHeldError(TransientError):
    """Another worker holds the lease on the record; try again after it expires."""

    code = "lease_held"


def is_retriable(exc: BaseException) -> bool:
    if isinstance(exc, SmartflowError):
        return exc.retriable
    return True
