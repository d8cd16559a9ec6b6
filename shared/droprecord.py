"""One row of the drop ledger as a typed record, and its codec (the only place that knows the columns).

PartitionKey = tenant id, RowKey = drop id. The columns a new row always gets (where the drop lives,
when it was first seen, its state and counters) have plain defaults; every other column is None
when the row does not have it (and a None is not written). See ``shared/records.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime
from typing import Any, Final

from .location import DropLocation
from .records import BOOL as _B
from .records import DATETIME as _D
from .records import FLOAT as _F
from .records import INT as _I
from .records import STR as _S
from .records import RecordCodec, columns

WAITING: Final = "waiting"
IN_PROGRESS: Final = "in_progress"
DELIVERED: Final = "delivered"
FAILED: Final = "failed"
DELETED: Final = "deleted"
#: Every state a drop can be in (checked before a row is written: see :func:`check_state`).
STATES: Final = (WAITING, IN_PROGRESS, DELIVERED, FAILED, DELETED)


class UnknownDropState(ValueError):
    """A ledger row names a state that is not one of :data:`STATES`."""


@dataclass(frozen=True)
class DropRecord:
    """One drop ledger row; fields are the row's columns, typed (see :data:`DROP_CODEC` for their names)."""

    tenant: str
    drop_id: str
    _: KW_ONLY
    # where the drop lives and its state (every row has these)
    state: str = ""
    account: str = ""
    container: str = ""
    drop_root: str = ""
    metadata_path: str = ""
    generation: str = ""
    run_id: str = ""
    first_seen: datetime | None = None
    attempts: int = 0
    checkpoint_seq: int = -1  # highest message sequence number durably delivered (-1: none)
    checkpoint_rows: int = 0
    # the lease and why the drop is where it is
    lease_owner: str | None = None
    lease_until: datetime | None = None
    started_at: datetime | None = None
    updated_at: datetime | None = None
    reason: str | None = None
    reason_code: str | None = None
    last_error: str | None = None
    # from its Metadata.json
    table_name: str | None = None
    rows_expected: int | None = None
    extraction_result_id: str | None = None
    copy_activity_id: str | None = None
    public_key_version: str | None = None
    data_factory_name: str | None = None
    office_geo: str | None = None
    metadata_tenant_id: str | None = None
    # how it is packed (recorded by the first attempt, reused on resume)
    encoding: str | None = None
    queue: str | None = None
    packer_version: int | None = None
    row_settings: str | None = None  # rowplan.RowSettings as JSON
    read_blobs: str | None = None  # the manifest of the blobs read (shared/manifest.py)
    complete_sent_at: datetime | None = None
    # delivered
    delivered_at: datetime | None = None
    rows: int | None = None
    messages: int | None = None
    messages_put_this_attempt: int | None = None
    algorithm: str | None = None
    key_version: str | None = None
    data_files: int | None = None
    ciphertext_bytes: int | None = None
    plaintext_bytes: int | None = None
    seconds: float | None = None
    mbps: float | None = None
    resumed_from_seq: int | None = None
    schema_drift: bool | None = None
    schema_report: str | None = None
    # failed, reprocessed
    failed_at: datetime | None = None
    previous_reason: str | None = None
    previous_reason_code: str | None = None
    previous_attempts: int | None = None
    reprocessed_at: datetime | None = None
    # cleanup's deletion marker and what it deleted
    deleting_owner: str | None = None
    deleting_until: datetime | None = None
    deleting_since: datetime | None = None
    deleted_at: datetime | None = None
    delete_reason: str | None = None
    state_before_delete: str | None = None
    blobs_deleted: int | None = None
    blobs_already_gone: int | None = None
    blobs_kept: int | None = None
    kept_blobs: str | None = None
    cleanup_note: str | None = None
    orphan_deleted_at: datetime | None = None
    orphan_delete_reason: str | None = None
    orphan_blobs_deleted: int | None = None
    orphan_blobs_kept: int | None = None
    orphan_blobs_leased: int | None = None
    # the row's ETag when read, and columns this version does not know (kept on rewrite)
    etag: str = field(default="", compare=False)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def location(self) -> DropLocation:
        """Where the drop lives."""
        return DropLocation(
            account=self.account,
            container=self.container,
            drop_root=self.drop_root,
            generation=self.generation,
            metadata_name=self.metadata_path,
        )

    def lease_active(self, now: datetime) -> bool:
        """True while another attempt's lease has not expired."""
        until = self.lease_until
        return self.state == IN_PROGRESS and until is not None and until > now

    def columns(self) -> dict[str, Any]:
        """Every column of the row by its stored name (for a full listing such as ``drops show``)."""
        entity = DROP_CODEC.encode(self)
        return {k: v for k, v in entity.items() if k not in ("PartitionKey", "RowKey")}


def check_state(record: DropRecord) -> DropRecord:
    """``record`` if its state is one of :data:`STATES`, else UnknownDropState (nothing else is written).

    Reading does not check: a row another version wrote still lists, with its state as stored.
    """
    if record.state not in STATES:
        raise UnknownDropState(f"drop {record.drop_id} of tenant {record.tenant}: unknown state {record.state!r}")
    return record


#: The drop ledger's columns: field, stored name, Table type. The one place that knows them.
DROP_CODEC: Final = RecordCodec(
    DropRecord,
    ("tenant", "drop_id"),
    columns(
        ("state", "State", _S),
        ("account", "Account", _S),
        ("container", "Container", _S),
        ("drop_root", "DropRoot", _S),
        ("metadata_path", "MetadataPath", _S),
        ("generation", "Generation", _S),
        ("run_id", "RunId", _S),
        ("first_seen", "FirstSeen", _D),
        ("attempts", "Attempts", _I),
        ("checkpoint_seq", "CheckpointSeq", _I),
        ("checkpoint_rows", "CheckpointRows", _I),
        ("lease_owner", "LeaseOwner", _S),
        ("lease_until", "LeaseUntil", _D),
        ("started_at", "StartedAt", _D),
        ("updated_at", "UpdatedAt", _D),
        ("reason", "Reason", _S),
        ("reason_code", "ReasonCode", _S),
        ("last_error", "LastError", _S),
        ("table_name", "TableName", _S),
        ("rows_expected", "RowsExpected", _I),
        ("extraction_result_id", "ExtractionResultId", _S),
        ("copy_activity_id", "CopyActivityId", _S),
        ("public_key_version", "PublicKeyVersion", _S),
        ("data_factory_name", "DataFactoryName", _S),
        ("office_geo", "OfficeGeo", _S),
        ("metadata_tenant_id", "MetadataTenantId", _S),
        ("encoding", "Encoding", _S),
        ("queue", "Queue", _S),
        ("packer_version", "PackerVersion", _I),
        ("row_settings", "RowSettings", _S),
        ("read_blobs", "ReadBlobs", _S),
        ("complete_sent_at", "CompleteSentAt", _D),
        ("delivered_at", "DeliveredAt", _D),
        ("rows", "Rows", _I),
        ("messages", "Messages", _I),
        ("messages_put_this_attempt", "MessagesPutThisAttempt", _I),
        ("algorithm", "Algorithm", _S),
        ("key_version", "KeyVersion", _S),
        ("data_files", "DataFiles", _I),
        ("ciphertext_bytes", "CiphertextBytes", _I),
        ("plaintext_bytes", "PlaintextBytes", _I),
        ("seconds", "Seconds", _F),
        ("mbps", "MBps", _F),
        ("resumed_from_seq", "ResumedFromSeq", _I),
        ("schema_drift", "SchemaDrift", _B),
        ("schema_report", "SchemaReport", _S),
        ("failed_at", "FailedAt", _D),
        ("previous_reason", "PreviousReason", _S),
        ("previous_reason_code", "PreviousReasonCode", _S),
        ("previous_attempts", "PreviousAttempts", _I),
        ("reprocessed_at", "ReprocessedAt", _D),
        ("deleting_owner", "DeletingOwner", _S),
        ("deleting_until", "DeletingUntil", _D),
        ("deleting_since", "DeletingSince", _D),
        ("deleted_at", "DeletedAt", _D),
        ("delete_reason", "DeleteReason", _S),
        ("state_before_delete", "StateBeforeDelete", _S),
        ("blobs_deleted", "BlobsDeleted", _I),
        ("blobs_already_gone", "BlobsAlreadyGone", _I),
        ("blobs_kept", "BlobsKept", _I),
        ("kept_blobs", "KeptBlobs", _S),
        ("cleanup_note", "CleanupNote", _S),
        ("orphan_deleted_at", "OrphanDeletedAt", _D),
        ("orphan_delete_reason", "OrphanDeleteReason", _S),
        ("orphan_blobs_deleted", "OrphanBlobsDeleted", _I),
        ("orphan_blobs_kept", "OrphanBlobsKept", _I),
        ("orphan_blobs_leased", "OrphanBlobsLeased", _I),
    ),
)
