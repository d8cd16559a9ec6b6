"""One row of the run ledger as a typed record, and its codec (the only place that knows the columns).

PartitionKey = tenant id, RowKey = pipeline run id (or ``start-failed-...`` for a refused start).
See ``shared/records.py`` for how records are read and written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime
from typing import Any, Final

from .records import BOOL as _B
from .records import DATETIME as _D
from .records import STR as _S
from .records import RecordCodec, columns
from .tenants import FactoryRef

#: Data Factory's statuses of a run that has not ended yet.
ACTIVE_STATUSES: Final = ("Queued", "InProgress", "Canceling")
#: Data Factory's final statuses.
FINAL_STATUSES: Final = ("Succeeded", "Failed", "Cancelled")
#: Our own final statuses: createRun was refused; Data Factory no longer knows the run.
START_FAILED: Final = "StartFailed"
LOST: Final = "Lost"
#: Every status a run row can have: Data Factory's and our own.
RUN_STATUSES: Final = (*ACTIVE_STATUSES, *FINAL_STATUSES, START_FAILED, LOST)


@dataclass(frozen=True)
class RunRecord:
    """One run ledger row; fields are the row's columns, typed (see :data:`RUN_CODEC` for their names).

    ``status`` is Data Factory's status of the run (one of :data:`RUN_STATUSES`), kept as Data Factory
    spelled it: a status a newer Data Factory invents is recorded, not refused.
    """

    tenant_id: str
    run_id: str
    _: KW_ONLY
    status: str = ""
    message: str = ""  # Data Factory's message (the error of a failed run), or why the start failed
    display_name: str = ""
    trigger: str = ""
    started_at: datetime | None = None  # when Viva Relay asked Data Factory to start the run
    run_start: datetime | None = None
    run_end: datetime | None = None  # when the run ended, as Data Factory reports it
    last_checked_at: datetime | None = None
    subscription_id: str | None = None
    resource_group: str | None = None
    factory_name: str | None = None
    pipeline: str | None = None
    parameters: str | None = None  # the createRun parameters as JSON text
    watch: bool | None = None  # True while the follow timer still has work on the row
    no_drop_alert: bool | None = None
    no_drop_alert_at: datetime | None = None
    drop_id: str | None = None
    drop_state: str | None = None
    etag: str = field(default="", compare=False)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        """True while the run has not ended."""
        return self.status in ACTIVE_STATUSES

    @property
    def factory(self) -> FactoryRef:
        """The factory and pipeline that run it."""
        return FactoryRef(
            subscription_id=self.subscription_id or "",
            resource_group=self.resource_group or "",
            factory_name=self.factory_name or "",
            pipeline=self.pipeline or "",
        )

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly view (for the CLI)."""
        try:
            parameters: Any = json.loads(self.parameters or "{}")
        except ValueError:
            parameters = self.parameters
        return {
            "tenant_id": self.tenant_id,
            "run_id": self.run_id,
            "display_name": self.display_name,
            "status": self.status,
            "message": self.message,
            "trigger": self.trigger,
            "started_at": _iso(self.started_at),
            "run_start": _iso(self.run_start),
            "run_end": _iso(self.run_end),
            "last_checked_at": _iso(self.last_checked_at),
            "subscription_id": self.subscription_id or "",
            "resource_group": self.resource_group or "",
            "factory_name": self.factory_name or "",
            "pipeline": self.pipeline or "",
            "parameters": parameters,
            "drop_id": self.drop_id or "",
            "drop_state": self.drop_state or "",
            "no_drop_alert": bool(self.no_drop_alert),
            "watch": bool(self.watch),
        }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


#: The run ledger's columns: field, stored name, Table type. The one place that knows them.
RUN_CODEC: Final = RecordCodec(
    RunRecord,
    ("tenant_id", "run_id"),
    columns(
        ("status", "Status", _S),
        ("message", "Message", _S),
        ("display_name", "DisplayName", _S),
        ("trigger", "Trigger", _S),
        ("started_at", "StartedAt", _D),
        ("run_start", "RunStart", _D),
        ("run_end", "RunEnd", _D),
        ("last_checked_at", "LastCheckedAt", _D),
        ("subscription_id", "SubscriptionId", _S),
        ("resource_group", "ResourceGroup", _S),
        ("factory_name", "FactoryName", _S),
        ("pipeline", "Pipeline", _S),
        ("parameters", "Parameters", _S),
        ("watch", "Watch", _B),
        ("no_drop_alert", "NoDropAlert", _B),
        ("no_drop_alert_at", "NoDropAlertAt", _D),
        ("drop_id", "DropId", _S),
        ("drop_state", "DropState", _S),
    ),
)
