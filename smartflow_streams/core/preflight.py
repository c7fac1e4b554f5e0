"""Start-up checks and outage logging shared by ``smartflow up``, the relay and the worker.

Invariants:
- Every message names what failed, where (``host:port``; database URLs with the password masked), the underlying
  error (exception class and text) and what to do next (the ``SMARTFLOW_...`` key that moves a port, the retry).
- :class:`OutageLog` writes one line per state change (up -> down, another error class while down, down -> up) and
  one reminder every ``reminder_seconds`` while down, however often the caller retries: a relay that retries
  every 100 ms against a dead broker logs 1 line, then 1 per reminder interval (60 s by default).
- Port checks bind with ``SO_REUSEADDR`` as aiohttp's servers do, so a port left in TIME_WAIT counts as free and
  a port some process listens on counts as taken. A check is a snapshot: the port can be taken between the
  check and the bind (the child then fails and its log says so).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from smartflow_streams.core.masking import mask_database_url, scrub_text


@dataclass(frozen=True)
class PortClaim:
    """A port one part of the stack will listen on, and the setting that moves it."""

    what: str  # e.g. "worker web server"
    host: str
    port: int
    setting: str  # e.g. "SMARTFLOW_WORKER__WEB_PORT"


def port_error(host: str, port: int) -> OSError | None:
    """``None`` when ``host:port`` can be bound now, else the bind error (``EADDRINUSE`` when taken)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc
    return None


def port_taken_message(claim: PortClaim, error: OSError) -> str:
    return (f"{claim.what}: port {claim.host}:{claim.port} is not free ({describe(error)}); stop what listens "
            f"there or set {claim.setting} to a free port")


def check_ports(claims: list[PortClaim]) -> list[str]:
    """One message per claim that cannot be bound or that shares its port with an earlier claim."""
    problems: list[str] = []
    seen: dict[int, PortClaim] = {}
    for claim in claims:
        if claim.port == 0:
            continue
        if claim.port in seen:
            other = seen[claim.port]
            problems.append(f"{claim.what} and {other.what} are both set to port {claim.port}: change "
                            f"{claim.setting} or {other.setting}")
            continue
        seen[claim.port] = claim
        error = port_error(claim.host, claim.port)
        if error is not None:
            problems.append(port_taken_message(claim, error))
    return problems


def unreachable_brokers(servers: list[str], timeout: float = 1.0) -> list[tuple[str, OSError]]:
    """The bootstrap servers a TCP connection cannot reach within ``timeout``; empty when any one answers."""
    failures: list[tuple[str, OSError]] = []
    for server in servers:
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
                return []
        except OSError as exc:
            failures.append((server, exc))
    return failures


def describe(exc: BaseException) -> str:
    """``ClassName: message`` with secrets scrubbed and whitespace folded, at most 300 characters."""
    orig = getattr(exc, "orig", None)  # SQLAlchemy wraps the driver's error (and appends a help link)
    if isinstance(orig, BaseException):
        exc = orig
    name = type(exc).__name__
    text = " ".join(scrub_text(mask_database_url(str(exc))).split())
    text = text.removeprefix(f"{name}: ")  # aiokafka's errors repeat their class name in the message
    return f"{name}: {text}"[:300] if text else name


def database_where(url: str) -> str:
    """Where a database URL points, for messages: ``mysql 127.0.0.1:3306/app (user app)`` or the SQLite file."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+")[0]
    if scheme == "sqlite":
        return f"sqlite file {url.split(':///', 1)[-1] or ':memory:'}"
    try:
        port = parts.port or 3306
    except ValueError:
        port = 3306
    user = f" (user {parts.username})" if parts.username else ""
    return f"{scheme} {parts.hostname}:{port}{parts.path}{user}"


class OutageLog:
    """Logs the state of one dependency (``what`` at ``where``) once per change and reminds while it is down.

    ``failed()`` may be called on every retry; it writes a line only on the first failure, when the error text
    class changes, or when ``reminder_seconds`` passed since the last line. ``recovered()`` writes one line if the
    dependency was down. Errors are compared by exception class only: a message that changes on each attempt
    (a port, a counter) does not make a new line; the reminder shows the latest message.
    """

    def __init__(self, logger: logging.Logger, what: str, where: str, reminder_seconds: float = 60.0, *,
                 problem: str = "not reachable") -> None:
        self.log, self.what, self.where, self.problem = logger, what, where, problem
        self.reminder_seconds = reminder_seconds
        self.down_since: float | None = None
        self.attempts = 0
        self._last_error = ""
        self._last_line = 0.0

    @property
    def is_down(self) -> bool:
        return self.down_since is not None

    def failed(self, exc: BaseException | str, retry_in: float) -> None:
        now = time.monotonic()
        error = exc if isinstance(exc, str) else describe(exc)
        self.attempts += 1
        if self.down_since is None:
            self.down_since, self.attempts = now, 1
            self.log.warning("%s %s %s (%s); retrying in %s", self.what, self.where, self.problem, error,
                             _seconds(retry_in))
        elif _kind(error) != _kind(self._last_error):
            self.log.warning("%s %s still %s, now: %s; retrying in %s", self.what, self.where, self.problem, error,
                             _seconds(retry_in))
        elif now - self._last_line >= self.reminder_seconds:
            self.log.warning("%s %s still %s after %s (%d attempts): %s; next retry in %s", self.what,
                             self.where, self.problem, _seconds(now - self.down_since), self.attempts, error,
                             _seconds(retry_in))
        else:
            return
        self._last_error, self._last_line = error, now

    def recovered(self) -> None:
        if self.down_since is None:
            return
        self.log.warning("%s %s ok again after %s (%d failed attempts)", self.what, self.where,
                         _seconds(time.monotonic() - self.down_since), self.attempts)
        self.down_since, self._last_error, self.attempts = None, "", 0


def _kind(error: str) -> str:
    """The exception class of a :func:`describe` text: a changed class is a new state, a changed message is not."""
    return error.split(":", 1)[0]


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"
