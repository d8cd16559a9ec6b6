"""Pipeline runs: start one Data Factory run per onboarded tenant, then follow each run to its end.

This is the "pull model" of the Viva Insights partner docs: Viva Relay starts the pipeline itself
(``pipelines.create_run`` with the tenant's parameters) instead of a Data Factory trigger, and
follows every run (``pipeline_runs.get``) until it ends.

The run ledger is an Azure Table (``RUN_TABLE``): PartitionKey the tenant id, RowKey the pipeline
run id. A row keeps the run's status and message, when it was started and ended, which factory ran
it with which parameters, whether the run's drop (its Metadata.json, matched through the drop
ledger's ``RunId`` column) has arrived, and ``NoDropAlert`` when a run succeeded but no drop came
within ``RUN_NO_DROP_ALERT_HOURS``. ``Watch`` is true while the follow timer still has work on a
row. A createRun that was refused is recorded too (status ``StartFailed``, RowKey
``start-failed-...``), so ``runs list`` shows every tenant's outcome of a schedule.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, TypeVar

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
)

from . import preflight
from .clock import to_utc
from .config import Settings
from .errors import TransientError, VivaRelayError
from .retry import with_retries
from .status import Status
from .tables import TableStore, as_utc, entity_etag, entity_props, utcnow, without_nulls
from .tenants import FactoryRef, Tenant, TenantRegistry, normalise_tenant_id

if TYPE_CHECKING:
    from azure.mgmt.datafactory import DataFactoryManagementClient
    from azure.mgmt.datafactory.models import PipelineRun

    from .runtime import Runtime

log = logging.getLogger("viva_relay")

T = TypeVar("T")

#: Data Factory's statuses of a run that has not ended yet.
ACTIVE_STATUSES: Final = ("Queued", "InProgress", "Canceling")
#: Data Factory's final statuses.
FINAL_STATUSES: Final = ("Succeeded", "Failed", "Cancelled")
#: Our own final statuses: createRun was refused; Data Factory no longer knows the run.
START_FAILED: Final = "StartFailed"
LOST: Final = "Lost"

#: Microsoft's sample pipeline: an empty RequestStartDate means trigger time minus this many days.
DEFAULT_LOOKBACK_DAYS: Final = 14
DEFAULT_AGGREGATION: Final = "Week"
#: Attempts of one createRun / pipeline-run read (on top of the SDK's own retries), and backoff.
ATTEMPTS: Final = 4
BASE_DELAY_S: Final = 2.0
#: Clock skew tolerated when looking for a run an earlier attempt may have created.
_ADOPT_SLACK: Final = timedelta(minutes=5)

Sleep = Callable[[float], None]


class PipelineStartError(VivaRelayError):
    """Data Factory refused to start (or to report) a pipeline run; retrying will not help."""


# --------------------------------------------------------------------------------------------------
# The run ledger
# --------------------------------------------------------------------------------------------------
def _aware(now: datetime | None) -> datetime:
    return utcnow() if now is None else to_utc(now)


def _iso(value: Any) -> str | None:
    moment = as_utc(value)
    return moment.isoformat() if moment else None


@dataclass
class RunRecord:
    """One row of the run ledger. ``props`` holds every column; properties read the common ones."""

    tenant_id: str
    run_id: str
    props: dict[str, Any] = field(default_factory=dict)
    etag: str = ""

    @property
    def status(self) -> str:
        """Data Factory's status of the run (or StartFailed / Lost)."""
        return str(self.props.get("Status", ""))

    @property
    def message(self) -> str:
        """Data Factory's message (the error of a failed run), or why the start failed."""
        return str(self.props.get("Message", "") or "")

    @property
    def started_at(self) -> datetime | None:
        """When Viva Relay asked Data Factory to start the run."""
        return as_utc(self.props.get("StartedAt"))

    @property
    def run_end(self) -> datetime | None:
        """When the run ended, as Data Factory reports it."""
        return as_utc(self.props.get("RunEnd"))

    @property
    def active(self) -> bool:
        """True while the run has not ended."""
        return self.status in ACTIVE_STATUSES

    @property
    def factory(self) -> FactoryRef:
        """The factory and pipeline that run it."""
        return FactoryRef(
            subscription_id=str(self.props.get("SubscriptionId", "")),
            resource_group=str(self.props.get("ResourceGroup", "")),
            factory_name=str(self.props.get("FactoryName", "")),
            pipeline=str(self.props.get("Pipeline", "")),
        )

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly view (for the CLI)."""
        p = self.props
        try:
            parameters = json.loads(str(p.get("Parameters") or "{}"))
        except ValueError:
            parameters = p.get("Parameters")
        return {
            "tenant_id": self.tenant_id,
            "run_id": self.run_id,
            "display_name": p.get("DisplayName", ""),
            "status": self.status,
            "message": self.message,
            "trigger": p.get("Trigger", ""),
            "started_at": _iso(p.get("StartedAt")),
            "run_start": _iso(p.get("RunStart")),
            "run_end": _iso(p.get("RunEnd")),
            "last_checked_at": _iso(p.get("LastCheckedAt")),
            "subscription_id": p.get("SubscriptionId", ""),
            "resource_group": p.get("ResourceGroup", ""),
            "factory_name": p.get("FactoryName", ""),
            "pipeline": p.get("Pipeline", ""),
            "parameters": parameters,
            "drop_id": p.get("DropId", "") or "",
            "drop_state": p.get("DropState", "") or "",
            "no_drop_alert": bool(p.get("NoDropAlert", False)),
            "watch": bool(p.get("Watch", False)),
        }


class RunLedger(TableStore):
    """The run ledger in Azure Table storage (Azurite locally)."""

    label = "run ledger"

    @staticmethod
    def _record(entity: Any) -> RunRecord:
        return RunRecord(str(entity["PartitionKey"]), str(entity["RowKey"]), entity_props(entity), entity_etag(entity))

    @staticmethod
    def _entity(record: RunRecord) -> dict[str, Any]:
        return {"PartitionKey": record.tenant_id, "RowKey": record.run_id, **without_nulls(record.props)}

    def insert(self, record: RunRecord) -> RunRecord:
        """Add a new row."""
        record.etag = self.insert_entity(self._entity(record))
        return record

    def replace(self, record: RunRecord) -> RunRecord:
        """Write the row back if nobody changed it since it was read (ResourceModifiedError otherwise)."""
        record.etag = self.replace_entity(self._entity(record), record.etag)
        return record

    def get(self, tenant_id: str, run_id: str) -> RunRecord | None:
        """One row, or None."""
        entity = self.read_entity(tenant_id, run_id)
        return None if entity is None else self._record(entity)

    def find(self, run_id: str) -> RunRecord | None:
        """One run by id, whatever its tenant."""
        rows = self.select_entities({"RowKey": run_id.strip()})
        return self._record(rows[0]) if rows else None

    def _query(self, equal: dict[str, Any]) -> list[RunRecord]:
        records = [self._record(e) for e in self.select_entities(equal)]
        epoch = datetime.min.replace(tzinfo=UTC)
        records.sort(key=lambda r: (r.started_at or epoch, r.run_id), reverse=True)
        return records

    def list_runs(self, tenant_id: str | None = None, status: str | None = None) -> list[RunRecord]:
        """Runs, newest first, optionally of one tenant and/or status."""
        equal: dict[str, Any] = {}
        if tenant_id:
            equal["PartitionKey"] = normalise_tenant_id(tenant_id)
        if status:
            equal["Status"] = status
        return self._query(equal)

    def active(self, tenant_id: str) -> list[RunRecord]:
        """The tenant's runs that have not ended (by the ledger's last knowledge)."""
        return [r for r in self.list_runs(tenant_id) if r.active]

    def started_since(self, moment: datetime, columns: Sequence[str] = ()) -> list[RunRecord]:
        """Every tenant's runs started at or after ``moment``, newest first: one query for the whole fleet.

        ``columns`` limits the columns read (all when empty); the keys are always read.
        """
        self.ensure()
        select = ["PartitionKey", "RowKey", *columns] if columns else None
        query = "StartedAt ge @since"
        entities = self.call(
            "query", lambda: list(self.table.query_entities(query, parameters={"since": moment}, select=select))
        )
        records = [self._record(e) for e in entities]
        epoch = datetime.min.replace(tzinfo=UTC)
        records.sort(key=lambda r: (r.started_at or epoch, r.run_id), reverse=True)
        return records

    def watched(self) -> list[RunRecord]:
        """Rows the follow timer still has work on (runs not ended, or succeeded with no drop yet)."""
        return self._query({"Watch": True})


def tenant_registry(rt: Runtime) -> TenantRegistry:
    """The tenant registry in the relay storage (``TENANT_TABLE``)."""
    return TenantRegistry(rt.table(rt.settings.tenant_table))


def run_ledger(rt: Runtime) -> RunLedger:
    """The run ledger in the relay storage (``RUN_TABLE``)."""
    return RunLedger(rt.table(rt.settings.run_table))


# --------------------------------------------------------------------------------------------------
# Talking to Data Factory
# --------------------------------------------------------------------------------------------------
def _arm_error(exc: HttpResponseError) -> str:
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None) or ""
    message = getattr(error, "message", None) or exc.reason or str(exc)
    return f"HTTP {exc.status_code} {code}: {' '.join(str(message).split())}".replace(" :", ":")


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ClientAuthenticationError):
        return False
    if isinstance(exc, HttpResponseError):
        return exc.status_code is not None and (exc.status_code in (408, 429) or exc.status_code >= 500)
    return isinstance(exc, AzureError)  # connection and response errors before any HTTP status


def _reached_service(exc: BaseException) -> bool:
    """True when the request may have been processed although no answer said so (5xx, lost reply)."""
    if isinstance(exc, HttpResponseError):
        return exc.status_code is not None and exc.status_code >= 500
    return isinstance(exc, AzureError) and not isinstance(exc, ServiceRequestError)


def _translate(exc: Exception, what: str, ref: FactoryRef) -> Exception:
    """Turn an SDK error into TransientError (retry) or PipelineStartError (do not)."""
    if preflight.is_signin_failure(exc):
        return preflight.signin_error(f"Data Factory {ref.factory_name}", exc)
    if isinstance(exc, ClientAuthenticationError):
        return PipelineStartError(
            f"{what}: Azure Resource Manager refused the sign-in ({' '.join(str(exc).split())});"
            f" {preflight.SIGN_IN_HINT}"
        )
    if isinstance(exc, HttpResponseError):
        text = _arm_error(exc)
        if exc.status_code == 403:
            scope = f"factory {ref.factory_name} (resource group {ref.resource_group})"
            text += f"; {preflight.missing_role(text, 'Data Factory Contributor', scope)}"
        return TransientError(f"{what}: {text}") if _is_transient(exc) else PipelineStartError(f"{what}: {text}")
    if isinstance(exc, AzureError):
        return TransientError(f"{what}: {exc}")
    return exc


def _retrying(fn: Callable[[], T], what: str, sleep: Sleep) -> T:
    # ``what`` only labels the retry warnings; the errors raised carry the full description.
    return with_retries(fn, attempts=ATTEMPTS, base_delay=BASE_DELAY_S, what=what, sleep=sleep)


def pipeline_parameters(
    tenant: Tenant, now: datetime, *, start_date: date | None = None, end_date: date | None = None
) -> dict[str, Any]:
    """The createRun parameters for ``tenant``.

    The window follows Microsoft's sample pipeline: from ``DefaultLookbackWindowDays`` (default 14,
    a tenant parameter may change it) before the trigger time up to the trigger time, as ISO dates.
    The tenant's own parameters are merged over the defaults; ``start_date``/``end_date`` (a manual
    backfill) win over both. TenantId is always the tenant's id.
    """
    lookback = tenant.parameters.get("DefaultLookbackWindowDays", DEFAULT_LOOKBACK_DAYS)
    try:
        days = int(lookback)
    except (TypeError, ValueError):
        raise PipelineStartError(
            f"tenant {tenant.tenant_id}: DefaultLookbackWindowDays must be a whole number, not {lookback!r}"
        ) from None
    if days < 1:
        raise PipelineStartError(f"tenant {tenant.tenant_id}: DefaultLookbackWindowDays must be at least 1")
    trigger_day = now.astimezone(UTC).date()
    params: dict[str, Any] = {
        "TenantId": tenant.tenant_id,
        "RequestStartDate": (trigger_day - timedelta(days=days)).isoformat(),
        "RequestEndDate": trigger_day.isoformat(),
        "AggregationType": DEFAULT_AGGREGATION,
        "IncludeDirectory": tenant.include_directory,
    }
    params.update(tenant.parameters)
    params["TenantId"] = tenant.tenant_id
    if start_date:
        params["RequestStartDate"] = start_date.isoformat()
    if end_date:
        params["RequestEndDate"] = end_date.isoformat()
    if str(params["RequestStartDate"]) > str(params["RequestEndDate"]):
        raise PipelineStartError(
            f"tenant {tenant.tenant_id}: RequestStartDate {params['RequestStartDate']} is after"
            f" RequestEndDate {params['RequestEndDate']}"
        )
    return params


def _find_started_run(
    client: DataFactoryManagementClient, ref: FactoryRef, parameters: Mapping[str, Any], since: datetime
) -> str | None:
    """A run of this pipeline, for these parameters, that an earlier attempt created after ``since``."""
    from azure.mgmt.datafactory.models import RunFilterParameters, RunQueryFilter

    query = RunFilterParameters(
        last_updated_after=since - _ADOPT_SLACK,
        last_updated_before=utcnow() + timedelta(days=1),
        filters=[RunQueryFilter(operand="PipelineName", operator="Equals", values_property=[ref.pipeline])],
    )
    result = client.pipeline_runs.query_by_factory(ref.resource_group, ref.factory_name, query)
    wanted = {k: str(parameters[k]) for k in ("TenantId", "RequestStartDate", "RequestEndDate")}
    for run in result.value or []:
        got = run.parameters or {}
        started = as_utc(run.run_start)
        if started is not None and started < since - _ADOPT_SLACK:
            continue
        if run.run_id and all(str(got.get(k, "")) == v for k, v in wanted.items()):
            return str(run.run_id)
    return None


def create_run(
    client: DataFactoryManagementClient, ref: FactoryRef, parameters: Mapping[str, Any], *, sleep: Sleep = time.sleep
) -> tuple[str, bool]:
    """Start one pipeline run; return ``(run id, adopted)``.

    Throttling and outages are retried with backoff. A createRun is not idempotent: when an attempt
    failed in a way that may hide a created run (a 5xx, a lost answer), the next attempt first looks
    for a run of this pipeline with the same TenantId and window and, if there is one, adopts it
    (``adopted`` is True) instead of starting a second extraction.
    """
    tenant_id = str(parameters.get("TenantId", ""))
    what = f"createRun of {ref.pipeline} for tenant {tenant_id}"
    first_attempt = utcnow()
    maybe_created = False

    def attempt() -> tuple[str, bool]:
        nonlocal maybe_created
        try:
            if maybe_created:
                found = _find_started_run(client, ref, parameters, first_attempt)
                if found:
                    return found, True
            response = client.pipelines.create_run(
                ref.resource_group, ref.factory_name, ref.pipeline, parameters=dict(parameters)
            )
        except Exception as exc:
            maybe_created = maybe_created or _reached_service(exc)
            raise _translate(exc, what, ref) from exc
        if not response.run_id:
            raise PipelineStartError(f"{what}: Data Factory answered without a run id")
        return str(response.run_id), False

    return _retrying(attempt, f"starting the run of tenant {tenant_id}", sleep)


def get_run(
    client: DataFactoryManagementClient, ref: FactoryRef, run_id: str, *, sleep: Sleep = time.sleep
) -> PipelineRun | None:
    """Data Factory's view of one run (None when it does not know the run), with retries."""
    what = f"reading pipeline run {run_id}"

    def attempt() -> PipelineRun | None:
        try:
            return client.pipeline_runs.get(ref.resource_group, ref.factory_name, run_id)
        except ResourceNotFoundError:
            return None
        except Exception as exc:
            raise _translate(exc, what, ref) from exc

    return _retrying(attempt, "pipeline run status", sleep)


# --------------------------------------------------------------------------------------------------
# Starting runs
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunOutcome:
    """What :func:`start_runs` did for one tenant: ``started``, ``skipped`` or ``failed``."""

    tenant_id: str
    status: str
    run_id: str = ""
    message: str = ""
    display_name: str = ""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly view."""
        return {
            "tenant_id": self.tenant_id,
            "display_name": self.display_name,
            "status": self.status,
            "run_id": self.run_id,
            "message": self.message,
        }


def _record_start_failure(
    ledger: RunLedger, tenant: Tenant, settings: Settings, trigger: str, now: datetime, message: str
) -> str:
    """Keep a refused start in the ledger (``runs list`` shows it); returns its row key."""
    try:
        ref: FactoryRef | None = tenant.factory(settings)
    except VivaRelayError:
        ref = None  # the failure may be that the tenant has no factory at all
    key = f"start-failed-{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    props: dict[str, Any] = {
        "Status": START_FAILED,
        "Message": message[:4000],
        "DisplayName": tenant.display_name,
        "Trigger": trigger,
        "StartedAt": now,
        "Watch": False,
        "NoDropAlert": False,
        "DropId": "",
        "DropState": "",
    }
    if ref is not None:
        props |= {
            "SubscriptionId": ref.subscription_id,
            "ResourceGroup": ref.resource_group,
            "FactoryName": ref.factory_name,
            "Pipeline": ref.pipeline,
        }
    ledger.insert(RunRecord(tenant.tenant_id, key, props))
    return key


def _start_one(
    rt: Runtime,
    ledger: RunLedger,
    tenant: Tenant,
    now: datetime,
    *,
    trigger: str,
    start_date: date | None,
    end_date: date | None,
    sleep: Sleep,
) -> RunOutcome:
    name = tenant.display_name
    # A run that is still going (as far as Data Factory says now) is never started twice.
    for record in ledger.active(tenant.tenant_id):
        _follow_one(rt, ledger, record, now, sleep=sleep)
        if record.active:
            message = f"run {record.run_id} is still {record.status}"
            log.info("tenant %s (%s): not started: %s", tenant.tenant_id, name, message)
            return RunOutcome(tenant.tenant_id, Status.SKIPPED, record.run_id, message, name)

    expires = tenant.consent_expires()
    if expires is not None and expires < now.date():
        log.warning(
            "tenant %s (%s): the consent given on %s expired on %s; the run will fail until an admin approves again",
            tenant.tenant_id,
            name,
            tenant.consent_date,
            expires,
        )
    ref = tenant.factory(rt.settings)
    parameters = pipeline_parameters(tenant, now, start_date=start_date, end_date=end_date)
    client = rt.datafactory(ref.subscription_id)
    run_id, adopted = create_run(client, ref, parameters, sleep=sleep)
    props: dict[str, Any] = {
        "Status": "Queued",
        "Message": "",
        "DisplayName": name,
        "Trigger": trigger,
        "StartedAt": now,
        "SubscriptionId": ref.subscription_id,
        "ResourceGroup": ref.resource_group,
        "FactoryName": ref.factory_name,
        "Pipeline": ref.pipeline,
        "Parameters": json.dumps(parameters, sort_keys=True),
        "Watch": True,
        "NoDropAlert": False,
        "DropId": "",
        "DropState": "",
    }
    with contextlib.suppress(ResourceExistsError):  # an adopted run that another caller recorded already
        _retrying(lambda: ledger.insert(RunRecord(tenant.tenant_id, run_id, props)), f"recording run {run_id}", sleep)
    message = "adopted the run an earlier attempt created (its answer was lost)" if adopted else ""
    log.info("tenant %s (%s): started pipeline run %s in %s %s", tenant.tenant_id, name, run_id, ref, message)
    return RunOutcome(tenant.tenant_id, Status.STARTED, run_id, message, name)


def start_runs(
    rt: Runtime,
    tenant: str | None = None,
    now: datetime | None = None,
    *,
    trigger: str = "schedule",
    start_date: date | None = None,
    end_date: date | None = None,
    sleep: Sleep = time.sleep,
) -> list[RunOutcome]:
    """Start the pipeline run of every enabled tenant (or of ``tenant`` only); one outcome per tenant.

    A tenant with a run that has not ended is skipped; disabled tenants are skipped; one tenant's
    failure is logged, recorded in the run ledger and never stops the others. TenantNotFound when
    ``tenant`` is not registered; TransientError when the registry itself cannot be read.
    """
    now = _aware(now)
    registry = tenant_registry(rt)
    ledger = run_ledger(rt)
    tenants = [registry.require(tenant)] if tenant else list(registry.list())
    if not tenants:
        log.warning("no tenants are registered: nothing to start (viva-relay tenants add)")
    outcomes: list[RunOutcome] = []
    for t in tenants:
        if not t.enabled:
            why = f"tenant is disabled{': ' + t.disabled_reason if t.disabled_reason else ''} (tenants enable)"
            outcomes.append(RunOutcome(t.tenant_id, Status.SKIPPED, "", why, t.display_name))
            continue
        try:
            outcomes.append(
                _start_one(rt, ledger, t, now, trigger=trigger, start_date=start_date, end_date=end_date, sleep=sleep)
            )
        except Exception as exc:
            message = str(exc) or type(exc).__name__
            log.error("tenant %s (%s): pipeline run NOT started: %s", t.tenant_id, t.display_name, message)
            row = ""
            try:
                row = _record_start_failure(ledger, t, rt.settings, trigger, now, message)
            except Exception as record_exc:
                log.error("tenant %s: could not record the failed start: %s", t.tenant_id, record_exc)
            outcomes.append(RunOutcome(t.tenant_id, Status.FAILED, row, message, t.display_name))
    return outcomes


# --------------------------------------------------------------------------------------------------
# Following runs
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FollowOutcome:
    """What one poll found for one run.

    ``event``: ``unchanged``, ``progress`` (a new non-final status), ``succeeded``, ``failed``,
    ``cancelled``, ``lost`` (Data Factory no longer knows it), ``drop_found``, ``no_drop_alert``,
    ``waiting_for_drop`` or ``error`` (this poll could not check; the next one tries again).
    """

    tenant_id: str
    run_id: str
    status: str
    event: str
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly view."""
        return {
            "tenant_id": self.tenant_id,
            "run_id": self.run_id,
            "status": self.status,
            "event": self.event,
            "message": self.message,
        }


def _drops_of_run(rt: Runtime, run_id: str) -> list[dict[str, Any]]:
    """Rows of the drop ledger whose RunId is ``run_id``, asked of the ledger (its table is its own)."""
    return [{"PartitionKey": r.tenant, "RowKey": r.drop_id, **r.props} for r in rt.ledger.of_run(run_id)]


def drops_of_run(rt: Runtime, run_id: str) -> list[dict[str, Any]]:
    """The drops a pipeline run produced: drop id, state, container, drop root and reason."""
    return [
        {
            "drop_id": e.get("RowKey", ""),
            "tenant_id": e.get("PartitionKey", ""),
            "state": e.get("State", ""),
            "container": e.get("Container", ""),
            "drop_root": e.get("DropRoot", ""),
            "reason": e.get("Reason", "") or "",
        }
        for e in _drops_of_run(rt, run_id)
    ]


def _check_drop(rt: Runtime, record: RunRecord, now: datetime) -> tuple[Status, str]:
    """For a succeeded run: (event, message) about its drop; updates ``record.props``."""
    drops = _drops_of_run(rt, record.run_id)
    if drops:
        first = sorted(drops, key=lambda e: str(e.get("RowKey", "")))[0]
        record.props.update({"DropId": str(first.get("RowKey", "")), "DropState": str(first.get("State", ""))})
        record.props["Watch"] = False
        return Status.DROP_FOUND, f"drop {record.props['DropId']} is {record.props['DropState']}"
    since = record.run_end or as_utc(record.props.get("LastCheckedAt")) or now
    hours = rt.settings.run_no_drop_alert_hours
    if now - since >= timedelta(hours=hours):
        record.props.update({"NoDropAlert": True, "NoDropAlertAt": now, "Watch": False})
        message = (
            f"pipeline run {record.run_id} for tenant {record.tenant_id} ({record.props.get('DisplayName', '')})"
            f" succeeded at {since.isoformat()} but no Metadata.json with that run id arrived within {hours} h:"
            f" check the landing container and the Event Grid subscription"
        )
        log.error("%s", message)
        return Status.NO_DROP_ALERT, message
    return Status.WAITING_FOR_DROP, f"no drop yet ({(now - since).total_seconds() / 3600:.1f} h of {hours} h)"


def _follow_one(rt: Runtime, ledger: RunLedger, record: RunRecord, now: datetime, *, sleep: Sleep) -> FollowOutcome:
    """Poll one run, update ``record`` in place and in the ledger; log failures clearly."""
    before = record.status
    name = record.props.get("DisplayName", "")
    event, message = Status.UNCHANGED, record.message
    if record.active:
        ref = record.factory
        run = get_run(rt.datafactory(ref.subscription_id), ref, record.run_id, sleep=sleep)
        record.props["LastCheckedAt"] = now
        if run is None:
            message = f"Data Factory {ref.factory_name} does not know pipeline run {record.run_id} (any more)"
            record.props.update({"Status": LOST, "Message": message, "Watch": False})
            log.error("tenant %s (%s): %s", record.tenant_id, name, message)
            event = Status.LOST
        else:
            status = str(run.status or "")
            record.props.update(
                {
                    "Status": status,
                    "Message": str(run.message or "")[:4000],
                    "RunStart": as_utc(run.run_start),
                    "RunEnd": as_utc(run.run_end),
                }
            )
            message = record.message
            if status == "Failed":
                record.props["Watch"] = False
                log.error(
                    "pipeline run %s for tenant %s (%s) FAILED: %s",
                    record.run_id,
                    record.tenant_id,
                    name,
                    message or "(Data Factory gave no message)",
                )
                event = Status.FAILED
            elif status == "Cancelled":
                record.props["Watch"] = False
                log.warning(
                    "pipeline run %s for tenant %s (%s) was cancelled %s",
                    record.run_id,
                    record.tenant_id,
                    name,
                    message,
                )
                event = Status.CANCELLED
            elif status == "Succeeded":
                log.info("pipeline run %s for tenant %s (%s) succeeded", record.run_id, record.tenant_id, name)
                event = Status.SUCCEEDED
            elif status != before:
                event = Status.PROGRESS
    if record.status == "Succeeded" and record.props.get("Watch"):
        drop_event, drop_message = _check_drop(rt, record, now)
        if drop_event == Status.NO_DROP_ALERT or event == Status.UNCHANGED:
            event = drop_event
        message = drop_message
    try:
        ledger.replace(record)
    except ResourceModifiedError:
        fresh = ledger.get(record.tenant_id, record.run_id)
        if fresh is not None:  # someone else polled it at the same time: theirs stands
            record.props, record.etag = fresh.props, fresh.etag
    return FollowOutcome(record.tenant_id, record.run_id, record.status, event, message)


def follow_runs(rt: Runtime, now: datetime | None = None, *, sleep: Sleep = time.sleep) -> list[FollowOutcome]:
    """Poll every run the ledger still watches; record final statuses, drops and no-drop alerts.

    One run that cannot be checked (Data Factory or storage unavailable) is reported as ``error``
    and tried again on the next poll; it never stops the others.
    """
    now = _aware(now)
    ledger = run_ledger(rt)
    outcomes: list[FollowOutcome] = []
    for record in ledger.watched():
        try:
            outcomes.append(_follow_one(rt, ledger, record, now, sleep=sleep))
        except Exception as exc:
            log.error("could not check pipeline run %s of tenant %s: %s", record.run_id, record.tenant_id, exc)
            outcomes.append(FollowOutcome(record.tenant_id, record.run_id, record.status, Status.ERROR, str(exc)))
    return outcomes


def summarise(outcomes: list[RunOutcome] | list[FollowOutcome]) -> dict[str, int]:
    """Counts per status (starts) or event (follows), for the functions' one-line log."""
    counts: dict[str, int] = {}
    for o in outcomes:
        key = o.event if isinstance(o, FollowOutcome) else o.status
        counts[key] = counts.get(key, 0) + 1
    return counts
