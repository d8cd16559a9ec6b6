"""An operator's second chance for a drop: re-deliver a failed (or waiting) drop.

A failed drop stays in the landing storage, untouched, until an operator acts: after fixing the
cause (importing the tenant's key, replacing a bad file, ...) ``drops reprocess`` moves it back to
waiting (the old reason kept in ``PreviousReason``) and runs the ingest again, exactly as the blob
trigger would. The move is ETag-guarded and refused while cleanup is deleting the drop.
"""

from __future__ import annotations

from . import rowplan
from .ingest import IngestOutcome, ingest_metadata_blob
from .ledger import FAILED, WAITING
from .runtime import Runtime
from .status import Status

REFUSED = Status.REFUSED
NOT_FOUND = Status.NOT_FOUND


def reprocess_drop(rt: Runtime, drop_id: str) -> IngestOutcome:
    """Re-deliver drop ``drop_id`` if it is failed or waiting; the outcome says what happened.

    Status ``delivered`` on success; ``failed``/``waiting``/``skipped`` from the ingest otherwise;
    ``not_found`` or ``refused`` when the drop cannot be reprocessed (nothing is changed then).
    """
    record = rt.ledger.find(drop_id)
    if record is None:
        return IngestOutcome(NOT_FOUND, drop_id, reason=f"no drop {drop_id} in the ledger")
    if record.state not in (FAILED, WAITING):
        return IngestOutcome(
            REFUSED,
            drop_id,
            record.tenant,
            reason=f"the drop is {record.state}; only failed or waiting drops can be reprocessed",
        )
    location = record.location
    if location.account.lower() != rt.landing_account.lower():
        return IngestOutcome(
            REFUSED, drop_id, record.tenant, reason=f"the drop is in storage account {location.account}"
        )
    if location.container != rt.settings.landing_container:
        return IngestOutcome(
            REFUSED,
            drop_id,
            record.tenant,
            reason=f"the drop is in container {location.container}, not LANDING_CONTAINER"
            f" {rt.settings.landing_container}",
        )
    if record.state == FAILED and rt.ledger.reopen_failed(record, "reprocess requested by an operator") is None:
        fresh = rt.ledger.find(drop_id)
        state = fresh.state if fresh else "gone"
        busy = " and cleanup is deleting it" if fresh is not None and fresh.deleting_owner else ""
        return IngestOutcome(REFUSED, drop_id, record.tenant, reason=f"the drop is {state}{busy}; left alone")
    rowplan.adopt_current_policy(rt, rt.ledger.find(drop_id) or record)
    return ingest_metadata_blob(rt, location.container, location.metadata_path)
