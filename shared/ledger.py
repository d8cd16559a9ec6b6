"""The drop ledger: each drop's state machine, with ETag-guarded transitions.

States::

    waiting ──> in_progress ──> delivered ──> deleted
       │             │  ▲
       │             ▼  │ (lease expired / released: the next attempt takes over)
       └─────────> failed ──(drops reprocess)──> waiting
                   failed ──(FAILED_DROP_RETENTION_DAYS > 0; off by default)──> deleted

Cleanup marks a delivered (or failed) row with ``DeletingOwner``/``DeletingUntil`` while it deletes
the blobs (see ``shared/cleanup.py`` and ``docs/lifecycle.md``).

One row per drop: PartitionKey = tenant id (the one the drop's location names), RowKey = drop id.
Every transition is a conditional write on the row's ETag, so two workers can never both own a
drop: the loser of a race re-reads and sees the winner's lease. Modelled on a persistence layer
with one interface and concrete backends; :class:`TableDropLedger` is the Azure Table backend.
A row is a frozen, typed :class:`DropRecord` (``shared/droprecord.py``, whose codec alone knows the
column names); a transition names record fields, makes a new record and writes it through
``tables.with_etag_retries``.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from azure.core.exceptions import (
    ResourceExistsError,
)

from .clock import Clock
from .droprecord import (
    DELETED,
    DELIVERED,
    DROP_CODEC,
    FAILED,
    IN_PROGRESS,
    STATES,
    WAITING,
    DropRecord,
    UnknownDropState,
    check_state,
)
from .errors import LeaseLost
from .location import DropLocation
from .records import check_fields
from .tables import TableStore, with_etag_retries

__all__ = [
    "DELETED",
    "DELETING",
    "DELIVERED",
    "FAILED",
    "IN_PROGRESS",
    "STATES",
    "WAITING",
    "Claim",
    "DropLedger",
    "DropRecord",
    "TableDropLedger",
    "UnknownDropState",
    "new_owner_id",
]

#: Not a state: the marker (``DeletingOwner``/``DeletingUntil`` columns) cleanup puts on a delivered
#: or failed row while it deletes the drop's blobs. Every existing transition already treats
#: delivered and failed rows as settled, so the marker never has to be understood by ingest.
DELETING = "deleting"

#: An update of a drop row: record fields (``DropRecord`` attribute names) and their new values.
Changes = Mapping[str, Any]


def _apply(record: DropRecord, changes: Changes) -> DropRecord:
    """A new record: ``record`` with ``changes`` (field names; a misspelt one is a TypeError)."""
    check_fields(DROP_CODEC, changes)
    return replace(record, **changes)


@dataclass(frozen=True)
class Claim:
    """The outcome of :meth:`DropLedger.claim`."""

    record: DropRecord
    claimed: bool
    why: str = ""


class DropLedger(ABC):
    """The drop state machine; see the module docstring."""

    #: Where "now" comes from for leases and timestamps (set by the backend's constructor).
    clock: Clock

    @abstractmethod
    def get(self, tenant: str, drop_id: str) -> DropRecord | None:
        """One drop, or None."""

    @abstractmethod
    def find(self, drop_id: str) -> DropRecord | None:
        """One drop by id, whatever its tenant."""

    @abstractmethod
    def list(self, tenant: str | None = None, state: str | None = None) -> Iterator[DropRecord]:
        """Drops, optionally of one tenant and/or state."""

    @abstractmethod
    def _insert(self, record: DropRecord) -> DropRecord:
        """Create the row; ResourceExistsError if it exists."""

    @abstractmethod
    def _replace(self, record: DropRecord) -> DropRecord:
        """Replace the row if its ETag still matches; ResourceModifiedError otherwise."""

    # -- transitions -------------------------------------------------------------------------

    @staticmethod
    def _new(location: DropLocation, tenant: str, now: datetime, changes: Changes) -> DropRecord:
        """A new row for the drop at ``location``, first seen ``now``, with ``changes``."""
        record = DropRecord(
            tenant,
            location.drop_id,
            account=location.account,
            container=location.container,
            drop_root=location.drop_root,
            metadata_path=location.metadata_path,
            generation=location.generation,
            run_id=location.run_id,
            first_seen=now,
        )
        return _apply(record, changes)

    def claim(
        self,
        location: DropLocation,
        tenant: str,
        owner: str,
        lease_seconds: int,
        *,
        details: Changes | None = None,
        now: datetime | None = None,
    ) -> Claim:
        """Take the drop's lease unless it is delivered, failed, or leased by a live attempt."""
        fixed_now = now

        def step() -> Claim:
            now = fixed_now or self.clock()
            record = self.get(tenant, location.drop_id)
            lease = {
                "state": IN_PROGRESS,
                "lease_owner": owner,
                "lease_until": now + timedelta(seconds=lease_seconds),
                "started_at": now,
                "reason": "",
                "reason_code": "",
            }
            if record is None:
                new = self._new(location, tenant, now, {**(details or {}), **lease, "attempts": 1})
                return Claim(self._insert(new), True)
            if record.state in (DELIVERED, DELETED):
                return Claim(record, False, f"already {record.state}")
            if record.state == FAILED:
                return Claim(record, False, f"failed earlier ({record.reason or ''}); use reprocess")
            if record.lease_active(now) and record.lease_owner != owner:
                return Claim(record, False, f"in progress by {record.lease_owner} until {record.lease_until}")
            changes = {**(details or {}), **lease, "attempts": record.attempts + 1}
            return Claim(self._replace(_apply(record, changes)), True)

        return with_etag_retries(step, f"could not claim drop {location.drop_id}: too much contention")

    def _record_state(
        self,
        location: DropLocation,
        tenant: str,
        changes: Changes,
        may_change: Callable[[DropRecord, datetime], bool],
        what: str,
    ) -> DropRecord:
        """Create the drop's row with ``changes``, or apply them to a row ``may_change`` accepts.

        ETag-guarded: on a lost race the row is read again and re-checked. A row it does not accept
        is returned unchanged.
        """

        def step() -> DropRecord:
            now = self.clock()
            current = self.get(tenant, location.drop_id)
            if current is None:
                return self._insert(self._new(location, tenant, now, changes))
            if not may_change(current, now):
                return current
            return self._replace(_apply(current, {**changes, "updated_at": now}))

        return with_etag_retries(step, f"could not record drop {location.drop_id} as {what}")

    def mark_waiting(self, location: DropLocation, tenant: str, reason: str) -> DropRecord:
        """Record that the Metadata.json is not ready yet (only for new or waiting drops)."""

        def new_or_waiting(row: DropRecord, now: datetime) -> bool:
            return row.state == WAITING or (row.state == IN_PROGRESS and not row.lease_active(now))

        changes = {"state": WAITING, "reason": reason, "lease_owner": ""}
        return self._record_state(location, tenant, changes, new_or_waiting, "waiting")

    def _owned_update(self, record: DropRecord, changes: Changes) -> DropRecord:
        """Apply ``changes`` to a drop we hold the lease of; LeaseLost if someone took it over."""
        owner = record.lease_owner
        current = record
        lost_race = False

        def step() -> DropRecord:
            nonlocal current, lost_race
            if lost_race:  # our write lost a race: still ours only if nobody took the lease over
                fresh = self.get(record.tenant, record.drop_id)
                if fresh is None or fresh.lease_owner != owner or fresh.state != IN_PROGRESS:
                    raise LeaseLost(f"drop {record.drop_id} was taken over by another attempt")
                current = fresh
            lost_race = True
            # A new record: a write that fails (or is refused) leaves the caller's record as it was,
            # so a later release() still acts on the lease as held.
            return self._replace(_apply(current, {**changes, "updated_at": self.clock()}))

        return with_etag_retries(step, f"could not update drop {record.drop_id}")

    def heartbeat(
        self,
        record: DropRecord,
        checkpoint_seq: int,
        checkpoint_rows: int,
        lease_seconds: int,
        *,
        extra: Changes | None = None,
    ) -> DropRecord:
        """Checkpoint progress (messages and the rows they hold) and extend the lease."""
        newer = checkpoint_seq > record.checkpoint_seq
        return self._owned_update(
            record,
            {
                **(extra or {}),
                "checkpoint_seq": max(checkpoint_seq, record.checkpoint_seq),
                "checkpoint_rows": checkpoint_rows if newer else record.checkpoint_rows,
                "lease_until": self.clock() + timedelta(seconds=lease_seconds),
            },
        )

    def mark_delivered(self, record: DropRecord, stats: Changes) -> DropRecord:
        """The drop's rows and completion message are all in the queue."""
        return self._owned_update(
            record,
            {**stats, "state": DELIVERED, "lease_owner": "", "lease_until": None, "delivered_at": self.clock()},
        )

    def release(self, record: DropRecord, reason: str) -> DropRecord:
        """A transient failure: give the lease up now so the next attempt resumes at once."""
        released = self.clock() - timedelta(seconds=1)
        return self._owned_update(record, {"last_error": reason[:4000], "lease_until": released})

    def defer(self, record: DropRecord, reason: str) -> DropRecord:
        """Back to waiting (the drop is not complete in storage yet); the re-check timer looks again."""
        return self._owned_update(
            record,
            {"state": WAITING, "reason": reason[:4000], "lease_owner": "", "lease_until": None, "attempts": 0},
        )

    def mark_failed(
        self,
        location: DropLocation,
        tenant: str,
        code: str,
        reason: str,
        *,
        record: DropRecord | None = None,
        details: Changes | None = None,
    ) -> DropRecord:
        """A permanent failure: record the reason; the drop is kept until an operator acts."""
        changes = {
            **(details or {}),
            "state": FAILED,
            "reason_code": code,
            "reason": reason[:4000],
            "lease_owner": "",
            "lease_until": None,
            "failed_at": self.clock(),
        }
        if record is not None and record.state == IN_PROGRESS and record.lease_owner:
            return self._owned_update(record, changes)

        def may_fail(row: DropRecord, now: datetime) -> bool:
            # Never downgrade a delivered drop or disturb a live attempt.
            return row.state not in (DELIVERED, DELETED) and not row.lease_active(now)

        return self._record_state(location, tenant, changes, may_fail, "failed")

    # -- deletion and reprocessing (cleanup and the CLI) ----------------------------------------

    def update_if(
        self,
        record: DropRecord,
        allowed: Callable[[DropRecord], bool],
        changes: Changes | Callable[[DropRecord], Changes],
    ) -> DropRecord | None:
        """Apply ``changes`` while ``allowed(row)`` holds, ETag-guarded; None once it does not.

        On a lost race the row is read again and ``allowed`` re-checked, so a caller never acts
        on a row another writer changed. ``changes`` may be computed from the current row. A value
        of None removes the column. The caller's ``record`` is not modified (records are immutable).
        """
        current: DropRecord | None = record
        lost_race = False

        def step() -> DropRecord | None:
            nonlocal current, lost_race
            if lost_race:  # re-read and re-check: never act on a row another writer changed
                current = self.get(record.tenant, record.drop_id)
            lost_race = True
            if current is None or not allowed(current):
                return None
            delta = changes(current) if callable(changes) else changes
            return self._replace(_apply(current, {**delta, "updated_at": self.clock()}))

        return with_etag_retries(step, f"could not update drop {record.drop_id}: too much contention")

    def claim_deletion(
        self,
        record: DropRecord,
        owner: str,
        lease_seconds: int,
        *,
        states: tuple[str, ...] = (DELIVERED,),
        now: datetime | None = None,
    ) -> DropRecord | None:
        """Put the deletion marker on a row in one of ``states``; None if it moved on or is held.

        A marker whose lease expired (a cleanup that died) is taken over.
        """
        now = now or self.clock()

        def free(row: DropRecord) -> bool:
            holder, until = row.deleting_owner, row.deleting_until
            return row.state in states and (not holder or holder == owner or until is None or until <= now)

        return self.update_if(
            record,
            free,
            {"deleting_owner": owner, "deleting_until": now + timedelta(seconds=lease_seconds), "deleting_since": now},
        )

    def mark_deleted(self, record: DropRecord, owner: str, details: Changes) -> DropRecord | None:
        """The drop's blobs are gone: state deleted with ``details``; None if ``owner`` lost the marker."""

        def changes(row: DropRecord) -> Changes:
            return {
                **details,
                "state": DELETED,
                "deleted_at": row.deleted_at or self.clock(),  # a later orphan removal keeps the first
                "deleting_owner": None,
                "deleting_until": None,
                "deleting_since": None,
            }

        return self.update_if(record, lambda row: row.deleting_owner == owner, changes)

    def release_deletion(self, record: DropRecord, owner: str, note: str) -> DropRecord | None:
        """Give the deletion marker up without deleting (state unchanged), keeping ``note``."""
        changes = {"deleting_owner": None, "deleting_until": None, "deleting_since": None, "cleanup_note": note[:4000]}
        return self.update_if(record, lambda row: row.deleting_owner == owner, changes)

    def reopen_failed(self, record: DropRecord, note: str) -> DropRecord | None:
        """failed -> waiting for an operator's reprocess; None unless failed and not being deleted.

        The old reason, code and attempt count are kept in Previous* columns; the attempt count
        starts again so the retry budget applies to the new run.
        """

        def reopenable(row: DropRecord) -> bool:
            return row.state == FAILED and not row.deleting_owner

        def changes(row: DropRecord) -> Changes:
            return {
                "state": WAITING,
                "previous_reason": row.reason or "",
                "previous_reason_code": row.reason_code or "",
                "previous_attempts": row.attempts,
                "attempts": 0,
                "reason": note[:4000],
                "reason_code": "",
                "reprocessed_at": self.clock(),
            }

        return self.update_if(record, reopenable, changes)

    def record_orphan_deletion(
        self,
        location: DropLocation,
        tenant: str,
        owner: str,
        lease_seconds: int,
        details: Changes,
    ) -> DropRecord | None:
        """Insert a row for a drop the ledger never knew, as deleted and marked by ``owner``.

        Inserting first is what makes the deletion safe: an ingest that creates the row at the
        same moment makes this return None (and nothing is deleted), and one that comes later
        finds the drop deleted.
        """
        now = self.clock()
        changes = {
            **details,
            "state": DELETED,
            "deleting_owner": owner,
            "deleting_until": now + timedelta(seconds=lease_seconds),
            "deleting_since": now,
        }
        try:
            return self._insert(self._new(location, tenant, now, changes))
        except ResourceExistsError:
            return None


class TableDropLedger(TableStore, DropLedger):
    """The ledger in Azure Table storage (Azurite locally)."""

    label = "ledger"

    @staticmethod
    def _record(entity: Any) -> DropRecord:
        return DROP_CODEC.decode(entity)

    @staticmethod
    def _entity(record: DropRecord) -> dict[str, Any]:
        return DROP_CODEC.encode(check_state(record))

    def get(self, tenant: str, drop_id: str) -> DropRecord | None:
        """Read one row."""
        entity = self.read_entity(tenant, drop_id)
        return None if entity is None else self._record(entity)

    def find(self, drop_id: str) -> DropRecord | None:
        """Read one row by RowKey, across tenants."""
        rows = self.select_entities({"RowKey": drop_id})
        return self._record(rows[0]) if rows else None

    def list(self, tenant: str | None = None, state: str | None = None) -> Iterator[DropRecord]:
        """Query rows by tenant and/or state."""
        equal = {k: v for k, v in (("PartitionKey", tenant), (DROP_CODEC.column("state"), state)) if v}
        for entity in self.select_entities(equal):
            yield self._record(entity)

    def of_run(self, run_id: str) -> tuple[DropRecord, ...]:
        """The drops a pipeline run produced (their ``RunId`` column, set from the drop's folder)."""
        return tuple(self._record(entity) for entity in self.select_entities({DROP_CODEC.column("run_id"): run_id}))

    def seen_since_or_open(self, moment: datetime, fields: Sequence[str] = ()) -> tuple[DropRecord, ...]:
        """Drops first seen at or after ``moment`` plus every waiting, in-progress or failed drop (one query).

        ``fields`` (record field names) limits the columns read (all when empty); the keys are always read.
        """
        self.ensure()
        first_seen, state = DROP_CODEC.column("first_seen"), DROP_CODEC.column("state")
        flt = f"{first_seen} ge @since or {state} eq @w or {state} eq @p or {state} eq @f"
        params = {"since": moment, "w": WAITING, "p": IN_PROGRESS, "f": FAILED}
        select = ["PartitionKey", "RowKey", *map(DROP_CODEC.column, fields)] if fields else None
        entities = self.call("query", lambda: list(self.table.query_entities(flt, parameters=params, select=select)))
        return tuple(self._record(e) for e in entities)

    def _insert(self, record: DropRecord) -> DropRecord:
        return replace(record, etag=self.insert_entity(self._entity(record)))

    def _replace(self, record: DropRecord) -> DropRecord:
        return replace(record, etag=self.replace_entity(self._entity(record), record.etag))


def new_owner_id() -> str:
    """A unique id for one ingest attempt (the lease owner)."""
    return uuid.uuid4().hex[:16]
