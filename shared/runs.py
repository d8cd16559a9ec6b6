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
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
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
from .clock import Clock, to_utc, utc_now
from .config import Settings
from .errors import TransientError, VivaRelayError
from .records import check_fields
from .retry import with_retries
from .runrecord import ACTIVE_STATUSES, FINAL_STATUSES, LOST, RUN_CODEC, RUN_STATUSES, START_FAILED, RunRecord
from .status import Status
from .tables import TableStore, as_utc
from .tenants import FactoryRef, Tenant, TenantRegistry, normalise_tenant_id

if TYPE_CHECKING:
    from azure.mgmt.datafactory import DataFactoryManagementClient
    from azure.mgmt.datafactory.models import PipelineRun

    from .runtime import Runtime

__all__ = [
    "ACTIVE_STATUSES",
    "ATTEMPTS",
    "BASE_DELAY_S",
    "DEFAULT_AGGREGATION",
    "DEFAULT_LOOKBACK_DAYS",
    "FINAL_STATUSES",
    "LOST",
    "RUN_STATUSES",
    "START_FAILED",
    "FollowOutcome",
    "PipelineStartError",
    "RunLedger",
    "RunOutcome",
    "RunRecord",
    "Sleep",
    "create_run",
    "drops_of_run",
    "follow_runs",
    "get_run",
    "pipeline_parameters",
    "run_ledger",
    "start_runs",
    "summarise",
    "tenant_registry",
]

log = logging.getLogger("viva_relay")

T = TypeVar("T")

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
class RunLedger(TableStore):
    """The run ledger in Azure Table storage (Azurite locally); rows are :class:`RunRecord`."""

    label = "run ledger"

    @staticmethod
    def _record(entity: Any) -> RunRecord:
        return RUN_CODEC.decode(entity)

    def insert(self, record: RunRecord) -> RunRecord:
        """Add a new row; the record as stored (with its ETag)."""
        return dataclasses.replace(record, etag=self.insert_entity(RUN_CODEC.encode(record)))

    def replace(self, record: RunRecord) -> RunRecord:
        """Write the row back if nobody changed it since it was read (ResourceModifiedError otherwise)."""
        return dataclasses.replace(record, etag=self.replace_entity(RUN_CODEC.encode(record), record.etag))

    def update(self, record: RunRecord, **changes: Any) -> RunRecord:
        """Write ``record`` with ``changes`` if the row is unchanged since it was read; the new record.

        If another writer changed the row meanwhile (someone else polled the run at the same time),
        theirs stands: the row as they wrote it is returned instead.
        """
        check_fields(RUN_CODEC, changes)
        try:
            return self.replace(dataclasses.replace(record, **changes))
        except ResourceModifiedError:
            fresh = self.get(record.tenant_id, record.run_id)
            return fresh if fresh is not None else record

    def get(self, tenant_id: str, run_id: str) -> RunRecord | None:
        """One row, or None."""
        entity = self.read_entity(tenant_id, run_id)
        return None if entity is None else self._record(entity)

    def find(self, run_id: str) -> RunRecord | None:
        """One run by id, whatever its tenant."""
        rows = self.select_entities({"RowKey": run_id.strip()})
        return self._record(rows[0]) if rows else None

    def _query(self, equal: dict[str, Any]) -> list[RunRecord]:
        return _newest_first(self._record(e) for e in self.select_entities(equal))

    def list_runs(self, tenant_id: str | None = None, status: str | None = None) -> list[RunRecord]:
        """Runs, newest first, optionally of one tenant and/or status."""
        equal: dict[str, Any] = {}
        if tenant_id:
            equal["PartitionKey"] = normalise_tenant_id(tenant_id)
        if status:
            equal[RUN_CODEC.column("status")] = status
        return self._query(equal)

    def active(self, tenant_id: str) -> list[RunRecord]:
        """The tenant's runs that have not ended (by the ledger's last knowledge)."""
        return [r for r in self.list_runs(tenant_id) if r.active]

    def started_since(self, moment: datetime, fields: Sequence[str] = ()) -> list[RunRecord]:
        """Every tenant's runs started at or after ``moment``, newest first: one query for the whole fleet.

        ``fields`` (record field names) limits the columns read (all when empty); the keys are always read.
        """
        self.ensure()
        select = ["PartitionKey", "RowKey", *map(RUN_CODEC.column, fields)] if fields else None
        query = f"{RUN_CODEC.column('started_at')} ge @since"
        entities = self.call(
            "query", lambda: list(self.table.query_entities(query, parameters={"since": moment}, select=select))
        )
        return _newest_first(self._record(e) for e in entities)

    def watched(self) -> list[RunRecord]:
        """Rows the follow timer still has work on (runs not ended, or succeeded with no drop yet)."""
        return self._query({RUN_CODEC.column("watch"): True})


def _newest_first(records: Iterable[RunRecord]) -> list[RunRecord]:
    epoch = datetime.min.replace(tzinfo=UTC)
    return sorted(records, key=lambda r: (r.started_at or epoch, r.run_id), reverse=True)


def tenant_registry(rt: Runtime) -> TenantRegistry:
    """The tenant registry in the relay storage (``TENANT_TABLE``)."""
    return TenantRegistry(rt.table(rt.settings.tenant_table), clock=lambda: rt.clock())  # noqa: PLW0108


def run_ledger(rt: Runtime) -> RunLedger:
    """The run ledger in the relay storage (``RUN_TABLE``)."""
    return RunLedger(rt.table(rt.settings.run_table), clock=lambda: rt.clock())  # noqa: PLW0108


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
    client: DataFactoryManagementClient,
    ref: FactoryRef,
    parameters: Mapping[str, Any],
    since: datetime,
    now: datetime,
) -> str | None:
    """A run of this pipeline, for these parameters, that an earlier attempt created after ``since``."""
    from azure.mgmt.datafactory.models import RunFilterParameters, RunQueryFilter

    query = RunFilterParameters(
        last_updated_after=since - _ADOPT_SLACK,
        last_updated_before=now + timedelta(days=1),
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
    client: DataFactoryManagementClient,
    ref: FactoryRef,
    parameters: Mapping[str, Any],
    *,
    sleep: Sleep = time.sleep,
    clock: Clock = utc_now,
) -> tuple[str, bool]:
    """Start one pipeline run; return ``(run id, adopted)``.

    Throttling and outages are retried with backoff. A createRun is not idempotent: when an attempt
    failed in a way that may hide a created run (a 5xx, a lost answer), the next attempt first looks
    for a run of this pipeline with the same TenantId and window and, if there is one, adopts it
    (``adopted`` is True) instead of starting a second extraction.
    """
    tenant_id = str(parameters.get("TenantId", ""))
    what = f"createRun of {ref.pipeline} for tenant {tenant_id}"
    first_attempt = clock()
    maybe_created = False

    def attempt() -> tuple[str, bool]:
        nonlocal maybe_created
        try:
            if maybe_created:
                found = _find_started_run(client, ref, parameters, first_attempt, clock())
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
    record = RunRecord(
        tenant.tenant_id,
        key,
        status=START_FAILED,
        message=message[:4000],
        display_name=tenant.display_name,
        trigger=trigger,
        started_at=now,
        watch=False,
        no_drop_alert=False,
        drop_id="",
        drop_state="",
    )
    if ref is not None:
        record = dataclasses.replace(
            record,
            subscription_id=ref.subscription_id,
            resource_group=ref.resource_group,
            factory_name=ref.factory_name,
            pipeline=ref.pipeline,
        )
    ledger.insert(record)
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
        polled = _follow_one(rt, ledger, record, now, sleep=sleep)
        if polled.status in ACTIVE_STATUSES:
            message = f"run {record.run_id} is still {polled.status}"
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
    run_id, adopted = create_run(client, ref, parameters, sleep=sleep, clock=ledger.clock)
    record = RunRecord(
        tenant.tenant_id,
        run_id,
        status="Queued",
        message="",
        display_name=name,
        trigger=trigger,
        started_at=now,
        subscription_id=ref.subscription_id,
        resource_group=ref.resource_group,
        factory_name=ref.factory_name,
        pipeline=ref.pipeline,
        parameters=json.dumps(parameters, sort_keys=True),
        watch=True,
        no_drop_alert=False,
        drop_id="",
        drop_state="",
    )
    with contextlib.suppress(ResourceExistsError):  # an adopted run that another caller recorded already
        _retrying(lambda: ledger.insert(record), f"recording run {run_id}", sleep)
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
    now = rt.clock() if now is None else to_utc(now)
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


def drops_of_run(rt: Runtime, run_id: str) -> list[dict[str, Any]]:
    """The drops a pipeline run produced: drop id, state, container, drop root and reason."""
    return [
        {
            "drop_id": d.drop_id,
            "tenant_id": d.tenant,
            "state": d.state,
            "container": d.container,
            "drop_root": d.drop_root,
            "reason": d.reason or "",
        }
        for d in rt.ledger.of_run(run_id)
    ]


def _check_drop(rt: Runtime, record: RunRecord, now: datetime) -> tuple[Status, str, RunRecord]:
    """For a succeeded run: (event, message, the record updated) about its drop."""
    # Asked of the drop ledger (its table is its own), through its RunId column.
    drops = sorted(rt.ledger.of_run(record.run_id), key=lambda d: d.drop_id)
    if drops:
        first = drops[0]
        found = dataclasses.replace(record, drop_id=first.drop_id, drop_state=first.state, watch=False)
        return Status.DROP_FOUND, f"drop {found.drop_id} is {found.drop_state}", found
    since = record.run_end or record.last_checked_at or now
    hours = rt.settings.run_no_drop_alert_hours
    if now - since >= timedelta(hours=hours):
        alerted = dataclasses.replace(record, no_drop_alert=True, no_drop_alert_at=now, watch=False)
        message = (
            f"pipeline run {record.run_id} for tenant {record.tenant_id} ({record.display_name})"
            f" succeeded at {since.isoformat()} but no Metadata.json with that run id arrived within {hours} h:"
            f" check the landing container and the Event Grid subscription"
        )
        log.error("%s", message)
        return Status.NO_DROP_ALERT, message, alerted
    return Status.WAITING_FOR_DROP, f"no drop yet ({(now - since).total_seconds() / 3600:.1f} h of {hours} h)", record


def _follow_one(rt: Runtime, ledger: RunLedger, record: RunRecord, now: datetime, *, sleep: Sleep) -> FollowOutcome:
    """Poll one run and record what changed in the ledger; log failures clearly."""
    before = record.status
    name = record.display_name
    event, message = Status.UNCHANGED, record.message
    if record.active:
        ref = record.factory
        run = get_run(rt.datafactory(ref.subscription_id), ref, record.run_id, sleep=sleep)
        record = dataclasses.replace(record, last_checked_at=now)
        if run is None:
            message = f"Data Factory {ref.factory_name} does not know pipeline run {record.run_id} (any more)"
            record = dataclasses.replace(record, status=LOST, message=message, watch=False)
            log.error("tenant %s (%s): %s", record.tenant_id, name, message)
            event = Status.LOST
        else:
            status = str(run.status or "")
            record = dataclasses.replace(
                record,
                status=status,
                message=str(run.message or "")[:4000],
                run_start=as_utc(run.run_start),
                run_end=as_utc(run.run_end),
            )
            message = record.message
            if status == "Failed":
                record = dataclasses.replace(record, watch=False)
                log.error(
                    "pipeline run %s for tenant %s (%s) FAILED: %s",
                    record.run_id,
                    record.tenant_id,
                    name,
                    message or "(Data Factory gave no message)",
                )
                event = Status.FAILED
            elif status == "Cancelled":
                record = dataclasses.replace(record, watch=False)
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
    if record.status == "Succeeded" and record.watch:
        drop_event, drop_message, record = _check_drop(rt, record, now)
        if drop_event == Status.NO_DROP_ALERT or event == Status.UNCHANGED:
            event = drop_event
        message = drop_message
    stored = ledger.update(record)  # someone else polled it at the same time: theirs stands
    return FollowOutcome(stored.tenant_id, stored.run_id, stored.status, event, message)


def follow_runs(rt: Runtime, now: datetime | None = None, *, sleep: Sleep = time.sleep) -> list[FollowOutcome]:
    """Poll every run the ledger still watches; record final statuses, drops and no-drop alerts.

    One run that cannot be checked (Data Factory or storage unavailable) is reported as ``error``
    and tried again on the next poll; it never stops the others.
    """
    now = rt.clock() if now is None else to_utc(now)
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
