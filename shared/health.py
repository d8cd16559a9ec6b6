"""Fleet health: one snapshot of every tenant and the one set of rules both ``status`` and the timer use.

:func:`collect` reads the whole fleet with a handful of batched reads (the tenant registry, the
runs and drops of the last weeks plus every open drop, the key inventory, the downstream queue),
in parallel. :func:`evaluate` applies :data:`RULES` to it and returns one :class:`TenantHealth`
row per tenant with its open problems, plus the fleet-wide problems. The time comes from an
injected :class:`~shared.clock.Clock`, so a simulation can move it.

Rules (thresholds in :class:`~shared.config.Settings`):

- ``consent_expired`` / ``consent_expiring``: the admin's approval (180 days) lapsed, or lapses
  within ``CONSENT_WARN_DAYS``.
- ``key_missing``, and the findings of :func:`shared.keycheck.findings` on the current key: no
  expiry, expired, expiring within ``KEY_WARN_DAYS``, disabled, wrong size, shared with another
  tenant. ``key_retirable``: an older version still enabled that no unsettled drop needs (info).
- ``run_missing``: no run started in this week's window (7 days + ``RUN_LATE_HOURS``).
  ``run_failed``: the tenant's latest run failed (or could not start, or was lost/cancelled).
  ``run_no_drop``: the latest run succeeded but no drop came within ``RUN_NO_DROP_ALERT_HOURS``.
- ``drop_failed``: a failed drop; ``drop_waiting``: waiting longer than ``DROP_WAITING_ALERT_HOURS``.
- ``schema_drift``: the tenant's last drop has ``SchemaDrift`` set by the contract check.
- ``queue_backlog``: the downstream queue holds more than ``QUEUE_BACKLOG_ALERT_MESSAGES`` or its
  oldest message is older than ``QUEUE_AGE_ALERT_HOURS``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from .clock import Clock, to_utc, utc_now
from .config import Settings
from .keycheck import KEY_EXPIRING, KeyVersionInfo, findings
from .keyrotation import key_needs, retirable
from .ledger import FAILED, WAITING, DropRecord
from .runs import LOST, START_FAILED, RunRecord, run_ledger, tenant_registry
from .tenants import Tenant

if TYPE_CHECKING:
    from .runtime import Runtime

ERROR: Final = "error"
WARNING: Final = "warning"
INFO: Final = "info"
#: Severities that need an operator (``status`` exits 1, the timer alerts).
ACTION_SEVERITIES: Final = (ERROR, WARNING)
#: The weekly schedule (PIPELINE_SCHEDULE runs each tenant once a week).
SCHEDULE_PERIOD: Final = timedelta(days=7)
#: How far back runs and settled drops are read (open drops are read whatever their age).
LOOKBACK: Final = timedelta(weeks=8)
FLEET: Final = ""  # the "tenant" of fleet-wide problems

_RUN_FAILURES: Final = ("Failed", "Cancelled", START_FAILED, LOST)
#: The record fields the rules and ``status`` read (a projection keeps the fleet-wide reads small).
RUN_COLUMNS: Final = ("status", "message", "started_at", "run_end", "drop_id", "no_drop_alert")
DROP_COLUMNS: Final = (
    "state",
    "first_seen",
    "delivered_at",
    "failed_at",
    "run_id",
    "rows",
    "public_key_version",
    "reason",
    "reason_code",
    "schema_drift",
)


@dataclass(frozen=True)
class Problem:
    """One open problem: which rule, about what, how bad, and what to do."""

    rule: str
    severity: str
    tenant: str
    subject: str  # what it is about: a run id, drop id, key version, queue name
    message: str
    advice: str

    @property
    def key(self) -> str:
        """Identifies the problem across checks (same tenant, rule and subject)."""
        return f"{self.tenant or 'fleet'}|{self.rule}|{self.subject}"

    @property
    def fingerprint(self) -> str:
        """Changes when the problem changes in a way worth a new announcement."""
        return f"{self.key}|{self.severity}"

    @property
    def needs_action(self) -> bool:
        """True for warnings and errors."""
        return self.severity in ACTION_SEVERITIES

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON and for the alert's custom dimensions."""
        return {
            "rule": self.rule,
            "severity": self.severity,
            "tenant": self.tenant,
            "subject": self.subject,
            "message": self.message,
            "advice": self.advice,
        }


@dataclass(frozen=True)
class QueueState:
    """The downstream queue's backlog (approximate count) and the age of its oldest message."""

    name: str
    messages: int | None
    oldest: datetime | None
    error: str = ""

    def oldest_age_hours(self, now: datetime) -> float | None:
        """Hours since the oldest message was queued."""
        return None if self.oldest is None else max(0.0, (now - self.oldest).total_seconds() / 3600)


@dataclass
class Snapshot:
    """Everything the rules look at, read once."""

    now: datetime
    tenants: list[Tenant]
    runs: dict[str, list[RunRecord]]  # tenant -> runs, newest first
    drops: dict[str, list[DropRecord]]  # tenant -> drops, newest first
    keys: list[KeyVersionInfo] | None  # None when the key store could not be read
    key_store: str
    queue: QueueState
    key_error: str = ""


@dataclass
class TenantHealth:
    """One row of ``status``."""

    tenant: Tenant
    consent_days_left: int | None
    key_version: str
    key_days_left: int | None
    last_run: RunRecord | None
    last_drop: DropRecord | None
    lag_hours: float | None
    schema_drift: bool | None
    problems: list[Problem] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for ``status --json``."""
        run, drop = self.last_run, self.last_drop
        return {
            "tenant_id": self.tenant.tenant_id,
            "display_name": self.tenant.display_name,
            "enabled": self.tenant.enabled,
            "consent_days_left": self.consent_days_left,
            "key_version": self.key_version,
            "key_days_left": self.key_days_left,
            "last_run": None if run is None else {"status": run.status, "started_at": _iso(run.started_at)},
            "last_drop": None if drop is None else _drop_view(drop),
            "lag_hours": self.lag_hours,
            "schema_drift": self.schema_drift,
            "problems": [p.as_dict() for p in self.problems],
        }


@dataclass
class FleetHealth:
    """The result of :func:`evaluate`: one row per tenant, the fleet's own problems, the header."""

    checked_at: datetime
    tenants: list[TenantHealth]
    fleet_problems: list[Problem]
    queue: QueueState
    oldest_failed: DropRecord | None
    key_store: str

    @property
    def problems(self) -> list[Problem]:
        """Every open problem, fleet-wide ones first."""
        return [*self.fleet_problems, *(p for t in self.tenants for p in t.problems)]

    @property
    def needs_action(self) -> bool:
        """True when any problem is a warning or an error."""
        return any(p.needs_action for p in self.problems)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for ``status --json``."""
        q = self.queue
        return {
            "checked_at": self.checked_at.isoformat(),
            "needs_action": self.needs_action,
            "queue": {
                "name": q.name,
                "approximate_messages": q.messages,
                "oldest_message_age_hours": _round(q.oldest_age_hours(self.checked_at)),
                "error": q.error,
            },
            "oldest_failed_drop": None if self.oldest_failed is None else _drop_view(self.oldest_failed),
            "key_store": self.key_store,
            "tenants": [t.as_dict() for t in self.tenants],
            "fleet_problems": [p.as_dict() for p in self.fleet_problems],
            "problem_count": len(self.problems),
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def drop_time(drop: DropRecord) -> datetime | None:
    """When the drop last changed state (delivered, failed), else when it was first seen."""
    return drop.delivered_at or drop.failed_at or drop.first_seen


def _drop_view(drop: DropRecord) -> dict[str, Any]:
    return {
        "tenant_id": drop.tenant,
        "drop_id": drop.drop_id,
        "state": drop.state,
        "rows": drop.rows,
        "at": _iso(drop_time(drop)),
        "reason": drop.reason or "",
    }


# --------------------------------------------------------------------------------------------------
# Reading the fleet
# --------------------------------------------------------------------------------------------------
def read_queue_state(rt: Runtime) -> QueueState:
    """The downstream queue's approximate message count and its oldest message's insertion time."""
    name = rt.settings.downstream_queue
    try:
        queue = rt.queue
        count = queue.get_queue_properties().approximate_message_count
        peeked = list(queue.peek_messages(max_messages=1))
    except Exception as exc:  # a health check reports an unreadable queue, it does not crash
        return QueueState(name, None, None, f"could not read the queue: {exc}")
    oldest = to_utc(peeked[0].inserted_on) if peeked and peeked[0].inserted_on else None
    return QueueState(name, int(count or 0), oldest)


def read_key_inventory(rt: Runtime) -> tuple[list[KeyVersionInfo], str]:
    """Every tenant key version in the configured store (Key Vault or the key folder)."""
    s = rt.settings
    if s.key_source == "folder":
        from .keyfolder import KeyFolder

        folder = KeyFolder(s.key_folder)
        return folder.inventory(), folder.describe()
    from .keyvault_admin import VaultKeys
    from .runtime import keyvault_client_options

    options = keyvault_client_options(s.env, s.key_vault_url) | rt.keyvault_kwargs
    with VaultKeys(s.require_key_vault(), rt.credential, **options) as vault:
        return vault.inventory(), vault.describe()


def collect(
    rt: Runtime,
    clock: Clock = utc_now,
    *,
    keys: Callable[[], tuple[list[KeyVersionInfo], str]] | None = None,
) -> Snapshot:
    """Read the fleet: five batched reads in parallel (no query per tenant).

    ``keys`` replaces the key inventory read (a simulation that keeps one key folder object).
    """
    now = clock()
    since = now - LOOKBACK
    with ThreadPoolExecutor(max_workers=4) as pool:
        tenants_f = pool.submit(lambda: list(tenant_registry(rt).list()))
        runs_f = pool.submit(run_ledger(rt).started_since, since, RUN_COLUMNS)
        drops_f = pool.submit(rt.ledger.seen_since_or_open, since, DROP_COLUMNS)
        queue_f = pool.submit(read_queue_state, rt)
        keys_list: list[KeyVersionInfo] | None
        try:
            keys_list, store = (keys or (lambda: read_key_inventory(rt)))()
            key_error = ""
        except Exception as exc:  # reported as a fleet problem, never a crash
            keys_list, store, key_error = None, "the key store", str(exc)
        runs: dict[str, list[RunRecord]] = defaultdict(list)
        for run in runs_f.result():
            runs[run.tenant_id].append(run)
        drops: dict[str, list[DropRecord]] = defaultdict(list)
        epoch = datetime.min.replace(tzinfo=UTC)
        for drop in sorted(drops_f.result(), key=lambda d: drop_time(d) or epoch, reverse=True):
            drops[drop.tenant.lower()].append(drop)
        return Snapshot(
            now=now,
            tenants=tenants_f.result(),
            runs=dict(runs),
            drops=dict(drops),
            keys=keys_list,
            key_store=store,
            queue=queue_f.result(),
            key_error=key_error,
        )


# --------------------------------------------------------------------------------------------------
# The rules
# --------------------------------------------------------------------------------------------------
Rule = Callable[[Snapshot, Settings], Iterable[Problem]]


def consent_days_left(tenant: Tenant, today: date) -> int | None:
    """Days until the tenant's consent expires (negative once past), None when the date is unknown."""
    expires = tenant.consent_expires()
    return None if expires is None else (expires - today).days


def rule_consent(snap: Snapshot, s: Settings) -> Iterator[Problem]:
    """Consent expired, or expiring within CONSENT_WARN_DAYS (enabled tenants)."""
    for t in snap.tenants:
        left = consent_days_left(t, snap.now.date())
        if not t.enabled or left is None:
            continue
        advice = (
            "send the tenant's admin the approval link (viva-relay consent-link); once approved, record the"
            f" new date: viva-relay tenants add --tenant {t.tenant_id} --replace --consent-date YYYY-MM-DD ..."
        )
        if left < 0:
            msg = f"consent given on {t.consent_date} expired {-left} day(s) ago: runs fail until it is renewed"
            yield Problem("consent_expired", ERROR, t.tenant_id, str(t.consent_date), msg, advice)
        elif left < s.consent_warn_days:
            msg = f"consent given on {t.consent_date} expires in {left} day(s) ({t.consent_expires()})"
            yield Problem("consent_expiring", WARNING, t.tenant_id, str(t.consent_date), msg, advice)


def rule_keys(snap: Snapshot, s: Settings) -> Iterator[Problem]:
    """The current key's findings (no expiry, expiring, expired, size, shared) and tenants without a key."""
    if snap.keys is None:
        yield Problem(
            "key_store_unreadable", ERROR, FLEET, snap.key_store, snap.key_error, "check the key store's access"
        )
        return
    owners: dict[int, list[KeyVersionInfo]] = defaultdict(list)
    for k in snap.keys:
        if k.modulus is not None:
            owners[k.modulus].append(k)
    with_key = {k.tenant for k in snap.keys if k.current}
    for t in snap.tenants:
        if t.enabled and t.tenant_id not in with_key:
            msg = f"no key in {snap.key_store}: drops cannot be decrypted"
            yield Problem("key_missing", ERROR, t.tenant_id, "", msg, f"viva-relay keys create --tenant {t.tenant_id}")
    registered = {t.tenant_id for t in snap.tenants}
    for k in snap.keys:
        if k.tenant not in registered:
            continue
        same = owners[k.modulus] if k.modulus is not None else []
        for code, text in findings(k, same, s.key_warn_days, snap.now):
            severity = WARNING if code == KEY_EXPIRING else ERROR
            advice = f"viva-relay keys rotate --tenant {k.tenant} (old versions stay enabled for drops in flight)"
            yield Problem(code, severity, k.tenant, k.version, f"key version {k.version}: {text}", advice)


def rule_key_retirable(snap: Snapshot, s: Settings) -> Iterator[Problem]:
    """Older key versions still enabled that no unsettled drop needs."""
    if snap.keys is None:
        return
    needs = key_needs(d for drops in snap.drops.values() for d in drops)
    for k in retirable(snap.keys, needs):
        msg = f"older key version {k.version} is still enabled and no unsettled drop needs it"
        yield Problem("key_retirable", INFO, k.tenant, k.version, msg, f"viva-relay keys retire --tenant {k.tenant}")


def _latest_run(snap: Snapshot, tenant: str) -> RunRecord | None:
    runs = snap.runs.get(tenant) or []
    return runs[0] if runs else None


def lag_hours(tenant: Tenant, run: RunRecord | None, now: datetime) -> float | None:
    """Hours the tenant is behind its weekly run (0 when on time; None when never expected yet)."""
    since = (run.started_at if run else None) or tenant.added_at
    if since is None:
        return None
    return max(0.0, (now - since - SCHEDULE_PERIOD).total_seconds() / 3600)


def rule_runs(snap: Snapshot, s: Settings) -> Iterator[Problem]:
    """No run in this week's window; the latest run failed; it succeeded without a drop."""
    drop_runs = {d.run_id for drops in snap.drops.values() for d in drops}
    for t in snap.tenants:
        if not t.enabled:
            continue
        run = _latest_run(snap, t.tenant_id)
        lag = lag_hours(t, run, snap.now)
        if lag is not None and lag > s.run_late_hours:
            last = run.started_at.isoformat() if run and run.started_at else "never"
            msg = f"no pipeline run started in this week's window (last: {last})"
            advice = f"check the start_pipeline_runs timer; viva-relay runs start --tenant {t.tenant_id}"
            yield Problem("run_missing", ERROR, t.tenant_id, last, msg, advice)
        if run is None:
            continue
        if run.status in _RUN_FAILURES:
            msg = f"pipeline run {run.run_id} {run.status}: {run.message or '(no message)'}"[:500]
            advice = f"viva-relay runs show {run.run_id}; fix the cause (often consent or the key), then runs start"
            yield Problem("run_failed", ERROR, t.tenant_id, run.run_id, msg, advice)
        elif run.status == "Succeeded" and run.run_id not in drop_runs and not run.drop_id:
            ended = run.run_end or run.started_at or snap.now
            if run.no_drop_alert or snap.now - ended >= timedelta(hours=s.run_no_drop_alert_hours):
                msg = f"pipeline run {run.run_id} succeeded at {ended.isoformat()} but no drop arrived"
                advice = "check the landing container and the Event Grid subscription"
                yield Problem("run_no_drop", ERROR, t.tenant_id, run.run_id, msg, advice)


def rule_drops(snap: Snapshot, s: Settings) -> Iterator[Problem]:
    """Failed drops; drops waiting longer than DROP_WAITING_ALERT_HOURS."""
    limit = timedelta(hours=s.drop_waiting_alert_hours)
    for tenant, drops in snap.drops.items():
        for d in drops:
            reason = (d.reason or "")[:300]
            if d.state == FAILED:
                msg = f"drop {d.drop_id} failed: {d.reason_code or ''} {reason}".strip()
                advice = (
                    f"viva-relay drops show {d.drop_id}; fix the cause, then viva-relay drops reprocess {d.drop_id}"
                )
                yield Problem("drop_failed", ERROR, tenant, d.drop_id, msg, advice)
            elif d.state == WAITING:
                first = d.first_seen
                if first is not None and snap.now - first > limit:
                    hours = (snap.now - first).total_seconds() / 3600
                    msg = f"drop {d.drop_id} has been waiting {hours:.0f} h: {reason}"
                    advice = f"check that the drop's files are complete: viva-relay drops show {d.drop_id}"
                    yield Problem("drop_waiting", WARNING, tenant, d.drop_id, msg, advice)


def _last_drop(snap: Snapshot, tenant: str) -> DropRecord | None:
    drops = snap.drops.get(tenant) or []
    return drops[0] if drops else None


def rule_schema_drift(snap: Snapshot, s: Settings) -> Iterator[Problem]:
    """The tenant's last drop was flagged by the contract check (``SchemaDrift``)."""
    for t in snap.tenants:
        d = _last_drop(snap, t.tenant_id)
        if d is not None and d.schema_drift is True:
            msg = f"drop {d.drop_id} does not match the expected schema"
            advice = f"read the drop's SchemaReport (viva-relay drops show {d.drop_id}) and tell the consumers"
            yield Problem("schema_drift", WARNING, t.tenant_id, d.drop_id, msg, advice)


def rule_queue(snap: Snapshot, s: Settings) -> Iterator[Problem]:
    """The downstream queue's backlog or oldest message age above the thresholds."""
    q = snap.queue
    if q.error:
        yield Problem("queue_unreadable", ERROR, FLEET, q.name, q.error, "check RelayStorage and the app's role")
        return
    age = q.oldest_age_hours(snap.now)
    too_many = q.messages is not None and q.messages > s.queue_backlog_alert_messages
    too_old = age is not None and age > s.queue_age_alert_hours
    if too_many or too_old:
        msg = f"queue {q.name} holds about {q.messages} message(s); the oldest is {age or 0:.0f} h old"
        advice = "the consumer is behind or stopped: check it (messages are kept until read)"
        yield Problem("queue_backlog", WARNING, FLEET, q.name, msg, advice)


#: Every rule, in the order problems are listed.
RULES: tuple[Rule, ...] = (
    rule_queue,
    rule_consent,
    rule_keys,
    rule_key_retirable,
    rule_runs,
    rule_drops,
    rule_schema_drift,
)


def evaluate(snap: Snapshot, settings: Settings, rules: Iterable[Rule] = RULES) -> FleetHealth:
    """Apply the rules to a snapshot: one row per tenant plus the fleet-wide problems."""
    per_tenant: dict[str, list[Problem]] = defaultdict(list)
    fleet: list[Problem] = []
    for rule in rules:
        for problem in rule(snap, settings):
            (per_tenant[problem.tenant] if problem.tenant else fleet).append(problem)
    current = {k.tenant: k for k in snap.keys or [] if k.current}
    rows: list[TenantHealth] = []
    for t in snap.tenants:
        key = current.get(t.tenant_id)
        run = _latest_run(snap, t.tenant_id)
        drop = _last_drop(snap, t.tenant_id)
        drift = drop.schema_drift if drop is not None else None
        rows.append(
            TenantHealth(
                tenant=t,
                consent_days_left=consent_days_left(t, snap.now.date()),
                key_version=key.version if key else "",
                key_days_left=key.days_left(snap.now) if key else None,
                last_run=run,
                last_drop=drop,
                lag_hours=_round(lag_hours(t, run, snap.now)) if t.enabled else None,
                schema_drift=drift if isinstance(drift, bool) else None,
                problems=per_tenant.pop(t.tenant_id, []),
            )
        )
    for leftovers in per_tenant.values():  # problems of tenants no longer registered (e.g. a failed drop)
        fleet.extend(leftovers)
    failed = [d for drops in snap.drops.values() for d in drops if d.state == FAILED]
    epoch = datetime.max.replace(tzinfo=UTC)
    oldest = min(failed, key=lambda d: drop_time(d) or epoch) if failed else None
    return FleetHealth(snap.now, rows, fleet, snap.queue, oldest, snap.key_store)


def check_fleet(rt: Runtime, clock: Clock = utc_now) -> FleetHealth:
    """Collect and evaluate: what ``viva-relay status`` and the ``health_check`` timer both call."""
    return evaluate(collect(rt, clock), rt.settings)


__all__ = [
    "FleetHealth",
    "Problem",
    "QueueState",
    "Snapshot",
    "TenantHealth",
    "check_fleet",
    "collect",
    "evaluate",
]
