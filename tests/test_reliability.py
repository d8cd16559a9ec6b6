"""Reliability at the edges, against Azurite: nothing undelivered is deleted, counters past 2**31, one completion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import shared.ingest
from shared.errors import TransientError
from shared.ingest import MAX_ATTEMPTS, StreamStats, ingest_drop, ingest_metadata_blob
from shared.ledger import DropRecord
from shared.location import location_from_blob
from shared.messages import Envelope, Message
from shared.metadata import parse_metadata
from shared.sinks import PackedSink
from shared.sources import BlobDropSource
from tests.conftest import Relay, make_relay
from tests.test_ingest import expected_rows, rows_of

BIG = 3 * 2**31 + 7  # beyond Int32: a synthetic count, not a 6 GB drop


def drop_root(path: str) -> str:
    return location_from_blob("", "", path).drop_root


def blobs_under(relay: Relay, root: str) -> list[str]:
    return [n for n in relay.blob_names() if n.startswith(f"{root}/")]


def of_drop(messages: list[dict[str, Any]], drop_id: str, kind: str | None = None) -> list[dict[str, Any]]:
    return [m for m in messages if m["drop"] == drop_id and (kind is None or m["type"] == kind)]


@pytest.fixture
def immediate(azurite: Any, tmp_path: Path) -> Relay:
    relay = make_relay(azurite, tmp_path, DELETE_AFTER_DELIVERY="true")
    relay.rt.retry_delay_seconds = 0.01
    return relay


# -- High 1: cleanup deletes only the exact blobs the delivery read --------------------------------


def test_a_later_runs_smaller_drop_landing_before_delivery_is_recorded_is_never_deleted(
    immediate: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay = immediate
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=200)
    root = drop_root(path)
    ledger = relay.rt.ledger
    real_mark_delivered = ledger.mark_delivered
    second: dict[str, Any] = {}

    def second_run_lands_first(record: DropRecord, stats: dict[str, Any]) -> DropRecord:
        # Another run (another ExtractionResultId, fewer rows) writes the same root in the same second.
        second["drop"], _ = relay.drop(tenant, rows=20, root=root)
        second["blobs"] = blobs_under(relay, root)
        return real_mark_delivered(record, stats)

    monkeypatch.setattr(ledger, "mark_delivered", second_run_lands_first)
    first = ingest_metadata_blob(relay.rt, relay.landing.container_name, path)
    monkeypatch.undo()

    assert first.status == "delivered"
    assert blobs_under(relay, root) == second["blobs"]  # every blob of the later run is still there
    record = ledger.find(first.drop_id)
    assert record is not None and record.state == "deleted"
    assert record.blobs_deleted == 0 and record.blobs_kept == len(second["blobs"])
    assert all(name in str(record.kept_blobs) for name in second["blobs"])

    # The later run's own event: a drop of its own, delivered row for row.
    later = ingest_metadata_blob(relay.rt, relay.landing.container_name, path)
    assert later.status == "delivered", later.reason
    assert later.drop_id != first.drop_id and later.rows == 20
    messages = relay.messages()
    assert rows_of(of_drop(messages, later.drop_id)) == expected_rows(20)
    assert rows_of(of_drop(messages, first.drop_id)) == expected_rows(200)


def test_a_metadata_event_of_another_run_is_its_own_drop_even_mid_delivery(relay: Relay) -> None:
    tenant = relay.new_tenant()
    first_sim, path = relay.drop(tenant, rows=30)
    location = location_from_blob(relay.rt.landing_account, relay.landing.container_name, path)
    # A worker is delivering the first run's drop right now (it holds a live lease).
    claim = relay.rt.ledger.claim(
        location,
        tenant,
        "another-worker",
        600,
        details={"extraction_result_id": first_sim.metadata["ExtractionResultId"]},
    )
    assert claim.claimed
    relay.drop(tenant, rows=12, root=drop_root(path))

    outcome = ingest_metadata_blob(relay.rt, relay.landing.container_name, path)

    assert outcome.status == "delivered", outcome.reason
    assert outcome.drop_id != location.drop_id and outcome.rows == 12
    assert rows_of(relay.messages()) == expected_rows(12)
    first = relay.rt.ledger.get(tenant, location.drop_id)
    assert first is not None and first.lease_owner == "another-worker"  # the first delivery is untouched


def test_a_data_file_replaced_while_read_stops_the_attempt_and_the_new_run_is_its_own_drop(
    relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay.rt.retry_delay_seconds = 0.01
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=40)
    real_open = BlobDropSource.open_chunks
    replaced: list[str] = []

    def another_run_writes_first(self: BlobDropSource, data_file: Any) -> Any:
        if not replaced:
            replaced.append(data_file.name)
            relay.drop(tenant, rows=25, root=drop_root(path))  # overwrites the data file and Metadata.json
        return real_open(self, data_file)

    monkeypatch.setattr(BlobDropSource, "open_chunks", another_run_writes_first)
    first = ingest_metadata_blob(relay.rt, relay.landing.container_name, path)
    monkeypatch.undo()

    assert first.status == "failed" and first.code == "data_replaced", first
    assert replaced[0] in first.reason
    later = ingest_metadata_blob(relay.rt, relay.landing.container_name, path)
    assert later.status == "delivered", later.reason
    assert later.drop_id != first.drop_id and later.rows == 25
    messages = relay.messages()
    assert rows_of(of_drop(messages, later.drop_id)) == expected_rows(25)
    assert [m["type"] for m in of_drop(messages, first.drop_id) if m["type"] != "rows"] in ([], ["failed"])


# -- High 2: counters past 2**31, one completion, never failed after complete -----------------------


def test_a_drop_over_2_gib_of_plaintext_is_recorded_as_delivered(relay: Relay, monkeypatch: pytest.MonkeyPatch) -> None:
    real_stream = shared.ingest.stream_drop

    def with_synthetic_sizes(*args: Any, **kwargs: Any) -> StreamStats:
        stats = real_stream(*args, **kwargs)
        stats.plaintext_bytes = BIG
        stats.ciphertext_bytes = BIG - 1
        return stats

    monkeypatch.setattr(shared.ingest, "stream_drop", with_synthetic_sizes)
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=50)

    outcome = ingest_metadata_blob(relay.rt, relay.landing.container_name, path)

    assert outcome.status == "delivered", outcome.reason
    [record] = relay.rt.ledger.list(tenant=tenant)
    assert record.state == "delivered"
    assert record.plaintext_bytes == BIG and record.ciphertext_bytes == BIG - 1
    assert len(of_drop(relay.messages(), outcome.drop_id, "complete")) == 1


def test_every_store_writes_whole_numbers_as_int64(relay: Relay) -> None:
    ledger = relay.rt.ledger
    name = "x/metadata/JobMetadata/Metadata.json"
    location = location_from_blob(relay.rt.landing_account, relay.landing.container_name, name)
    claim = ledger.claim(location, "t", "me", 600, details={"rows_expected": BIG})
    record = ledger.heartbeat(claim.record, BIG, BIG + 1, 600)
    again = ledger.get("t", location.drop_id)
    assert again is not None and again.etag == record.etag
    assert (again.rows_expected, again.checkpoint_seq, again.checkpoint_rows) == (BIG, BIG, BIG + 1)
    assert again.attempts == 1 and isinstance(again.attempts, int)


def _fail_first_delivery_record(relay: Relay, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = relay.rt.ledger.mark_delivered

    def flaky(record: DropRecord, stats: dict[str, Any]) -> DropRecord:
        calls.append(1)
        if len(calls) == 1:
            raise TransientError("ledger write failed after the completion was sent")
        return real(record, stats)

    monkeypatch.setattr(relay.rt.ledger, "mark_delivered", flaky)
    return calls


def test_a_resume_after_the_completion_never_sends_it_again(relay: Relay, monkeypatch: pytest.MonkeyPatch) -> None:
    relay.rt.retry_delay_seconds = 0.01
    _fail_first_delivery_record(relay, monkeypatch)
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=300)

    first = ingest_metadata_blob(relay.rt, relay.landing.container_name, path)
    assert first.status == "delivered", first  # the attempt's own retry records it without re-sending

    messages = relay.messages()
    assert len(of_drop(messages, first.drop_id, "complete")) == 1
    assert rows_of(messages) == expected_rows(300)
    [record] = relay.rt.ledger.list(tenant=tenant)
    assert record.state == "delivered" and record.complete_sent_at


def test_no_failed_message_follows_the_completion(relay: Relay, monkeypatch: pytest.MonkeyPatch) -> None:
    relay.rt.retry_delay_seconds = 0.01
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=100)
    real = relay.rt.ledger.mark_delivered

    def always_fails(record: DropRecord, stats: dict[str, Any]) -> DropRecord:
        raise TransientError("ledger unavailable for this write")

    monkeypatch.setattr(relay.rt.ledger, "mark_delivered", always_fails)
    first = ingest_metadata_blob(relay.rt, relay.landing.container_name, path)
    assert first.status == "retrying"
    [record] = relay.rt.ledger.list(tenant=tenant)
    # The retry budget is spent: the next attempt would give up.
    assert relay.rt.ledger.update_if(record, lambda r: True, {"attempts": MAX_ATTEMPTS, "lease_until": None})
    monkeypatch.setattr(relay.rt.ledger, "mark_delivered", real)

    again = ingest_metadata_blob(relay.rt, relay.landing.container_name, path)

    assert again.status == "delivered", again
    types = [m["type"] for m in of_drop(relay.messages(), first.drop_id)]
    assert types.count("complete") == 1 and "failed" not in types
    [record] = relay.rt.ledger.list(tenant=tenant)
    assert record.state == "delivered"


def test_metadata_is_read_back_with_its_etag(relay: Relay) -> None:
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=5)
    source = BlobDropSource(
        relay.landing, location_from_blob(relay.rt.landing_account, relay.landing.container_name, path)
    )
    assert parse_metadata(source.read_metadata()).tenant_id == tenant
    assert source.metadata_etag.strip('"') == str(relay.landing.get_blob_client(path).get_blob_properties().etag).strip(
        '"'
    )


# -- Resume: a crash right after a checkpoint, with nothing in flight -------------------------------


class WorkerDied(BaseException):
    """The process ends here (not an Exception: nothing in the ingest may catch it)."""


class SyncQueueSink(PackedSink):
    """Puts each message before returning, so a checkpoint covers everything sent: nothing is in flight."""

    def __init__(self, queue: Any, envelope: Envelope, encoding: str) -> None:
        super().__init__(envelope, encoding)
        self.queue = queue
        self.last_seq = -1
        self.last_rows = 0

    def put(self, message: Message) -> None:
        self.queue.send_message(message.payload)
        self.last_seq = message.seq
        self.last_rows = message.first_row + message.row_count

    @property
    def delivered_seq(self) -> int:
        return self.last_seq

    @property
    def delivered_rows(self) -> int:
        return self.last_rows


def test_a_crash_right_after_a_checkpoint_with_nothing_in_flight_resumes_without_a_gap(
    azurite: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay = make_relay(azurite, tmp_path, DOWNSTREAM_MESSAGE_ENCODING="json", CHECKPOINT_EVERY_MESSAGES="2")
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=4000)
    ledger = relay.rt.ledger
    real_heartbeat = ledger.heartbeat
    checkpoints: list[int] = []

    def die_after_a_checkpoint(record: DropRecord, seq: int, rows: int, lease: int, **kw: Any) -> DropRecord:
        saved = real_heartbeat(record, seq, rows, lease, **kw)
        if seq >= 3:
            checkpoints.append(seq)
            raise WorkerDied
        return saved

    monkeypatch.setattr(ledger, "heartbeat", die_after_a_checkpoint)
    location = location_from_blob(relay.rt.landing_account, relay.landing.container_name, path)
    source = BlobDropSource(relay.landing, location)
    with pytest.raises(WorkerDied):
        ingest_drop(
            relay.rt, source, sink_factory=lambda envelope, _resume: SyncQueueSink(relay.rt.queue, envelope, "json")
        )
    monkeypatch.undo()
    [record] = ledger.list(tenant=tenant)
    assert record.checkpoint_seq == checkpoints[0]
    # The worker is gone; its lease lapses (set here rather than waited for).
    assert ledger.update_if(record, lambda r: True, {"lease_until": None})

    resumed = ingest_metadata_blob(relay.rt, relay.landing.container_name, path)

    assert resumed.status == "delivered", resumed
    messages = of_drop(relay.messages(), resumed.drop_id)
    seqs = sorted({m["seq"] for m in messages if m["type"] == "rows"})
    assert seqs == list(range(resumed.messages)) and resumed.messages > checkpoints[0] + 2
    assert rows_of(sorted({m["seq"]: m for m in messages if m["type"] == "rows"}.values(), key=lambda m: m["seq"])) == (
        expected_rows(4000)
    )
    assert [m["type"] for m in messages].count("complete") == 1
