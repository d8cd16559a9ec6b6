"""``viva-relay status``: one row per tenant, the queue's backlog, every open problem; exit 1 when action is needed."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any, TextIO

from shared.health import FleetHealth, TenantHealth, check_fleet, drop_time

from . import common


def register(sub: Any) -> None:
    """Add the ``status`` command."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "status",
        help="fleet health: one row per tenant and every open problem (exit 1 when something needs action)",
        description="Read the tenant registry, the run and drop ledgers, the key store and the downstream queue "
        "(a few batched reads) and apply the health rules the daily health_check timer uses. One row per tenant: "
        "enabled, days until consent expires, current key version and days until it expires, last run, last drop, "
        "hours behind the weekly schedule, schema drift, open problems. Exit 0 when nothing needs action, 1 "
        "when a warning or error is open (listed below the table), 3 for a configuration problem, 4 when "
        "storage is unreachable.",
    )
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")
    common.add_settings_option(parser)
    parser.set_defaults(handler=status_command)


def _day(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d") if value else "-"


def _key_days(t: TenantHealth) -> str | int:
    if not t.key_version:
        return "-"
    return "never" if t.key_days_left is None else t.key_days_left


def _row(t: TenantHealth) -> dict[str, Any]:
    run, drop = t.last_run, t.last_drop
    rows = drop.rows if drop is not None else None
    drop_text = "-"
    if drop is not None:
        drop_text = f"{drop.state}{f' {rows}r' if rows is not None else ''} {_day(drop_time(drop))}"
    return {
        "tenant": t.tenant.tenant_id,
        "name": t.tenant.display_name[:20],
        "on": "yes" if t.tenant.enabled else "no",
        "consent_d": "?" if t.consent_days_left is None else t.consent_days_left,
        "key": t.key_version[:8] or "-",
        "key_d": _key_days(t),
        "last_run": "-" if run is None else f"{run.status} {_day(run.started_at)}",
        "last_drop": drop_text,
        "lag_h": "-" if t.lag_hours is None else f"{t.lag_hours:.0f}",
        "drift": {True: "yes", False: "no", None: "-"}[t.schema_drift],
        "problems": ",".join(sorted({p.rule for p in t.problems})) or "ok",
    }


COLUMNS = ["tenant", "name", "on", "consent_d", "key", "key_d", "last_run", "last_drop", "lag_h", "drift", "problems"]


def print_report(health: FleetHealth, out: TextIO) -> None:
    """The header, the table and the problem list."""
    q = health.queue
    age = q.oldest_age_hours(health.checked_at)
    backlog = q.error or f"~{q.messages} message(s), oldest {'-' if age is None else f'{age:.1f} h'}"
    failed = health.oldest_failed
    oldest = "none" if failed is None else f"{failed.drop_id} (tenant {failed.tenant}, {_day(drop_time(failed))})"
    out.write(f"checked   {health.checked_at.isoformat(timespec='seconds')}  ({len(health.tenants)} tenant(s))\n")
    out.write(f"queue     {q.name}: {backlog}\n")
    out.write(f"failed    oldest failed drop: {oldest}\n")
    out.write(f"keys      {health.key_store}\n\n")
    common.print_table([_row(t) for t in health.tenants], COLUMNS, stream=out)
    problems = health.problems
    if problems:
        out.write(f"\n{len(problems)} open problem(s):\n")
        for p in problems:
            who = p.tenant or "fleet"
            out.write(f"  {p.severity.upper():7} {who}  {p.rule}: {p.message}\n          -> {p.advice}\n")


def status_command(args: argparse.Namespace) -> int:
    """Evaluate the fleet's health; exit 1 when something needs action."""
    rt = common.runtime_from(args)
    health = check_fleet(rt)
    if args.json:
        print(json.dumps(health.as_dict(), indent=2, default=str))
    else:
        print_report(health, sys.stdout)
    action = [p for p in health.problems if p.needs_action]
    print(
        f"viva-relay: {len(health.tenants)} tenant(s); {len(action)} problem(s) need action",
        file=sys.stderr,
    )
    return common.EXIT_PROBLEM if action else common.EXIT_OK
