"""``viva-relay runs ...``: start pipeline runs by hand (the docs' "Debug" button), list, show, follow.

Test and development only: with ``VIVA_RELAY_TEST_TOKEN`` set, the Data Factory client uses that
fixed bearer token instead of ``DefaultAzureCredential`` (``shared.runtime.default_credential``),
and only when ``DATA_FACTORY_BASE_URL`` points at a loopback stand-in (``https://127.0.0.1:<port>``).
The stand-in's self-signed certificate is trusted through ``REQUESTS_CA_BUNDLE``, the standard
variable of the HTTP transport the Azure SDK uses.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from typing import Any

from shared.errors import TransientError, VivaRelayError
from shared.preflight import require_sign_in
from shared.runs import FollowOutcome, drops_of_run, follow_runs, run_ledger, start_runs, tenant_registry
from shared.runtime import ARM_ENDPOINT, Runtime, check_test_token
from shared.status import Status, exit_code

from . import common
from .drop import _tenant


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def register(sub: Any) -> None:
    """Add the ``runs`` command group."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "runs",
        help="start, list, show and follow Data Factory pipeline runs",
        description="Pipeline runs of the onboarded tenants (the run ledger, Azure Table RUN_TABLE).",
    )
    cmds = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    start = cmds.add_parser(
        "start",
        help="start a pipeline run now for one tenant or every enabled tenant",
        description="Start runs now, exactly as the weekly schedule does (a tenant whose run is still going is "
        "skipped). --start-date/--end-date replace the default window (the 14 days up to today) for a backfill.",
    )
    start.add_argument("--tenant", type=_tenant, help="only this tenant (default: every enabled tenant)")
    start.add_argument("--start-date", type=_date, help="RequestStartDate (YYYY-MM-DD)")
    start.add_argument("--end-date", type=_date, help="RequestEndDate (YYYY-MM-DD)")
    start.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    common.add_settings_option(start)
    start.set_defaults(handler=start_command)

    lst = cmds.add_parser(
        "list",
        help="list recorded runs, newest first",
        description="One line per run: tenant, status, when it started and ended, its drop's state, Data Factory's"
        " message (never cut; `runs show RUN_ID` has everything).",
    )
    lst.add_argument("--tenant", type=_tenant, help="only this tenant's runs")
    lst.add_argument("--status", help="only runs with this status (e.g. Failed, InProgress, StartFailed)")
    lst.add_argument("--limit", type=int, default=50, help="at most this many runs (default 50; 0: all)")
    lst.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    common.add_settings_option(lst)
    lst.set_defaults(handler=list_command)

    show = cmds.add_parser(
        "show",
        help="one run as JSON, with the drops it produced",
        description="Print a run's ledger row (status, message, factory, parameters) and its drops as JSON.",
    )
    show.add_argument("run_id", metavar="RUN_ID", help="the pipeline run id (runs list shows it)")
    common.add_settings_option(show)
    show.set_defaults(handler=show_command)

    follow = cmds.add_parser(
        "follow",
        help="poll every unfinished run once (what the follow timer does), or with --watch until they end",
        description="Poll every run the ledger still follows and record what Data Factory says. With --watch, keep"
        " polling and print each change (Queued -> InProgress -> Succeeded -> drop found) until no run is left to"
        " follow. Exit code 1 when a run failed, was lost, or succeeded without a drop in time; 4 when --timeout"
        " passed first.",
    )
    follow.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    follow.add_argument(
        "--watch", action="store_true", help="follow the runs to their end (their drop found), printing each change"
    )
    follow.add_argument(
        "--interval", type=float, default=5.0, metavar="SECONDS", help="seconds between polls with --watch (default 5)"
    )
    follow.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="with --watch, stop after this many seconds (default 3600; exit 4)",
    )
    common.add_settings_option(follow)
    follow.set_defaults(handler=follow_command)


def runtime_for_runs(args: argparse.Namespace) -> Runtime:
    """The Runtime; a test token aimed at anything but a loopback stand-in fails the command at once (exit 3)."""
    rt = common.runtime_from(args)
    check_test_token(rt.settings.env, rt.settings.data_factory_base_url or ARM_ENDPOINT)
    return rt


def _short(text: str, width: int = 80) -> str:
    # Never cut: the table folds a long message onto continuation lines (common.print_table).
    return " ".join(text.split())


def check_ready(rt: Runtime, tenant: str | None) -> None:
    """Before any call: every tenant to start has a usable factory (exit 3), and someone is signed in."""
    registry = tenant_registry(rt)
    tenants = [registry.require(tenant)] if tenant else [t for t in registry.list() if t.enabled]
    for t in tenants:
        t.factory(rt.settings)
    if tenants:
        base = rt.settings.data_factory_base_url or ARM_ENDPOINT
        require_sign_in(rt.credential, f"{ARM_ENDPOINT}/.default", f"Data Factory ({base})")


def start_command(args: argparse.Namespace) -> int:
    """Start runs now."""
    rt = runtime_for_runs(args)
    check_ready(rt, args.tenant)
    outcomes = start_runs(
        rt,
        tenant=args.tenant,
        trigger="manual",
        start_date=args.start_date,
        end_date=args.end_date,
    )
    if args.json:
        for o in outcomes:
            sys.stdout.write(json.dumps(o.as_dict()) + "\n")
    else:
        rows = [
            {
                "tenant": o.tenant_id,
                "name": o.display_name,
                "result": o.status,
                "run_id": o.run_id,
                "message": _short(o.message),
            }
            for o in outcomes
        ]
        common.print_table(rows, ["tenant", "name", "result", "run_id", "message"])
    return exit_code([o.status for o in outcomes], "runs start")


def list_command(args: argparse.Namespace) -> int:
    """List runs."""
    records = run_ledger(common.runtime_from(args)).list_runs(args.tenant, args.status)
    if args.limit > 0:
        records = records[: args.limit]
    if args.json:
        for r in records:
            sys.stdout.write(json.dumps(r.as_dict()) + "\n")
        return common.EXIT_OK
    rows = []
    for r in records:
        d = r.as_dict()
        rows.append(
            {
                "tenant": r.tenant_id,
                "run_id": r.run_id,
                "status": r.status,
                "started": (d["started_at"] or "")[:19],
                "ended": (d["run_end"] or "")[:19],
                "drop": d["drop_state"] or ("NO DROP" if d["no_drop_alert"] else ""),
                "message": _short(r.message, 60),
            }
        )
    common.print_table(rows, ["tenant", "run_id", "status", "started", "ended", "drop", "message"])
    return common.EXIT_OK


def show_command(args: argparse.Namespace) -> int:
    """Show one run and its drops."""
    rt = common.runtime_from(args)
    record = run_ledger(rt).find(args.run_id)
    if record is None:
        raise VivaRelayError(f"no run {args.run_id} in the run ledger (runs list)")
    body = record.as_dict() | {"drops": drops_of_run(rt, record.run_id)}
    print(json.dumps(body, indent=2))
    return common.EXIT_OK


def follow_command(args: argparse.Namespace) -> int:
    """Poll unfinished runs once (or, with --watch, until none is left)."""
    if args.watch:
        return watch_command(args)
    outcomes = follow_runs(runtime_for_runs(args))
    if args.json:
        for o in outcomes:
            sys.stdout.write(json.dumps(o.as_dict()) + "\n")
    else:
        rows = [
            {
                "tenant": o.tenant_id,
                "run_id": o.run_id,
                "status": o.status,
                "event": o.event,
                "message": _short(o.message),
            }
            for o in outcomes
        ]
        common.print_table(rows, ["tenant", "run_id", "status", "event", "message"])
    return exit_code([o.event for o in outcomes], "runs follow")


def _change_line(o: FollowOutcome, started: float) -> str:
    elapsed = time.monotonic() - started
    text = f"{elapsed:6.1f}s  {o.tenant_id}  {o.run_id}  {o.status:<10} {o.event}"
    return f"{text}: {' '.join(o.message.split())}" if o.message else text


def watch_command(args: argparse.Namespace) -> int:
    """Poll every --interval seconds until no run is left to follow; print each change as it happens."""
    rt = runtime_for_runs(args)
    started = time.monotonic()
    shown: dict[str, tuple[str, str]] = {}
    last: dict[str, FollowOutcome] = {}
    while True:
        outcomes = follow_runs(rt)
        for o in outcomes:
            last[o.run_id] = o
            # A change of status or a new event; a poll that found nothing new ("unchanged") says nothing.
            if o.run_id not in shown or (o.event != "unchanged" and shown[o.run_id] != (o.status, o.event)):
                shown[o.run_id] = (o.status, o.event)
                line = json.dumps(o.as_dict()) if args.json else _change_line(o, started)
                print(line, flush=True)
        if not outcomes or not run_ledger(rt).watched():
            break
        if time.monotonic() - started + args.interval > args.timeout:
            still = ", ".join(f"{o.run_id} ({o.status})" for o in outcomes)
            return common.fail(f"still following after {args.timeout:.0f} s: {still}", common.EXIT_TRANSIENT)
        time.sleep(args.interval)
    if not last and not args.json:
        print("no run to follow (runs start starts one; runs list shows them all)")
    failed_drop = _watch_drops(rt, args, [o for o in last.values() if o.event == "drop_found"], started)
    code = exit_code([o.event for o in last.values()], "runs follow")
    return max(code, common.EXIT_PROBLEM) if failed_drop else code


#: Drop states after which nothing more happens without an operator.
_SETTLED_DROP_STATES = frozenset({"delivered", "deleted", "failed"})


def _watch_drops(rt: Runtime, args: argparse.Namespace, found: list[FollowOutcome], started: float) -> bool:
    """Follow the runs' drops until each is delivered (or deleted after delivery) or failed; True if one failed.

    A run's drop is "found" as soon as its Metadata.json is in the ledger, possibly still being ingested.
    """
    shown = {o.run_id: o.message for o in found}
    pending = {o.run_id: o for o in found}
    failed = False
    while pending:
        for run_id, o in list(pending.items()):
            drops = drops_of_run(rt, run_id)
            text = "; ".join(f"drop {d['drop_id']} is {d['state']}" for d in drops)
            if text and text != shown[run_id]:
                shown[run_id] = text
                done = FollowOutcome(o.tenant_id, run_id, o.status, Status.DROP, text)
                print(json.dumps(done.as_dict()) if args.json else _change_line(done, started), flush=True)
            if drops and all(d["state"] in _SETTLED_DROP_STATES for d in drops):
                failed = failed or any(d["state"] == "failed" for d in drops)
                del pending[run_id]
        if pending:
            if time.monotonic() - started + args.interval > args.timeout:
                raise TransientError(f"drops still being ingested after {args.timeout:.0f} s: {', '.join(pending)}")
            time.sleep(args.interval)
    return failed
