"""Cleanup against Azurite: delivered drops go completely, nothing else goes; the drops CLI."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.functions.timer import TimerRequest

import shared.runtime
from shared import location as layout
from shared.cleanup import (
    BlobEntry,
    cleanup_drops,
    delete_drop,
    delete_strays,
    find_orphans,
    plan_deletion,
    scan_landing,
)
from shared.config import Settings
from shared.ingest import IngestOutcome, ingest_metadata_blob
from shared.ledger import DropRecord
from shared.location import location_from_blob
from shared.manifest import ReadBlob
from shared.reprocess import reprocess_drop
from shared.tables import utcnow
from tests.clirun import run_cli
from tests.conftest import Relay, make_relay
from tests.test_ingest import expected_rows, rows_of

ROOT = Path(__file__).resolve().parent.parent


# -- helpers ------------------------------------------------------------------------------------


def drop_root(path: str) -> str:
    return location_from_blob("", "", path).drop_root


def blobs_under(relay: Relay, root: str) -> list[str]:
    prefix = f"{root}/" if root else ""
    return [n for n in relay.blob_names() if n.startswith(prefix)]


def all_versions(relay: Relay) -> list[tuple[str, str | None]]:
    """Every blob and snapshot in the landing container."""
    return sorted((b.name, b.snapshot) for b in relay.landing.list_blobs(include=["snapshots"]))


def record_of(relay: Relay, path: str) -> DropRecord:
    location = location_from_blob(relay.rt.landing_account, relay.landing.container_name, path)
    record = relay.rt.ledger.find(location.drop_id)
    assert record is not None
    return record


def deliver(relay: Relay, tenant: str, rows: int = 60, **kw: Any) -> tuple[str, IngestOutcome]:
    _, path = relay.drop(tenant, rows=rows, **kw)
    outcome = ingest_metadata_blob(relay.rt, relay.landing.container_name, path)
    assert outcome.status == "delivered", outcome.reason
    return path, outcome


def fail_for_missing_key(relay: Relay, tenant: str, rows: int = 40) -> tuple[str, bytes]:
    """A drop that fails because the tenant's key is missing; returns its path and the key to restore."""
    _, path = relay.drop(tenant, rows=rows)
    key_path = relay.keys.current_path(tenant)
    key = key_path.read_bytes()
    key_path.unlink()
    outcome = ingest_metadata_blob(relay.rt, relay.landing.container_name, path)
    assert outcome.status == "failed" and outcome.code == "key_not_found"
    return path, key


def restore_key(relay: Relay, tenant: str, key: bytes) -> None:
    relay.keys.current_path(tenant).write_bytes(key)


@pytest.fixture
def immediate(azurite: Any, tmp_path: Path) -> Relay:
    """A relay with the production default: a delivered drop is deleted right away."""
    return make_relay(azurite, tmp_path, DELETE_AFTER_DELIVERY="true")


# -- the immediate pass and the daily run --------------------------------------------------------


def test_delete_after_delivery_is_the_default() -> None:
    assert Settings.from_env({"KEY_SOURCE": "folder"}).delete_after_delivery is True
    assert Settings.from_env({"KEY_SOURCE": "folder", "DELETE_AFTER_DELIVERY": "false"}).delete_after_delivery is False


def test_delivered_drop_is_deleted_completely_right_away(immediate: Relay) -> None:
    relay = immediate
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=500)
    root = drop_root(path)
    data = next(n for n in blobs_under(relay, root) if "/data/" in n)
    relay.landing.get_blob_client(data).create_snapshot()  # snapshots must go too
    before = blobs_under(relay, root)
    # Blobs that are not this drop's: another tenant's drop nobody ingested yet, a stray file.
    other_tenant = relay.new_tenant()
    _, other_path = relay.drop(other_tenant, rows=10)
    relay.landing.upload_blob("readme.txt", b"not a drop")
    others = sorted(set(relay.blob_names()) - set(before))

    outcome = ingest_metadata_blob(relay.rt, relay.landing.container_name, path)

    assert outcome.status == "delivered"
    assert rows_of(relay.messages()) == expected_rows(500)
    assert blobs_under(relay, root) == []
    assert sorted(str(record_of(relay, path).read_blobs).count(n) for n in before) == [1] * len(before)
    assert [v for v in all_versions(relay) if v[0].startswith(root)] == []
    assert relay.blob_names() == others
    record = record_of(relay, path)
    assert record.state == "deleted"
    assert record.blobs_deleted == len(before)
    assert record.delete_reason == "delivered"
    assert record.state_before_delete == "delivered"
    assert record.deleted_at and record.delivered_at and record.deleted_at >= record.delivered_at
    assert record.rows == 500  # what was delivered stays on record
    other = location_from_blob(relay.rt.landing_account, relay.landing.container_name, other_path)
    assert relay.rt.ledger.find(other.drop_id) is None  # untouched, still unknown


def test_daily_cleanup_deletes_only_delivered_drops(relay: Relay) -> None:
    tenant = relay.new_tenant()
    delivered, _ = deliver(relay, tenant)
    failed, _ = fail_for_missing_key(relay, relay.new_tenant())
    # Waiting: the Metadata.json is still empty (ADLS writes the empty file first).
    _, waiting = relay.drop(relay.new_tenant(), rows=20)
    relay.landing.upload_blob(waiting, b"", overwrite=True)
    assert ingest_metadata_blob(relay.rt, relay.landing.container_name, waiting).status == "waiting"
    # In progress: another worker holds a live lease on it.
    _, in_progress = relay.drop(relay.new_tenant(), rows=20)
    location = location_from_blob(relay.rt.landing_account, relay.landing.container_name, in_progress)
    assert relay.rt.ledger.claim(location, location.tenant_from_location or "", "worker-1", 600).claimed
    # Unknown: the ledger never heard of it.
    _, unknown = relay.drop(relay.new_tenant(), rows=20)
    kept_before = {p: blobs_under(relay, drop_root(p)) for p in (failed, waiting, in_progress, unknown)}
    states_before = {p: record_of(relay, p).state for p in (failed, waiting, in_progress)}

    report = cleanup_drops(relay.rt)

    assert blobs_under(relay, drop_root(delivered)) == []
    assert record_of(relay, delivered).state == "deleted"
    assert {p: blobs_under(relay, drop_root(p)) for p in kept_before} == kept_before
    assert {p: record_of(relay, p).state for p in states_before} == {
        failed: "failed",
        waiting: "waiting",
        in_progress: "in_progress",
    }
    assert report.ok
    assert [d.status for d in report.drops] == ["deleted"]
    unknown_id = location_from_blob(relay.rt.landing_account, relay.landing.container_name, unknown).drop_id
    assert [(o.drop_id, o.kind) for o in report.orphans] == [(unknown_id, "unknown")]
    assert report.orphans[0].blobs == len(kept_before[unknown])
    assert report.strays == []

    again = cleanup_drops(relay.rt)  # idempotent: nothing left to do
    assert again.drops == [] and again.counts()["blobs_deleted"] == 0


def test_dry_run_deletes_nothing(relay: Relay) -> None:
    tenant = relay.new_tenant()
    path, _ = deliver(relay, tenant)
    _, unknown = relay.drop(relay.new_tenant(), rows=5)
    names = relay.blob_names()
    record = record_of(relay, path)

    report = cleanup_drops(relay.rt, dry_run=True)

    assert relay.blob_names() == names
    after = record_of(relay, path)
    assert after.state == "delivered" and after.etag == record.etag
    [d] = report.drops
    assert d.status == "would_delete"
    assert sorted(d.deleted) == blobs_under(relay, drop_root(path))
    assert [o.metadata_path for o in report.orphans] == [unknown]


def test_failed_drops_are_kept_unless_retention_is_set(azurite: Any, tmp_path: Path) -> None:
    relay = make_relay(azurite, tmp_path)
    path, _ = fail_for_missing_key(relay, relay.new_tenant())
    in_a_year = utcnow() + timedelta(days=365)
    report = cleanup_drops(relay.rt, now=in_a_year)
    assert report.drops == []  # retention is off by default: kept, however old
    assert record_of(relay, path).state == "failed" and blobs_under(relay, drop_root(path))

    kept = make_relay(azurite, tmp_path / "retained", FAILED_DROP_RETENTION_DAYS="3")
    old, _ = fail_for_missing_key(kept, kept.new_tenant())
    recent, _ = fail_for_missing_key(kept, kept.new_tenant())
    recent_record = record_of(kept, recent)
    # Four days later the first failure is past retention; the second failed "later" (moved on here).
    assert kept.rt.ledger.update_if(recent_record, lambda r: True, {"failed_at": utcnow() + timedelta(days=2)})
    report = cleanup_drops(kept.rt, now=utcnow() + timedelta(days=4))

    assert blobs_under(kept, drop_root(old)) == []
    record = record_of(kept, old)
    assert record.state == "deleted"
    assert record.reason_code == "key_not_found"  # the reason it failed is kept
    assert "retention of 3 day(s)" in str(record.delete_reason)
    assert record.state_before_delete == "failed"
    assert record_of(kept, recent).state == "failed" and blobs_under(kept, drop_root(recent))
    assert [d.status for d in report.drops] == ["deleted"]


def test_blobs_written_after_delivery_are_kept_and_reported(relay: Relay) -> None:
    tenant = relay.new_tenant()
    path, _ = deliver(relay, tenant)
    root = drop_root(path)
    delivered_blobs = blobs_under(relay, root)
    # A re-run of the pipeline writes into the same folder after the drop was delivered (in the same
    # storage second, as like as not: the list of read blobs and their ETags tells them apart, not a time).
    rerun_data = f"{root}/data/part-rerun.json.gz.enc"
    relay.landing.upload_blob(rerun_data, b"new encrypted data")
    relay.landing.upload_blob(path, relay.landing.download_blob(path).readall(), overwrite=True)

    report = cleanup_drops(relay.rt)

    assert blobs_under(relay, root) == sorted([rerun_data, path])
    [d] = report.drops
    assert d.status == "deleted"
    assert sorted(d.deleted) == sorted(set(delivered_blobs) - {path})
    assert {k.name for k in d.kept} == {rerun_data, path}
    assert {k.name: k.why for k in d.kept} == {
        rerun_data: "not read by the delivery: a later run's drop or a stray; not deleted",
        path: "rewritten since the delivery read it (another run's file?); not deleted",
    }
    record = record_of(relay, path)
    assert record.state == "deleted" and record.blobs_kept == 2
    assert rerun_data in str(record.kept_blobs)
    # The Metadata.json left behind is reported until an operator deals with it.
    [orphan] = report.orphans
    assert (orphan.metadata_path, orphan.kind) == (path, "left_after_deletion")
    assert orphan.blobs == 2 and report.strays == []


def test_stray_blobs_are_reported_and_deleted_only_on_request(relay: Relay) -> None:
    failed, _ = fail_for_missing_key(relay, relay.new_tenant())  # a known drop: its blobs are not strays
    # A pipeline run that died before writing its Metadata.json leaves encrypted data nobody knows.
    stray = f"{uuid.uuid4()}/VivaInsights/{uuid.uuid4()}/data/part-00000.json.gz.enc"
    relay.landing.upload_blob(stray, b"encrypted bytes")

    report = cleanup_drops(relay.rt)

    assert [(f.folder, [b.name for b in f.blobs]) for f in report.strays] == [(stray.rpartition("/")[0], [stray])]
    assert report.orphans == [] and stray in relay.blob_names()
    dry = cli(relay, "delete-orphans", "--older-than-hours", "0", "--dry-run", ORPHAN_GRACE_HOURS="0")
    assert dry.returncode == 0 and f"would delete: {stray}" in dry.stdout
    assert stray in relay.blob_names()
    real = cli(relay, "delete-orphans", "--older-than-hours", "0", ORPHAN_GRACE_HOURS="0")
    assert real.returncode == 0, real.stderr
    assert relay.blob_names() == blobs_under(relay, drop_root(failed))  # the failed drop stays


def test_stray_blobs_that_became_a_drop_are_not_deleted(relay: Relay) -> None:
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=10)
    body = relay.landing.download_blob(path).readall()
    relay.landing.delete_blob(path)  # the data landed, the Metadata.json not yet
    [stray] = scan_landing(relay.rt).strays
    relay.landing.upload_blob(path, body)  # ...and now it does, before the operator's command acts

    result = delete_strays(relay.landing, stray, utcnow(), 0, dry_run=False)

    assert result.status == "skipped" and "arrived meanwhile" in result.reason
    assert ingest_metadata_blob(relay.rt, relay.landing.container_name, path).status == "delivered"


def test_drop_at_the_container_root_takes_only_its_own_blobs(azurite: Any, tmp_path: Path) -> None:
    tenant = str(uuid.uuid4())
    relay = make_relay(azurite, tmp_path, LANDING_CONTAINER=tenant)
    relay.keys.create(tenant)
    deliver(relay, tenant, root="")
    own = relay.blob_names()
    # Later, the next week's drop lands in a folder of the same (per-tenant) container.
    _, nested = relay.drop(tenant, rows=10, root="2026-11-30")
    nested_blobs = blobs_under(relay, "2026-11-30")

    report = cleanup_drops(relay.rt)

    assert relay.blob_names() == nested_blobs
    [d] = report.drops
    assert sorted(d.deleted) == own
    assert [o.metadata_path for o in report.orphans] == [nested]


def test_a_delivery_that_recorded_no_blob_list_deletes_nothing(relay: Relay) -> None:
    tenant = relay.new_tenant()
    path, _ = deliver(relay, tenant)
    record = record_of(relay, path)
    # A ledger row that does not say which blobs the delivery read (written before that was recorded).
    assert relay.rt.ledger.update_if(record, lambda r: True, {"read_blobs": None})
    names = relay.blob_names()

    report = cleanup_drops(relay.rt)

    assert relay.blob_names() == names
    [d] = report.drops
    assert d.status == "refused" and "which blobs the delivery read" in d.reason
    assert not report.ok
    after = record_of(relay, path)
    assert after.state == "delivered" and not after.deleting_owner


def test_leased_blob_is_retried_not_forgotten(relay: Relay) -> None:
    tenant = relay.new_tenant()
    path, _ = deliver(relay, tenant)
    data = next(n for n in blobs_under(relay, drop_root(path)) if "/data/" in n)
    lease = relay.landing.get_blob_client(data).acquire_lease(lease_duration=-1)

    first = cleanup_drops(relay.rt)

    assert [d.status for d in first.drops] == ["error"] and first.drops[0].leased == [data]
    assert record_of(relay, path).state == "delivered"  # so the next run comes back to it
    lease.release()
    second = cleanup_drops(relay.rt)
    assert [d.status for d in second.drops] == ["deleted"]
    assert blobs_under(relay, drop_root(path)) == []
    assert record_of(relay, path).blobs_deleted == 1  # the rest went in the first run


# -- concurrency ----------------------------------------------------------------------------------


def run_together(*calls: Any) -> list[Any]:
    """Start every call at the same moment in its own thread; return their results in order."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def test_two_cleanups_at_once_delete_each_blob_once(relay: Relay) -> None:
    paths = [deliver(relay, relay.new_tenant(), rows=20)[0] for _ in range(3)]
    expected = {p: blobs_under(relay, drop_root(p)) for p in paths}

    first, second = run_together(lambda: cleanup_drops(relay.rt), lambda: cleanup_drops(relay.rt))

    deleted = [name for report in (first, second) for d in report.drops for name in d.deleted]
    assert sorted(deleted) == sorted(n for names in expected.values() for n in names)  # each exactly once
    for p, names in expected.items():
        record = record_of(relay, p)
        assert record.state == "deleted" and record.blobs_deleted == len(names)
        statuses = [d.status for r in (first, second) for d in r.drops if d.drop_id == record.drop_id]
        assert statuses.count("deleted") == 1 and set(statuses) <= {"deleted", "skipped"}
    assert relay.blob_names() == []


def test_a_cleanup_in_progress_is_left_alone_until_its_lease_expires(relay: Relay) -> None:
    path, _ = deliver(relay, relay.new_tenant())
    names = blobs_under(relay, drop_root(path))
    ledger = relay.rt.ledger
    assert ledger.claim_deletion(record_of(relay, path), "other-cleanup", 600)

    [d] = cleanup_drops(relay.rt).drops
    assert d.status == "skipped" and "another cleanup" in d.reason
    assert blobs_under(relay, drop_root(path)) == names

    # That cleanup died after deleting one blob; its lease ran out.
    relay.landing.delete_blob(names[0])
    hour_ago = utcnow() - timedelta(hours=1)
    assert ledger.update_if(record_of(relay, path), lambda r: True, {"deleting_until": hour_ago})
    [d] = cleanup_drops(relay.rt).drops
    assert d.status == "deleted" and sorted(d.deleted) == names[1:]
    assert record_of(relay, path).state == "deleted"


def test_cleanup_racing_a_redelivered_event(relay: Relay) -> None:
    tenant = relay.new_tenant()
    path, _ = deliver(relay, tenant, rows=80)
    container = relay.landing.container_name

    _, event = run_together(lambda: cleanup_drops(relay.rt), lambda: ingest_metadata_blob(relay.rt, container, path))

    assert event.status in ("skipped", "waiting")  # never delivered twice
    assert record_of(relay, path).state == "deleted"
    assert blobs_under(relay, drop_root(path)) == []
    messages = relay.messages()
    assert len([m for m in messages if m["type"] == "complete"]) == 1
    assert rows_of(messages) == expected_rows(80)
    # And once it is deleted, a late duplicate event changes nothing.
    ingest_metadata_blob(relay.rt, container, path)
    assert record_of(relay, path).state == "deleted" and relay.messages() == []


def test_cleanup_racing_reprocess_never_loses_the_drop(azurite: Any, tmp_path: Path) -> None:
    relay = make_relay(azurite, tmp_path, FAILED_DROP_RETENTION_DAYS="1")
    tenant = relay.new_tenant()
    paths = []
    for _ in range(3):
        path, key = fail_for_missing_key(relay, tenant, rows=30)
        restore_key(relay, tenant, key)  # the operator fixed the cause...
        paths.append(path)
    later = utcnow() + timedelta(days=2)  # ...and the drops are past retention: both may act

    results = run_together(
        lambda: cleanup_drops(relay.rt, now=later),
        *[lambda p=p: reprocess_drop(relay.rt, record_of(relay, p).drop_id) for p in paths],
    )

    outcomes = results[1:]
    messages = relay.messages()
    for path, outcome in zip(paths, outcomes, strict=True):
        record = record_of(relay, path)
        completes = [m for m in messages if m["type"] == "complete" and m["drop"] == record.drop_id]
        if outcome.status == "delivered":  # reprocess won: the drop was delivered, exactly once
            assert len(completes) == 1
            if record.state == "deleted":  # and cleanup then saw it delivered: deleted as delivered
                assert record.delete_reason == "delivered"
            else:
                assert record.state == "delivered" and blobs_under(relay, drop_root(path))
        else:  # cleanup won: the drop failed for good and was deleted, nothing half-sent
            assert outcome.status == "refused", outcome
            assert record.state == "deleted" and "retention" in str(record.delete_reason)
            assert completes == [] and blobs_under(relay, drop_root(path)) == []


def test_reprocess_refused_while_cleanup_holds_the_drop(azurite: Any, tmp_path: Path) -> None:
    relay = make_relay(azurite, tmp_path, FAILED_DROP_RETENTION_DAYS="1")
    tenant = relay.new_tenant()
    path, key = fail_for_missing_key(relay, tenant)
    restore_key(relay, tenant, key)
    record = record_of(relay, path)
    assert relay.rt.ledger.claim_deletion(record, "cleanup-1", 600, states=("failed",))

    outcome = reprocess_drop(relay.rt, record.drop_id)

    assert outcome.status == "refused" and "cleanup is deleting it" in outcome.reason
    assert record_of(relay, path).state == "failed"
    # Only the original failure's `failed` message: the refused reprocess sent nothing.
    assert [m["type"] for m in relay.messages()] == ["failed"]


# -- reprocess --------------------------------------------------------------------------------------


def test_reprocessed_failed_drop_ends_delivered(relay: Relay) -> None:
    tenant = relay.new_tenant()
    path, key = fail_for_missing_key(relay, tenant, rows=90)
    drop_id = record_of(relay, path).drop_id
    assert reprocess_drop(relay.rt, drop_id).status == "failed"  # the cause is not fixed yet
    assert record_of(relay, path).previous_reason_code == "key_not_found"

    restore_key(relay, tenant, key)
    outcome = reprocess_drop(relay.rt, drop_id)

    assert outcome.status == "delivered", outcome.reason
    record = record_of(relay, path)
    assert record.state == "delivered"
    assert record.previous_reason_code == "key_not_found"
    assert "no key for tenant" in str(record.previous_reason)
    assert rows_of(relay.messages()) == expected_rows(90)
    assert reprocess_drop(relay.rt, drop_id).status == "refused"  # delivered: nothing to redo
    assert reprocess_drop(relay.rt, "dnosuchdrop").status == "not_found"


# -- the timer function ----------------------------------------------------------------------------


def test_cleanup_timer_function(
    relay: Relay, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from function_app import create_app

    for key, value in relay.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(shared.runtime, "_runtime", None)
    path, _ = deliver(relay, relay.new_tenant())
    _, unknown = relay.drop(relay.new_tenant(), rows=5)
    fn = next(f for f in create_app().get_functions() if f.get_function_name() == "cleanup_drops")
    [binding] = json.loads(fn.get_function_json())["bindings"]
    assert binding["type"] == "timerTrigger" and binding["schedule"] == "%CLEANUP_SCHEDULE%"

    caplog.set_level(logging.INFO, logger="viva_relay")
    fn.get_user_function()(TimerRequest(past_due=False))

    assert record_of(relay, path).state == "deleted" and blobs_under(relay, drop_root(path)) == []
    assert unknown in relay.blob_names()
    assert '"deleted": 1' in caplog.text and "orphan drop" in caplog.text and unknown in caplog.text


# -- the CLI, through its main as a subprocess sees it (tests/clirun.py) ----------------------------


def cli(relay: Relay, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_cli("drops", *args, env=os.environ | relay.env | env, cwd=ROOT)


def test_cli_list_and_show(relay: Relay) -> None:
    tenant = relay.new_tenant()
    delivered, _ = deliver(relay, tenant, rows=33)
    failed, _ = fail_for_missing_key(relay, relay.new_tenant())
    delivered_id, failed_id = record_of(relay, delivered).drop_id, record_of(relay, failed).drop_id

    listed = cli(relay, "list")
    assert listed.returncode == 0, listed.stderr
    header, *lines = listed.stdout.splitlines()
    assert header.split() == ["DROP", "ID", "TENANT", "STATE", "ROWS", "MESSAGES", "FIRST", "SEEN", "REASON"]
    row = next(line for line in lines if line.startswith(delivered_id)).split()
    assert row[1:4] == [tenant, "delivered", "33"]
    assert any(line.startswith(failed_id) and " failed " in line and "key" in line for line in lines)

    only_failed = cli(relay, "list", "--status", "failed")
    assert failed_id in only_failed.stdout and delivered_id not in only_failed.stdout
    assert delivered_id in cli(relay, "list", "--tenant", tenant).stdout

    shown = cli(relay, "show", failed_id)
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["drop_id"] == failed_id and doc["state"] == "failed"
    assert doc["ReasonCode"] == "key_not_found" and doc["MetadataPath"] == failed
    assert doc["FailedAt"].startswith(str(utcnow().year))

    missing = cli(relay, "show", "dnosuchdrop")
    assert missing.returncode == 1 and "no drop dnosuchdrop" in missing.stderr


def test_cli_cleanup_dry_run_then_cleanup(relay: Relay) -> None:
    path, _ = deliver(relay, relay.new_tenant())
    _, unknown = relay.drop(relay.new_tenant(), rows=5)
    names = relay.blob_names()
    own = blobs_under(relay, drop_root(path))
    drop_id = record_of(relay, path).drop_id

    dry = cli(relay, "cleanup", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert relay.blob_names() == names
    assert all(f"{drop_id} would delete: {name}" in dry.stdout for name in own)
    assert unknown in dry.stdout  # the orphan is reported

    real = cli(relay, "cleanup", "--json")
    assert real.returncode == 0, real.stderr
    report = json.loads(real.stdout)
    assert report["counts"]["deleted"] == 1 and report["counts"]["blobs_deleted"] == len(own)
    assert relay.blob_names() == sorted(set(names) - set(own))
    assert record_of(relay, path).state == "deleted"


def test_cli_reprocess_with_immediate_deletion(relay: Relay) -> None:
    tenant = relay.new_tenant()
    path, key = fail_for_missing_key(relay, tenant, rows=25)
    drop_id = record_of(relay, path).drop_id

    still_failing = cli(relay, "reprocess", drop_id, DELETE_AFTER_DELIVERY="true")
    assert still_failing.returncode == 1 and "key_not_found" in still_failing.stdout
    assert blobs_under(relay, drop_root(path))  # a failed drop is kept

    restore_key(relay, tenant, key)
    done = cli(relay, "reprocess", drop_id, DELETE_AFTER_DELIVERY="true")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "delivered" and result["rows"] == 25
    assert result["state"] == "deleted"  # delivered, then deleted by the immediate pass
    assert rows_of(relay.messages()) == expected_rows(25)
    assert blobs_under(relay, drop_root(path)) == []
    record = record_of(relay, path)
    assert record.previous_reason_code == "key_not_found" and record.delivered_at

    again = cli(relay, "reprocess", drop_id)
    assert again.returncode == 1 and "only failed or waiting drops" in again.stderr


def test_cli_delete_orphans(relay: Relay) -> None:
    _, unknown = relay.drop(relay.new_tenant(), rows=5)
    orphan_blobs = blobs_under(relay, drop_root(unknown))

    too_soon = cli(relay, "delete-orphans", "--older-than-hours", "1")
    assert too_soon.returncode == 2 and "ORPHAN_GRACE_HOURS=72" in too_soon.stderr
    within_grace = cli(relay, "delete-orphans")  # default: the grace period; the orphan is younger
    assert within_grace.returncode == 0 and relay.blob_names() == orphan_blobs

    dry = cli(relay, "delete-orphans", "--older-than-hours", "0", "--dry-run", ORPHAN_GRACE_HOURS="0")
    assert dry.returncode == 0, dry.stderr
    assert relay.blob_names() == orphan_blobs and all(name in dry.stdout for name in orphan_blobs)

    real = cli(relay, "delete-orphans", "--older-than-hours", "0", ORPHAN_GRACE_HOURS="0")
    assert real.returncode == 0, real.stderr
    assert relay.blob_names() == []
    record = record_of(relay, unknown)
    assert record.state == "deleted" and record.orphan_blobs_deleted == len(orphan_blobs)
    assert "operator" in str(record.orphan_delete_reason)
    assert find_orphans(relay.rt) == []


def test_delete_drop_skips_every_state_but_delivered(relay: Relay) -> None:
    path, _ = fail_for_missing_key(relay, relay.new_tenant())
    record = record_of(relay, path)
    names = relay.blob_names()
    for state in ("failed", "waiting", "in_progress", "deleted", ""):
        assert delete_drop(relay.rt, dataclasses.replace(record, state=state)).status == "skipped"
    assert relay.blob_names() == names


def test_list_json_is_machine_readable(azurite: Any, tmp_path: Path) -> None:
    relay = make_relay(azurite, tmp_path)
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=12)
    delivered = ingest_metadata_blob(relay.rt, relay.landing.container_name, path)
    done = cli(relay, "list", "--json")
    assert done.returncode == 0, done.stderr
    [doc] = json.loads(done.stdout)
    assert doc["drop_id"] == delivered.drop_id and doc["state"] == "delivered"
    assert doc["rows"] == 12 and doc["rows_expected"] == 12 and isinstance(doc["messages"], int)
    assert doc["reason"] is None and doc["first_seen"].startswith("20")


def test_the_etag_the_delivery_read_decides_what_goes_not_a_timestamp() -> None:
    """Storage keeps whole seconds and another clock than the worker's: a time cannot tell the blobs apart."""
    root = "run/VivaInsights/" + str(uuid.uuid4())
    metadata = layout.metadata_path_of(root)
    data, rerun, folder = f"{root}/data/part-1.json.gz.enc", f"{root}/data/part-rerun.json.gz.enc", f"{root}/data"
    delivered = datetime(2026, 5, 1, 12, 0, 0, 400_000, tzinfo=UTC)
    same_second = delivered.replace(microsecond=0)
    ahead = delivered + timedelta(seconds=30)  # the storage clock runs ahead of the worker that delivered
    read = {data: ReadBlob(data, '"e1"', 10), metadata: ReadBlob(metadata, '"m1"', -1)}
    blobs = [
        BlobEntry(data, 10, ahead, "e1"),  # what the delivery read: its ETag says it is unchanged
        BlobEntry(metadata, 50, same_second, "m2"),  # rewritten in the second of the delivery
        BlobEntry(rerun, 10, same_second, "r1"),  # a later run's file, same second
        BlobEntry(folder, 0, ahead, "f1"),  # a folder marker: no ETag vouches for it, so the time still does
    ]
    plan = plan_deletion(blobs, root, newer_than=delivered, newer_why="the delivery", recorded=None, read=read)
    assert [b.name for b in plan.delete] == [data]
    assert {k.name: k.why.split(" (")[0].split(",")[0] for k in plan.kept} == {
        metadata: "rewritten since the delivery read it",
        rerun: "not read by the delivery: a later run's drop or a stray; not deleted",
        folder: f"modified at {ahead.isoformat()}",
    }
