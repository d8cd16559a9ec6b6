"""The consumer as both the Function and the CLI run it: a database session and the queue loop.

Nothing is acknowledged before its transaction commits: a batch of messages is applied in one
transaction, and only then are the messages deleted from the queue (or, in the Function, does the
trigger return). A database that cannot be reached raises :class:`TransientError`: the messages stay
on the queue and become visible again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
import simdjson

from shared.config import POSTGRES_ENTRA_SCOPE, ConsumerSettings
from shared.errors import ConfigError, TransientError

from .contract import Parsed, Poison, parse
from .schema import migrate, pending_migrations
from .store import Applied, Published, apply_messages, poison, publish, ready_drops

log = logging.getLogger("viva_relay.consumer")
_DELETE_CONCURRENCY = 8


class TokenSource(Protocol):
    """What an Azure credential offers (``get_token``)."""

    def get_token(self, *scopes: str) -> Any:
        """An access token for ``scopes``."""


def connect(settings: ConsumerSettings, credential: TokenSource | None = None) -> psycopg.Connection:
    """Open an autocommit connection (transactions are explicit); Entra sign-in when configured."""
    if not settings.enabled:
        raise ConfigError("CONSUMER_DATABASE_URL is not set: the consumer has no database")
    kwargs: dict[str, Any] = {}
    if settings.entra_auth:
        if credential is None:
            from shared.runtime import default_credential

            credential = default_credential()
        # The token is the password; the user is the identity's name as created in the server.
        kwargs["password"] = credential.get_token(POSTGRES_ENTRA_SCOPE).token
        kwargs["sslmode"] = "require"
    try:
        return psycopg.connect(settings.database_url, autocommit=True, connect_timeout=10, **kwargs)
    except psycopg.OperationalError as exc:
        raise TransientError(f"PostgreSQL unreachable: {str(exc).strip().splitlines()[0]}") from None
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"CONSUMER_DATABASE_URL: {exc}") from None


@dataclass
class Consumer:
    """One database session of the consumer; reconnects after an outage."""

    settings: ConsumerSettings
    credential: TokenSource | None = None
    _conn: psycopg.Connection | None = field(default=None, repr=False)
    _parser: simdjson.Parser = field(default_factory=simdjson.Parser, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Consumer:
        """A consumer from the ``CONSUMER_*`` settings."""
        return cls(ConsumerSettings.from_env(env))

    def connection(self) -> psycopg.Connection:
        """The open connection (a new one after the last one broke)."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            self.close()
            self._conn = connect(self.settings, self.credential)
        return self._conn

    def close(self) -> None:
        """Close the connection (if any)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _guard(self, action: Callable[[psycopg.Connection], Any]) -> Any:
        """Run ``action``; a lost or unreachable server becomes :class:`TransientError`."""
        try:
            return action(self.connection())
        except psycopg.OperationalError as exc:
            self.close()
            raise TransientError(
                f"PostgreSQL: {str(exc).strip().splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from None

    def migrate(self) -> list[str]:
        """Apply pending migrations; returns the versions applied."""
        result: list[str] = self._guard(migrate)
        return result

    def pending_migrations(self) -> list[str]:
        """Migrations the database lacks."""
        result: list[str] = self._guard(pending_migrations)
        return result

    def apply(self, payloads: Sequence[str | bytes]) -> Applied:
        """Apply messages in one transaction; returns when it has committed."""
        items = [parse(p, self._parser) for p in payloads]
        return self.apply_parsed(items)

    def apply_parsed(self, items: Sequence[Parsed]) -> Applied:
        """Apply parsed messages in one transaction, or one by one when a message breaks the batch."""

        def in_one(conn: psycopg.Connection) -> Applied:
            with conn.transaction():
                return apply_messages(conn, items)

        try:
            result: Applied = self._guard(in_one)
            return result
        except psycopg.errors.UniqueViolation:
            # Another consumer staged the same (drop, seq) at the same moment: it is a duplicate now.
            result = self._guard(in_one)
            return result
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            # A value PostgreSQL refuses. (A ProgrammingError, e.g. a missing table, is not the
            # message's fault: it propagates and the message stays on the queue.)
            if len(items) > 1:
                total = Applied()
                for item in items:
                    total.add(self.apply_parsed([item]))
                return total
            return self._poison_alone(items[0], exc)

    def _poison_alone(self, item: Parsed, exc: Exception) -> Applied:
        """A message PostgreSQL refuses (e.g. a ``\\u0000`` in a JSON string) goes to poison."""
        raw = getattr(item, "raw", "")
        reason = f"refused by PostgreSQL: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        bad = Poison(reason, raw, getattr(item, "drop", None), getattr(item, "seq", None))

        def record(conn: psycopg.Connection) -> None:
            with conn.transaction():
                poison(conn, bad)

        self._guard(record)
        return Applied(poisoned=1)

    def publish_ready(self, among: Iterable[str] | None = None) -> list[Published]:
        """Publish every complete drop (or those ``among``) whose seqs are all staged."""

        def run(conn: psycopg.Connection) -> list[Published]:
            return [publish(conn, drop) for drop in ready_drops(conn, among)]

        result: list[Published] = self._guard(run)
        return result


class Queue(Protocol):
    """The parts of ``azure.storage.queue.QueueClient`` the drain loop uses."""

    def receive_messages(self, **kwargs: Any) -> Any:
        """Messages now visible."""

    def delete_message(self, message: Any, pop_receipt: str | None = None, **kwargs: Any) -> None:
        """Acknowledge one message."""


@dataclass
class DrainReport:
    """Counts of one ``consume`` run."""

    messages: int = 0
    applied: Applied = field(default_factory=Applied)
    published: list[Published] = field(default_factory=list)
    seconds: float = 0.0


def drain(
    consumer: Consumer,
    queue: Queue,
    *,
    once: bool = True,
    poll_seconds: float = 2.0,
    on_progress: Callable[[DrainReport], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> DrainReport:
    """Consume the queue: apply each batch, delete its messages after the commit, publish what is ready.

    With ``once`` it returns when the queue is empty; otherwise it polls until ``should_stop()``.
    Drops left complete by an earlier run (killed between staging and publishing) are published first.
    The next batch is received and decoded while the database applies the current one, and deletes
    run in the background; both only overlap work whose outcome they do not depend on.
    """
    report = DrainReport()
    started = time.monotonic()
    settings = consumer.settings

    parser = simdjson.Parser()  # used by the receiver thread only

    def receive() -> tuple[list[Any], list[Parsed]]:
        # Decoding here, on the receiver thread, overlaps it with the database work of the batch before.
        batch = list(
            queue.receive_messages(
                messages_per_page=settings.batch_messages,
                max_messages=settings.batch_messages,
                visibility_timeout=settings.visibility_timeout_seconds,
            )
        )
        return batch, [parse(m.content, parser) for m in batch]

    report.published += consumer.publish_ready()
    with ThreadPoolExecutor(1) as receiver, ThreadPoolExecutor(_DELETE_CONCURRENCY) as deleter:
        deletes: list[Future[None]] = []
        upcoming = receiver.submit(receive)
        try:
            while not should_stop():
                batch, parsed = upcoming.result()
                if not batch:
                    _settle(deletes)
                    report.published += consumer.publish_ready()
                    if once:
                        break
                    time.sleep(poll_seconds)
                    upcoming = receiver.submit(receive)
                    continue
                upcoming = receiver.submit(receive)
                applied = consumer.apply_parsed(parsed)
                # Acknowledge only now that the transaction has committed.
                deletes += [deleter.submit(queue.delete_message, m) for m in batch]
                report.messages += len(batch)
                report.applied.add(applied)
                report.published += consumer.publish_ready(applied.drops)
                report.seconds = time.monotonic() - started
                if on_progress is not None:
                    on_progress(report)
        finally:
            _settle(deletes)
    report.seconds = time.monotonic() - started
    return report


def _settle(deletes: list[Future[None]]) -> None:
    """Wait for the deletes sent so far. A failed delete only means the message returns later, as a
    duplicate the staging key absorbs: it is logged, not raised."""
    for future in deletes:
        error = future.exception()
        if error is not None:
            log.warning("a consumed message could not be deleted (it will come back as a duplicate): %s", error)
    deletes.clear()
