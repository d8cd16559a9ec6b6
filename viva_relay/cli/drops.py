"""``viva-relay drops ...``: list and inspect drops, reprocess a failed one, clean up delivered ones."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

from shared.cleanup import (
    DELETED_STATUS,
    WOULD_DELETE,
    CleanupReport,
    DropDeletion,
    cleanup_drops,
    delete_orphans,
)
from shared.droprecord import DROP_CODEC
from shared.ledger import DELETING, STATES, DropRecord
from shared.reprocess import reprocess_drop
from shared.status import exit_code
from shared.tables import utcnow

from . import common

REASON_WIDTH = 60


def register(sub: Any) -> None:
    """Add ``drops list``, ``show``, ``reprocess``, ``cleanup`` and ``delete-orphans``."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "drops",
        help="the drop ledger: list, show, reprocess, cleanup",
        description="Every drop the ingest function has seen (the drop ledger, Azure Table LEDGER_TABLE).",
    )
    cmds = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    lst = cmds.add_parser("list", help="list drops from the ledger", description="One line per drop, oldest first.")
    lst.add_argument("--tenant", help="only this tenant's drops")
    lst.add_argument("--status", choices=STATES, help="only drops in this state")
    lst.add_argument("--json", action="store_true", help="JSON instead of a table")
    common.add_settings_option(lst)
    lst.set_defaults(handler=list_command)

    show = cmds.add_parser(
        "show",
        help="every ledger column of one drop",
        description="Print a drop's ledger row as JSON: location, metadata, counts, timings, errors.",
    )
    show.add_argument("drop_id", metavar="DROP_ID", help="the drop's id (drops list shows it)")
    common.add_settings_option(show)
    show.set_defaults(handler=show_command)

    rep = cmds.add_parser(
        "reprocess",
        help="re-deliver a failed (or waiting) drop",
        description="Move a failed drop back to waiting (its reason is kept as PreviousReason) and ingest it "
        "again, as the blob trigger would. Exit 0 when the drop is delivered, 1 otherwise.",
    )
    rep.add_argument("drop_id", metavar="DROP_ID", help="the drop's id (drops list shows it)")
    common.add_settings_option(rep)
    rep.set_defaults(handler=reprocess_command)

    clean = cmds.add_parser(
        "cleanup",
        help="delete delivered drops now (what the daily timer does)",
        description="Delete the blobs of every delivered drop (and of failed drops older than "
        "FAILED_DROP_RETENTION_DAYS when that is set), record each deletion in the ledger, and report blobs the "
        "ledger does not know (never deleted here). Exit 1 when a drop could not be deleted.",
    )
    clean.add_argument("--dry-run", action="store_true", help="list what would be deleted; change nothing")
    clean.add_argument("--json", action="store_true", help="the full report as JSON")
    common.add_settings_option(clean)
    clean.set_defaults(handler=cleanup_command)

    orphans = cmds.add_parser(
        "delete-orphans",
        help="delete drops the ledger does not know, after the grace period",
        description="Delete drops whose Metadata.json has no ledger row (or is still there after the drop was "
        "deleted) and is older than --older-than-hours (at least ORPHAN_GRACE_HOURS), and stray blobs that no "
        "drop accounts for. Only blobs older than that go. Each orphan drop's deletion is recorded in the ledger.",
    )
    orphans.add_argument("--older-than-hours", type=int, metavar="N", help="default: ORPHAN_GRACE_HOURS")
    orphans.add_argument("--dry-run", action="store_true", help="list what would be deleted; change nothing")
    orphans.add_argument("--json", action="store_true", help="the results as JSON")
    common.add_settings_option(orphans)
    orphans.set_defaults(handler=delete_orphans_command)


def _text(value: Any) -> Any:
    """Ledger values as JSON-friendly text (datetimes in ISO 8601)."""
    return value.isoformat() if isinstance(value, datetime) else value


def _short_time(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if isinstance(value, datetime) else ""


def _shorten(text: str, width: int = REASON_WIDTH) -> str:
    # Never cut: the table folds a long reason onto continuation lines (common.print_table).
    return " ".join(text.split())


def _state(record: DropRecord) -> str:
    return f"{record.state}, {DELETING}" if record.deleting_owner else record.state


def _reason(record: DropRecord) -> str:
    return record.reason or record.cleanup_note or record.delete_reason or ""


def _drift(record: DropRecord) -> bool | None:
    """Whether the drop's rows drifted from the dataset's contract (None: not checked)."""
    return record.schema_drift


def _drift_note(record: DropRecord) -> str:
    """'schema drift: <checks>' for a drop whose rows drifted (the reason column of ``drops list``)."""
    if not _drift(record):
        return ""
    try:
        findings = json.loads(record.schema_report or "{}").get("findings", [])
    except ValueError:
        findings = []
    checks = sorted({str(f.get("check")) for f in findings if isinstance(f, dict)})
    return "schema drift: " + ", ".join(checks) if checks else "schema drift"


def list_command(args: argparse.Namespace) -> int:
    """Print the drops as a table (or JSON)."""
    rt = common.runtime_from(args)
    records = list(rt.ledger.list(tenant=args.tenant.lower() if args.tenant else None, state=args.status))
    records.sort(key=lambda r: (str(_text(r.first_seen if r.first_seen is not None else "")), r.drop_id))
    rows = [
        {
            "drop id": r.drop_id,
            "tenant": r.tenant,
            "state": _state(r),
            "rows": "" if r.rows is None else r.rows,
            "messages": "" if r.messages is None else r.messages,
            "first seen": _short_time(r.first_seen),
            "reason": _shorten(_reason(r) or _drift_note(r)),
        }
        for r in records
    ]
    if args.json:
        # Machine-readable: full values, snake_case keys, numbers as numbers, nulls where unknown.
        docs = [
            {
                "drop_id": r.drop_id,
                "tenant": r.tenant,
                "state": r.state,
                "deleting": bool(r.deleting_owner),
                "rows": r.rows,
                "rows_expected": r.rows_expected,
                "messages": r.messages,
                "first_seen": _text(r.first_seen) if r.first_seen else None,
                "reason_code": r.reason_code or None,
                "reason": _reason(r) or None,
                "location": r.location.url_path,
                "schema_drift": _drift(r),
            }
            for r in records
        ]
        print(json.dumps(docs, indent=2, default=str))
    else:
        common.print_table(rows, ["drop id", "tenant", "state", "rows", "messages", "first seen", "reason"])
    return common.EXIT_OK


def show_command(args: argparse.Namespace) -> int:
    """Print one drop's ledger row."""
    rt = common.runtime_from(args)
    record = rt.ledger.find(args.drop_id)
    if record is None:
        return common.fail(f"no drop {args.drop_id} in the ledger")
    doc = {
        "drop_id": record.drop_id,
        "tenant": record.tenant,
        "state": _state(record),
        "location": record.location.url_path,
    } | {key: _text(value) for key, value in sorted(record.columns().items())}
    # JSON held as text: shown as JSON
    for key in (DROP_CODEC.column("schema_report"), DROP_CODEC.column("row_settings")):
        if isinstance(doc.get(key), str):
            doc[key] = json.loads(doc[key])
    print(json.dumps(doc, indent=2, default=str))
    return common.EXIT_OK


def reprocess_command(args: argparse.Namespace) -> int:
    """Re-deliver a failed or waiting drop; exit 0 only when it is delivered."""
    rt = common.runtime_from(args)
    outcome = reprocess_drop(rt, args.drop_id)
    after = rt.ledger.find(args.drop_id)
    print(json.dumps(outcome.as_dict() | {"state": after.state if after else None}, indent=2, default=str))
    code = exit_code([outcome.status], "drops reprocess")
    if code == common.EXIT_OK:
        return code
    return common.fail(f"drop {args.drop_id} not delivered: {outcome.status}: {outcome.reason}", code)


def _print_deletions(results: list[DropDeletion], *, details: bool) -> None:
    rows = [
        {
            "drop id": d.drop_id or "-",
            "tenant": d.tenant or "-",
            "action": d.status.replace("_", " "),
            "blobs": len(d.deleted),
            "kept": len(d.kept),
            "note": _shorten(d.reason, 80),
        }
        for d in results
    ]
    common.print_table(rows, ["drop id", "tenant", "action", "blobs", "kept", "note"])
    for d in results:
        label = d.drop_id or d.location
        if details and d.status in (WOULD_DELETE, DELETED_STATUS):
            verb = "would delete" if d.status == WOULD_DELETE else "deleted"
            for name in d.deleted:
                print(f"  {label} {verb}: {name}")
        for k in d.kept:
            print(f"  {label} kept: {k.name} ({k.why})")
        for name in d.leased:
            print(f"  {label} leased by another client, not deleted yet: {name}")


def _print_report(report: CleanupReport) -> None:
    now = utcnow()
    print("Drops:" if not report.dry_run else "Drops (dry run: nothing is deleted):")
    _print_deletions(report.drops, details=report.dry_run)
    print()
    print("Orphans (the ledger does not know them; never deleted here, see `drops delete-orphans`):")
    common.print_table(
        [
            {
                "drop id": o.drop_id,
                "kind": o.kind.replace("_", " "),
                "metadata": f"{o.container}/{o.metadata_path}",
                "age (h)": f"{o.age_hours(now):.1f}",
                "blobs": o.blobs,
                "bytes": o.bytes,
            }
            for o in report.orphans
        ],
        ["drop id", "kind", "metadata", "age (h)", "blobs", "bytes"],
    )
    print()
    print("Stray blobs (under no drop the ledger or a Metadata.json accounts for; see `drops delete-orphans`):")
    common.print_table(
        [
            {
                "folder": f"{f.container}/{f.folder}".rstrip("/"),
                "blobs": len(f.blobs),
                "bytes": f.bytes,
                "newest (h)": f"{(now - f.newest).total_seconds() / 3600:.1f}",
            }
            for f in report.strays
        ],
        ["folder", "blobs", "bytes", "newest (h)"],
    )
    if report.orphan_error:
        print(f"orphan scan failed: {report.orphan_error}", file=sys.stderr)
    counts = report.counts()
    blobs = counts.pop("blobs_to_delete" if report.dry_run else "blobs_deleted")
    orphans = counts.pop("orphans")
    strays = counts.pop("stray_blobs")
    drops = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items()) or "no drop to delete"
    verb = "would be deleted" if report.dry_run else "deleted"
    print(
        f"\ncleanup{' (dry run)' if report.dry_run else ''}: {drops}; {blobs} blob(s) {verb};"
        f" {orphans} orphan drop(s), {strays} stray blob(s) reported"
    )


def cleanup_command(args: argparse.Namespace) -> int:
    """Delete delivered drops (or list them with --dry-run) and report orphans."""
    rt = common.runtime_from(args)
    report = cleanup_drops(rt, dry_run=args.dry_run)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, default=str))
    else:
        _print_report(report)
    code = exit_code([d.status for d in report.drops], "drops cleanup")
    # An orphan scan that failed is a problem too (report.ok says the same; the code comes from the mapping).
    return max(code, common.EXIT_PROBLEM) if report.orphan_error else code


def delete_orphans_command(args: argparse.Namespace) -> int:
    """Delete (or list) orphans older than the limit."""
    rt = common.runtime_from(args)
    grace = rt.settings.orphan_grace_hours
    hours = grace if args.older_than_hours is None else args.older_than_hours
    if hours < grace:
        return common.fail(
            f"--older-than-hours {hours} is below the grace period ORPHAN_GRACE_HOURS={grace}", common.EXIT_USAGE
        )
    results = delete_orphans(rt, hours, dry_run=args.dry_run)
    if args.json:
        print(
            json.dumps(
                {"dry_run": args.dry_run, "older_than_hours": hours, "drops": [r.as_dict() for r in results]},
                indent=2,
                default=str,
            )
        )
    else:
        print(f"Orphans older than {hours} h{' (dry run: nothing is deleted)' if args.dry_run else ''}:")
        _print_deletions(results, details=True)
    return exit_code([r.status for r in results], "drops delete-orphans")
