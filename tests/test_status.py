"""One status enum, one mapping to exit codes: every status has a code, and the CLI takes its codes from it."""

from __future__ import annotations

import argparse
import json
from types import SimpleNamespace

import pytest

from shared import cleanup, ingest, reprocess, runs
from shared.cleanup import CleanupReport, DropDeletion
from shared.ingest import IngestOutcome
from shared.runs import FollowOutcome, RunOutcome
from shared.status import COMMAND_EXIT_CODES, EXIT_CODES, ExitCode, Status, exit_code
from viva_relay.cli import common, drops
from viva_relay.cli import runs as cli_runs
from viva_relay.cli.main import build_parser


def test_every_status_has_an_exit_code() -> None:
    assert set(EXIT_CODES) == set(Status)
    for special in COMMAND_EXIT_CODES.values():
        assert set(special) <= set(Status)


def test_a_status_is_still_the_string_it_was() -> None:
    old: str = "delivered"
    assert old == Status.DELIVERED and Status(old) is Status.DELIVERED
    assert json.dumps({"status": Status.NOT_FOUND}) == '{"status": "not_found"}'
    assert f"{Status.WOULD_DELETE}" == "would_delete"
    assert reprocess.REFUSED == "refused" and reprocess.NOT_FOUND == "not_found"
    assert cleanup.DELETED_STATUS == "deleted" and cleanup.WOULD_DELETE == "would_delete"


def test_every_command_with_its_own_reading_is_a_real_command(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    for command in COMMAND_EXIT_CODES:
        with pytest.raises(SystemExit) as stopped:
            parser.parse_args([*command.split(), "--help"])
        assert stopped.value.code == 0, command
    capsys.readouterr()


def test_an_unknown_status_has_no_exit_code() -> None:
    with pytest.raises(ValueError):
        exit_code(["delivred"])


def test_the_worst_outcome_decides() -> None:
    assert exit_code([]) == ExitCode.OK
    assert exit_code([Status.DELIVERED, Status.WAITING]) == ExitCode.TRANSIENT
    assert exit_code([Status.WAITING, Status.FAILED, Status.SKIPPED]) == ExitCode.PROBLEM


def test_the_codes_monitoring_relies_on_did_not_move() -> None:
    """The exit codes each command gave before the statuses had one home."""
    ingest_codes = {s: exit_code([s], "drop ingest") for s in ingest_statuses()}
    assert ingest_codes == {
        "delivered": 0,
        "skipped": 0,
        "failed": 1,
        "waiting": 4,
        "retrying": 4,
        "error": 4,
        "ignored": 4,
    }
    assert {s: exit_code([s], "drops reprocess") for s in (*ingest_statuses(), "refused", "not_found")} == {
        "delivered": 0,
        "skipped": 1,
        "failed": 1,
        "waiting": 1,
        "retrying": 1,
        "error": 1,
        "ignored": 1,
        "refused": 1,
        "not_found": 1,
    }
    cleanup_statuses = ("deleted", "would_delete", "skipped", "refused", "error")
    assert [exit_code([s], "drops cleanup") for s in cleanup_statuses] == [0, 0, 0, 1, 1]
    assert [exit_code([s], "drops delete-orphans") for s in cleanup_statuses] == [0, 0, 0, 0, 1]
    assert [exit_code([s], "runs start") for s in ("started", "skipped", "failed")] == [0, 0, 1]
    events: tuple[str, ...] = ("unchanged", "progress", "succeeded", "failed", "cancelled", "lost", "drop_found")
    events += ("no_drop_alert", "waiting_for_drop", "error")
    assert [exit_code([e], "runs follow") for e in events] == [0, 0, 0, 1, 0, 1, 0, 1, 0, 1]


def ingest_statuses() -> tuple[str, ...]:
    return ("delivered", "skipped", "failed", "waiting", "retrying", "error", "ignored")


# --- the CLI's exit code for each outcome comes from the mapping -------------------------------------------

_NO_LEDGER_ROW = SimpleNamespace(ledger=SimpleNamespace(find=lambda _drop_id: None))


@pytest.mark.parametrize("status", list(Status))
def test_reprocess_exits_with_the_mapped_code(
    status: Status, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(common, "runtime_from", lambda _args: _NO_LEDGER_ROW)
    monkeypatch.setattr(drops, "reprocess_drop", lambda _rt, drop_id: IngestOutcome(status, drop_id, reason="r"))
    code = drops.reprocess_command(argparse.Namespace(drop_id="d1"))
    assert code == exit_code([status], "drops reprocess")
    assert json.loads(capsys.readouterr().out)["status"] == status.value


@pytest.mark.parametrize("status", [Status.DELETED, Status.WOULD_DELETE, Status.SKIPPED, Status.REFUSED, Status.ERROR])
def test_cleanup_and_delete_orphans_exit_with_the_mapped_code(
    status: Status, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    results = [DropDeletion("d1", "t", Status.DELETED), DropDeletion("d2", "t", status)]
    settings = SimpleNamespace(orphan_grace_hours=1)
    monkeypatch.setattr(common, "runtime_from", lambda _args: SimpleNamespace(settings=settings))
    monkeypatch.setattr(drops, "cleanup_drops", lambda _rt, dry_run: CleanupReport(dry_run, drops=results))
    monkeypatch.setattr(drops, "delete_orphans", lambda _rt, _hours, dry_run: results)
    code = drops.cleanup_command(argparse.Namespace(dry_run=False, json=True))
    assert code == exit_code([Status.DELETED, status], "drops cleanup")
    assert code == (common.EXIT_OK if CleanupReport(False, drops=results).ok else common.EXIT_PROBLEM)
    code = drops.delete_orphans_command(argparse.Namespace(dry_run=False, json=True, older_than_hours=None))
    assert code == exit_code([Status.DELETED, status], "drops delete-orphans")
    capsys.readouterr()


def test_a_failed_orphan_scan_is_a_problem(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    report = CleanupReport(False, drops=[DropDeletion("d1", "t", Status.DELETED)], orphan_error="listing failed")
    monkeypatch.setattr(common, "runtime_from", lambda _args: SimpleNamespace())
    monkeypatch.setattr(drops, "cleanup_drops", lambda _rt, dry_run: report)
    assert drops.cleanup_command(argparse.Namespace(dry_run=False, json=True)) == common.EXIT_PROBLEM
    capsys.readouterr()


@pytest.mark.parametrize("status", [Status.STARTED, Status.SKIPPED, Status.FAILED])
def test_runs_start_exits_with_the_mapped_code(
    status: Status, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    outcomes = [RunOutcome("t1", Status.STARTED), RunOutcome("t2", status)]
    monkeypatch.setattr(cli_runs, "runtime_for_runs", lambda _args: SimpleNamespace())
    monkeypatch.setattr(cli_runs, "check_ready", lambda _rt, _tenant: None)
    monkeypatch.setattr(cli_runs, "start_runs", lambda _rt, **_kw: outcomes)
    args = argparse.Namespace(tenant=None, start_date=None, end_date=None, json=True)
    assert cli_runs.start_command(args) == exit_code([Status.STARTED, status], "runs start")
    capsys.readouterr()


_FOLLOW_EVENTS = [
    Status.UNCHANGED,
    Status.PROGRESS,
    Status.SUCCEEDED,
    Status.FAILED,
    Status.CANCELLED,
    Status.LOST,
    Status.DROP_FOUND,
    Status.NO_DROP_ALERT,
    Status.WAITING_FOR_DROP,
    Status.ERROR,
]


@pytest.mark.parametrize("event", _FOLLOW_EVENTS)
def test_runs_follow_exits_with_the_mapped_code(
    event: Status, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    outcomes = [FollowOutcome("t1", "r1", "Succeeded", event)]
    monkeypatch.setattr(cli_runs, "runtime_for_runs", lambda _args: SimpleNamespace())
    monkeypatch.setattr(cli_runs, "follow_runs", lambda _rt: outcomes)
    code = cli_runs.follow_command(argparse.Namespace(watch=False, json=True))
    assert code == exit_code([event], "runs follow")
    assert json.loads(capsys.readouterr().out)["event"] == event.value


def test_the_producers_return_members_of_the_enum() -> None:
    """Ingest, reprocess, cleanup and runs name their statuses from the enum, not free strings."""
    import inspect

    for module in (ingest, reprocess, cleanup, runs):
        source = inspect.getsource(module)
        for status in Status:
            assert f'IngestOutcome("{status}"' not in source, (module.__name__, status)
            assert f'event = "{status}"' not in source, (module.__name__, status)
    assert isinstance(reprocess.REFUSED, Status) and isinstance(cleanup.ERROR, Status)
