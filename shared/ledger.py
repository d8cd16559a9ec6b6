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
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from azure.core.exceptions import (
    ResourceExistsError,
)

from .clock import Clock
from .errors import LeaseLost
from .location import DropLocation
from .tables import TableStore, as_utc, entity_etag, entity_props, with_etag_retries, without_nulls

WAITING = "waiting"
IN_PROGRESS = "in_progress"
DELIVERED = "delivered"
FAILED = "failed"
DELETED = "deleted"
STATES = (WAITING, IN_PROGRESS, DELIVERED, FAILED, DELETED)
#: Not a state: the marker (``DeletingOwner``/``DeletingUntil`` columns) cleanup puts on a delivered
#: or failed row while it deletes the drop's blobs. Every existing transition already treats
#: delivered and failed rows as settled, so the marker never has to be understood by ingest.
DELETING = "deleting"


@dataclass
class DropRecord:
    """One ledger row. ``props`` holds every column; helpers read the common ones."""

    tenant: str
    drop_id: str
    props: dict[str, Any] = field(default_factory=dict)
    etag: str = ""

    @property
    def state(self) -> str:
        """The drop's state."""
        return str(self.props.get("State", ""))

    @property
    def lease_owner(self) -> str:
        """Who holds the lease ('' when nobody)."""
        return str(self.props.get("LeaseOwner", "") or "")

    @property
    def lease_until(self) -> datetime | None:
        """When the lease expires."""
        return as_utc(self.props.get("LeaseUntil"))

    @property
    def checkpoint_seq(self) -> int:
        """Highest message sequence number durably delivered (-1: none)."""
        return int(self.props.get("CheckpointSeq", -1))

    @property
    def location(self) -> DropLocation:
        """Where the drop lives."""
        return DropLocation(
            account=str(self.props.get("Account", "")),
            container=str(self.props.get("Container", "")),
            drop_root=str(self.props.get("DropRoot", "")),
            generation=str(self.props.get("Generation", "") or ""),
            metadata_name=str(self.props.get("MetadataPath", "") or ""),
        )

    def lease_active(self, now: datetime) -> bool:
        """True while another attempt's lease has not expired."""
        until = self.lease_until
        return self.state == IN_PROGRESS and until is not None and until > now


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
    def _base(location: DropLocation, tenant: str, now: datetime) -> dict[str, Any]:
        return {
            "Account": location.account,
            "Container": location.container,
            "DropRoot": location.drop_root,
            "MetadataPath": location.metadata_path,
            "Generation": location.generation,
            "RunId": location.run_id,
            "FirstSeen": now,
            "Attempts": 0,
            "CheckpointSeq": -1,
            "CheckpointRows": 0,
        }

    def claim(
        self,
        location: DropLocation,
        tenant: str,
        owner: str,
        lease_seconds: int,
        *,
        details: dict[str, Any] | None = None,
        now: datetime | None = None,
    ) -> Claim:
        """Take the drop's lease unless it is delivered, failed, or leased by a live attempt."""
        fixed_now = now

        def step() -> Claim:
            now = fixed_now or self.clock()
            record = self.get(tenant, location.drop_id)
            lease = {
                "State": IN_PROGRESS,
                "LeaseOwner": owner,
                "LeaseUntil": now + timedelta(seconds=lease_seconds),
                "StartedAt": now,
                "Reason": "",
                "ReasonCode": "",
            }
            if record is None:
                props = self._base(location, tenant, now) | (details or {}) | lease | {"Attempts": 1}
                return Claim(self._insert(DropRecord(tenant, location.drop_id, props)), True)
            if record.state in (DELIVERED, DELETED):
                return Claim(record, False, f"already {record.state}")
            if record.state == FAILED:
                return Claim(record, False, f"failed earlier ({record.props.get('Reason', '')}); use reprocess")
            if record.lease_active(now) and record.lease_owner != owner:
                return Claim(record, False, f"in progress by {record.lease_owner} until {record.lease_until}")
            record.props.update(details or {})
            record.props.update(lease)
            record.props["Attempts"] = int(record.props.get("Attempts", 0)) + 1
            return Claim(self._replace(record), True)

        return with_etag_retries(step, f"could not claim drop {location.drop_id}: too much contention")

    def _record_state(
        self,
        location: DropLocation,
        tenant: str,
        changes: dict[str, Any],
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
                return self._insert(DropRecord(tenant, location.drop_id, self._base(location, tenant, now) | changes))
            if not may_change(current, now):
                return current
            current.props.update(changes | {"UpdatedAt": now})
            return self._replace(current)

        return with_etag_retries(step, f"could not record drop {location.drop_id} as {what}")

    def mark_waiting(self, location: DropLocation, tenant: str, reason: str) -> DropRecord:
        """Record that the Metadata.json is not ready yet (only for new or waiting drops)."""

        def new_or_waiting(row: DropRecord, now: datetime) -> bool:
            return row.state == WAITING or (row.state == IN_PROGRESS and not row.lease_active(now))

        changes = {"State": WAITING, "Reason": reason, "LeaseOwner": ""}
        return self._record_state(location, tenant, changes, new_or_waiting, "waiting")

    def _owned_update(self, record: DropRecord, changes: dict[str, Any]) -> DropRecord:
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
            # A copy: a write that fails (or is refused) must leave the caller's record as it was,
            # so a later release() still acts on the lease as held.
            props = current.props | changes | {"UpdatedAt": self.clock()}
            return self._replace(DropRecord(record.tenant, record.drop_id, props, current.etag))

        return with_etag_retries(step, f"could not update drop {record.drop_id}")

    def heartbeat(
        self,
        record: DropRecord,
        checkpoint_seq: int,
        checkpoint_rows: int,
        lease_seconds: int,
        *,
        extra: dict[str, Any] | None = None,
    ) -> DropRecord:
        """Checkpoint progress (messages and the rows they hold) and extend the lease."""
        newer = checkpoint_seq > record.checkpoint_seq
        return self._owned_update(
            record,
            (extra or {})
            | {
                "CheckpointSeq": max(checkpoint_seq, record.checkpoint_seq),
                "CheckpointRows": checkpoint_rows if newer else int(record.props.get("CheckpointRows", 0)),
                "LeaseUntil": self.clock() + timedelta(seconds=lease_seconds),
            },
        )

    def mark_delivered(self, record: DropRecord, stats: dict[str, Any]) -> DropRecord:
        """The drop's rows and completion message are all in the queue."""
        return self._owned_update(
            record,
            stats | {"State": DELIVERED, "LeaseOwner": "", "LeaseUntil": None, "DeliveredAt": self.clock()},
        )

    def release(self, record: DropRecord, reason: str) -> DropRecord:
        """A transient failure: give the lease up now so the next attempt resumes at once."""
        released = self.clock() - timedelta(seconds=1)
        return self._owned_update(record, {"LastError": reason[:4000], "LeaseUntil": released})

    def defer(self, record: DropRecord, reason: str) -> DropRecord:
        """Back to waiting (the drop is not complete in storage yet); the re-check timer looks again."""
        return self._owned_update(
            record,
            {"State": WAITING, "Reason": reason[:4000], "LeaseOwner": "", "LeaseUntil": None, "Attempts": 0},
        )

    def mark_failed(
        self,
        location: DropLocation,
        tenant: str,
        code: str,
        reason: str,
        *,
        record: DropRecord | None = None,
        details: dict[str, Any] | None = None,
    ) -> DropRecord:
        """A permanent failure: record the reason; the drop is kept until an operator acts."""
        changes = (details or {}) | {
            "State": FAILED,
            "ReasonCode": code,
            "Reason": reason[:4000],
            "LeaseOwner": "",
            "LeaseUntil": None,
            "FailedAt": self.clock(),
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
        changes: dict[str, Any] | Callable[[DropRecord], dict[str, Any]],
    ) -> DropRecord | None:
        """Apply ``changes`` while ``allowed(row)`` holds, ETag-guarded; None once it does not.

        On a lost race the row is read again and ``allowed`` re-checked, so a caller never acts
        on a row another writer changed. ``changes`` may be computed from the current row. A value
        of None removes the column. The caller's ``record`` is not modified.
        """
        current: DropRecord | None = DropRecord(record.tenant, record.drop_id, dict(record.props), record.etag)
        lost_race = False

        def step() -> DropRecord | None:
            nonlocal current, lost_race
            if lost_race:  # re-read and re-check: never act on a row another writer changed
                current = self.get(record.tenant, record.drop_id)
            lost_race = True
            if current is None or not allowed(current):
                return None
            delta = changes(current) if callable(changes) else changes
            props = current.props | delta | {"UpdatedAt": self.clock()}
            return self._replace(DropRecord(current.tenant, current.drop_id, props, current.etag))

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
            holder = str(row.props.get("DeletingOwner") or "")
            until = as_utc(row.props.get("DeletingUntil"))
            return row.state in states and (not holder or holder == owner or until is None or until <= now)

        return self.update_if(
            record,
            free,
            {"DeletingOwner": owner, "DeletingUntil": now + timedelta(seconds=lease_seconds), "DeletingSince": now},
        )

    def mark_deleted(self, record: DropRecord, owner: str, details: dict[str, Any]) -> DropRecord | None:
        """The drop's blobs are gone: state deleted with ``details``; None if ``owner`` lost the marker."""

        def changes(row: DropRecord) -> dict[str, Any]:
            return details | {
                "State": DELETED,
                "DeletedAt": row.props.get("DeletedAt") or self.clock(),  # a later orphan removal keeps the first
                "DeletingOwner": None,
                "DeletingUntil": None,
                "DeletingSince": None,
            }

        return self.update_if(record, lambda row: row.props.get("DeletingOwner") == owner, changes)

    def release_deletion(self, record: DropRecord, owner: str, note: str) -> DropRecord | None:
        """Give the deletion marker up without deleting (state unchanged), keeping ``note``."""
        changes = {"DeletingOwner": None, "DeletingUntil": None, "DeletingSince": None, "CleanupNote": note[:4000]}
        return self.update_if(record, lambda row: row.props.get("DeletingOwner") == owner, changes)

    def reopen_failed(self, record: DropRecord, note: str) -> DropRecord | None:
        """failed -> waiting for an operator's reprocess; None unless failed and not being deleted.

        The old reason, code and attempt count are kept in Previous* columns; the attempt count
        starts again so the retry budget applies to the new run.
        """

        def reopenable(row: DropRecord) -> bool:
            return row.state == FAILED and not row.props.get("DeletingOwner")

        def changes(row: DropRecord) -> dict[str, Any]:
            return {
                "State": WAITING,
                "PreviousReason": row.props.get("Reason", ""),
                "PreviousReasonCode": row.props.get("ReasonCode", ""),
                "PreviousAttempts": int(row.props.get("Attempts", 0)),
                "Attempts": 0,
                "Reason": note[:4000],
                "ReasonCode": "",
                "ReprocessedAt": self.clock(),
            }

        return self.update_if(record, reopenable, changes)

    def record_orphan_deletion(
        self,
        location: DropLocation,
        tenant: str,
        owner: str,
        lease_seconds: int,
        details: dict[str, Any],
    ) -> DropRecord | None:
        """Insert a row for a drop the ledger never knew, as deleted and marked by ``owner``.

        Inserting first is what makes the deletion safe: an ingest that creates the row at the
        same moment makes this return None (and nothing is deleted), and one that comes later
        finds the drop deleted.
        """
        now = self.clock()
        props = (
            self._base(location, tenant, now)
            | details
            | {
                "State": DELETED,
                "DeletingOwner": owner,
                "DeletingUntil": now + timedelta(seconds=lease_seconds),
                "DeletingSince": now,
            }
        )
        try:
            return self._insert(DropRecord(tenant, location.drop_id, props))
        except ResourceExistsError:
            return None


class TableDropLedger(TableStore, DropLedger):
    """The ledger in Azure Table storage (Azurite locally)."""

    label = "ledger"

    @staticmethod
    def _record(entity: Any) -> DropRecord:
        return DropRecord(entity["PartitionKey"], entity["RowKey"], entity_props(entity), entity_etag(entity))

    @staticmethod
    def _entity(record: DropRecord) -> dict[str, Any]:
        return {"PartitionKey": record.tenant, "RowKey": record.drop_id, **without_nulls(record.props)}

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
        equal = {k: v for k, v in (("PartitionKey", tenant), ("State", state)) if v}
        for entity in self.select_entities(equal):
            yield self._record(entity)

    def of_run(self, run_id: str) -> tuple[DropRecord, ...]:
        """The drops a pipeline run produced (their ``RunId`` column, set from the drop's folder)."""
        return tuple(self._record(entity) for entity in self.select_entities({"RunId": run_id}))

    def seen_since_or_open(self, moment: datetime, columns: Sequence[str] = ()) -> tuple[DropRecord, ...]:
        """Drops first seen at or after ``moment`` plus every waiting, in-progress or failed drop (one query).

        ``columns`` limits the columns read (all when empty); the keys are always read.
        """
        self.ensure()
        flt = "FirstSeen ge @since or State eq @w or State eq @p or State eq @f"
        params = {"since": moment, "w": WAITING, "p": IN_PROGRESS, "f": FAILED}
        select = ["PartitionKey", "RowKey", *columns] if columns else None
        entities = self.call("query", lambda: list(self.table.query_entities(flt, parameters=params, select=select)))
        return tuple(self._record(e) for e in entities)

    def _insert(self, record: DropRecord) -> DropRecord:
        record.etag = self.insert_entity(self._entity(record))
        return record

    def _replace(self, record: DropRecord) -> DropRecord:
        record.etag = self.replace_entity(self._entity(record), record.etag)
        return record


def new_owner_id() -> str:
    """A unique id for one ingest attempt (the lease owner)."""
    return uuid.uuid4().hex[:16]
