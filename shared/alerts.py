"""Health alerts: one structured log event per open problem, not repeated until it changes or ages.

The ``health_check`` timer calls :func:`announce` with the problems of :func:`shared.health.check_fleet`.
A problem is announced when it is new, when it changed (its severity), or when
``HEALTH_REPEAT_HOURS`` passed since it was last announced; a problem that went away is logged
once as resolved. What was announced when is kept in a Table (``HEALTH_TABLE``: PartitionKey the
tenant id or ``fleet``, RowKey a hash of rule and subject), so a restart or a second instance
does not announce again.

Events go through Python logging, which the Functions host sends to Application Insights as
``traces``. Each record carries its fields twice, so both telemetry pipelines can query them:
flat in ``extra`` (with the OpenTelemetry exporter every ``extra`` key becomes a custom dimension,
``customDimensions.health_rule`` ...), and as JSON after the fixed prefix of the message (the
default host pipeline keeps only the message text). docs/operations.md has the KQL queries.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from azure.core.exceptions import ResourceExistsError, ResourceModifiedError

from .clock import Clock, utc_now
from .health import Problem
from .tables import TableStore, as_utc, entity_etag

if TYPE_CHECKING:
    from .runtime import Runtime

#: Every health event's message starts with this (the KQL queries filter on it).
EVENT_PREFIX: Final = "VivaRelayHealth"
PROBLEM: Final = "problem"
RESOLVED: Final = "resolved"

log = logging.getLogger("viva_relay.health")

_LEVELS: Final = {"error": logging.ERROR, "warning": logging.WARNING, "info": logging.INFO}


def event_fields(problem: Problem, event: str) -> dict[str, Any]:
    """The custom dimensions of one event (names prefixed so they never clash with LogRecord's)."""
    return {
        "health_event": event,
        "health_rule": problem.rule,
        "health_severity": problem.severity,
        "health_tenant": problem.tenant,
        "health_subject": problem.subject,
        "health_message": problem.message,
        "health_advice": problem.advice,
    }


def log_event(problem: Problem, event: str, logger: logging.Logger = log) -> None:
    """Log one structured event (a problem announced, or one resolved)."""
    fields = event_fields(problem, event)
    level = _LEVELS.get(problem.severity, logging.WARNING) if event == PROBLEM else logging.INFO
    logger.log(level, "%s %s", EVENT_PREFIX, json.dumps(fields, sort_keys=True), extra=fields)


@dataclass(frozen=True)
class Announcements:
    """What one :func:`announce` call logged."""

    announced: tuple[Problem, ...]
    resolved: tuple[Problem, ...]
    still_quiet: int  # open problems not announced again (announced recently, unchanged)


class AnnouncementStore(TableStore):
    """When each problem was last announced (Azure Table; Azurite locally)."""

    label = "health announcements"

    @staticmethod
    def row_key(problem_key: str) -> str:
        """A RowKey for a problem's key (rule and subject may hold characters RowKeys do not allow)."""
        return hashlib.sha256(problem_key.encode("utf-8")).hexdigest()[:40]

    def open_rows(self) -> dict[str, Any]:
        """Every problem currently recorded as open, by problem key (one query)."""
        return {str(e.get("ProblemKey")): e for e in self.select_entities({"Open": True})}

    def record(self, problem: Problem, now: datetime, *, open_: bool, etag: str = "") -> None:
        """Write the problem's row (conditionally when ``etag``; a lost race is left to the winner)."""
        entity = {
            "PartitionKey": problem.tenant or "fleet",
            "RowKey": self.row_key(problem.key),
            "ProblemKey": problem.key,
            "Fingerprint": problem.fingerprint,
            "Problem": json.dumps(problem.as_dict(), sort_keys=True)[:30000],
            "Open": open_,
            "AnnouncedAt": now,
        }
        try:
            if etag:
                self.replace_entity(entity, etag)
            else:
                self.ensure()
                self.call("upsert", lambda: self.table.upsert_entity(entity))
        except (ResourceModifiedError, ResourceExistsError):
            pass


def _problem_of(entity: Any) -> Problem:
    doc = json.loads(str(entity.get("Problem") or "{}"))
    return Problem(**{k: str(doc.get(k, "")) for k in ("rule", "severity", "tenant", "subject", "message", "advice")})


def announce(
    problems: Iterable[Problem],
    store: AnnouncementStore,
    repeat_hours: int,
    clock: Clock = utc_now,
    logger: logging.Logger = log,
) -> Announcements:
    """Log the problems that are new, changed or due again; log the ones that went away as resolved."""
    now = clock()
    repeat = timedelta(hours=repeat_hours)
    known = store.open_rows()
    announced: list[Problem] = []
    quiet = 0
    seen: set[str] = set()
    for problem in problems:
        if problem.key in seen:
            continue
        seen.add(problem.key)
        row = known.get(problem.key)
        last = as_utc(row.get("AnnouncedAt")) if row is not None else None
        unchanged = row is not None and row.get("Fingerprint") == problem.fingerprint
        if unchanged and last is not None and now - last < repeat:
            quiet += 1
            continue
        log_event(problem, PROBLEM, logger)
        store.record(problem, now, open_=True, etag=entity_etag(row) if row is not None else "")
        announced.append(problem)
    resolved: list[Problem] = []
    for key, row in known.items():
        if key in seen:
            continue
        gone = _problem_of(row)
        log_event(gone, RESOLVED, logger)
        store.record(gone, now, open_=False, etag=entity_etag(row))
        resolved.append(gone)
    return Announcements(tuple(announced), tuple(resolved), quiet)


def announcement_store(rt: Runtime) -> AnnouncementStore:
    """The announcement table in the relay storage (``HEALTH_TABLE``)."""
    return AnnouncementStore(rt.table(rt.settings.health_table))
