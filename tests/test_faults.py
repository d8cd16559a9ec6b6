"""Fault injection: a drop interrupted anywhere is delivered completely, and once after de-duplication.

Each test reports `rows expected=… after_dedup=… raw_duplicates=… lost=…` in the run's summary.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.storage.queue import QueueClient

from devtools.azurite import Azurite
from devtools.clock import ManualClock, ShiftedClock
from devtools.faultproxy import FaultProxy
from devtools.keyvault_standin import KeyVaultStandIn
from devtools.simulate import generate_rows
from shared.config import Settings
from shared.ingest import ingest_metadata_blob, recheck_drops
from shared.messages import decode_message
from shared.runtime import Runtime
from shared.tables import utcnow
from tests.conftest import FAULT_REPORTS, Relay, make_relay
from tests.fault_worker import CLOCK_SHIFT_SETTING

ROOT = Path(__file__).resolve().parent.parent
FAST_RETRY: dict[str, Any] = {
    "initial_backoff": 0,
    "increment_base": 0,
    "random_jitter_range": 0,
    "retry_backoff_factor": 0.01,
}
CHECKPOINT_EVERY = 4
CONCURRENCY = 4
#: Messages that may be re-sent after one interruption: not yet checkpointed (up to the checkpoint
#: interval plus the messages of one decoded piece, at most 4 in json) plus those in flight.
WINDOW = CHECKPOINT_EVERY + 4 + 2 * CONCURRENCY


def raw_messages(relay: Relay) -> list[dict[str, Any]]:
    out = []
    while batch := list(relay.rt.queue.receive_messages(messages_per_page=32, max_messages=32, visibility_timeout=300)):
        for m in batch:
            out.append(decode_message(m.content))
            relay.rt.queue.delete_message(m)
    return out


def audit(relay: Relay, expected: list[bytes], *, interruptions: int) -> dict[str, int]:
    """De-duplicate by (drop, seq), check completeness, and report the counts."""
    import json

    messages = raw_messages(relay)
    counts = Counter((m["drop"], m["seq"]) for m in messages)
    unique = {(m["drop"], m["seq"]): m for m in messages}
    rows_msgs = sorted((m for m in unique.values() if m["type"] == "rows"), key=lambda m: m["seq"])
    [complete] = [m for m in unique.values() if m["type"] == "complete"]
    rows = [json.dumps(r, separators=(",", ":"), ensure_ascii=False).encode() for m in rows_msgs for r in m["rows"]]
    report = {
        "expected": len(expected),
        "after_dedup": len(rows),
        "raw_duplicates": sum(c - 1 for c in counts.values()),
        "lost": len(expected) - len(set(rows) & set(expected)),
    }
    FAULT_REPORTS.append(
        f"{os.environ.get('PYTEST_CURRENT_TEST', '?').split(' ')[0].split('::')[-1]}:"
        f" rows expected={report['expected']}"
        f" after_dedup={report['after_dedup']} raw_duplicates={report['raw_duplicates']}"
        f" (bound {interruptions * WINDOW}) lost={report['lost']} interruptions={interruptions}"
    )
    assert rows == expected
    assert [m["seq"] for m in rows_msgs] == list(range(complete["messages"]))
    assert complete["seq"] == complete["messages"] and complete["rows"] == len(expected)
    assert report["lost"] == 0
    assert report["raw_duplicates"] <= interruptions * WINDOW
    return report


def fault_relay(azurite: Azurite, tmp: Path, **overrides: str) -> Relay:
    settings = {
        "DOWNSTREAM_MESSAGE_ENCODING": "json",
        "CHECKPOINT_EVERY_MESSAGES": str(CHECKPOINT_EVERY),
        "DOWNSTREAM_PUT_CONCURRENCY": str(CONCURRENCY),
    }
    return make_relay(azurite, tmp, **(settings | overrides))


def vault_drop(azurite: Azurite, tmp: Path, vault: KeyVaultStandIn, *, rows: int) -> tuple[Relay, str, str]:
    """A relay unwrapping in the Key Vault stand-in, and a drop whose private key lives only there."""
    relay = fault_relay(azurite, tmp, KEY_SOURCE="keyvault", KEY_VAULT_URL=vault.url)
    relay.rt = Runtime(
        relay.rt.settings, credential=vault.credential, keyvault_kwargs={**vault.client_kwargs(), "retry_total": 0}
    )
    relay.rt.retry_delay_seconds = 0.01
    tenant = relay.new_tenant()
    version = vault.add_key(tenant, relay.keys.load(relay.keys.current_path(tenant)), exp=2_000_000_000)
    _, path = relay.drop(tenant, rows=rows, version=version)
    relay.keys.current_path(tenant).unlink()
    return relay, tenant, path


def skip_past_lease(relay: Relay, tenant: str) -> ShiftedClock:
    """Move the relay's clock just past the drop's lease (the next attempt may take over), without sleeping."""
    [record] = list(relay.rt.ledger.list(tenant=tenant))
    clock = relay.rt.clock if isinstance(relay.rt.clock, ShiftedClock) else ShiftedClock()
    until = record.lease_until
    if until is not None and until >= clock():
        clock.advance(until - clock() + timedelta(milliseconds=200))
    relay.rt.clock = clock
    return clock


def test_sigkill_at_many_points_then_redeliver(azurite: Azurite, tmp_path: Path) -> None:
    relay = fault_relay(azurite, tmp_path, DROP_LEASE_SECONDS="2")
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=3000)
    expected = list(generate_rows(3000))
    env = {**os.environ, **relay.env, "PYTHONPATH": str(ROOT)}
    kill_after = [1, 9, 23, 40]  # puts seen in each run before SIGKILL
    shift = timedelta(0)
    for k in kill_after:
        # Each worker's clock runs past the lease the killed one left (instead of the test sleeping it out).
        env[CLOCK_SHIFT_SETTING] = str(shift.total_seconds())
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fault_worker", relay.landing.container_name, path],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        assert proc.stdout is not None
        puts = 0
        for line in proc.stdout:
            if line.startswith("PUT"):
                puts += 1
                if puts >= k:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
            assert not line.startswith("OUTCOME"), f"worker finished before the kill point: {line}"
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        [record] = list(relay.rt.ledger.list(tenant=tenant))
        assert record.state == "in_progress"
        shift = skip_past_lease(relay, tenant).offset
    # The event is delivered again (at least once): the next attempt takes over and resumes.
    outcome = ingest_metadata_blob(relay.rt, relay.landing.container_name, path)
    assert outcome.status == "delivered", outcome.reason
    [record] = list(relay.rt.ledger.list(tenant=tenant))
    assert record.resumed_from_seq is not None and record.resumed_from_seq >= 0
    audit(relay, expected, interruptions=len(kill_after))


@pytest.mark.parametrize(
    ("failures", "concurrency"),
    [(12, CONCURRENCY), (5, 1)],
    ids=["503s-spread-over-concurrent-puts", "one-put-outlasts-the-sdk-retries"],
)
def test_queue_throttling_503s_are_retried(azurite: Azurite, tmp_path: Path, failures: int, concurrency: int) -> None:
    with FaultProxy(azurite.queue_port) as proxy:
        cs = azurite.connection_string.replace(f":{azurite.queue_port}/", f":{proxy.port}/")
        relay = fault_relay(azurite, tmp_path, RelayStorage=cs, DOWNSTREAM_PUT_CONCURRENCY=str(concurrency))
        relay.rt = Runtime(relay.rt.settings, storage_kwargs=FAST_RETRY)
        relay.rt.retry_delay_seconds = 0.01
        tenant = relay.new_tenant()
        _, path = relay.drop(tenant, rows=1500)
        assert relay.rt.queue.get_queue_properties() is not None  # the queue exists before faults start
        proxy.fail_next(failures, 503, method="POST", path_contains="/messages")
        outcome = ingest_metadata_blob(relay.rt, relay.landing.container_name, path)
        assert outcome.status == "delivered", outcome.reason
        assert len(proxy.faults()) == failures
        audit(relay, list(generate_rows(1500)), interruptions=1)


def test_blob_download_cut_mid_stream(azurite: Azurite, tmp_path: Path) -> None:
    with FaultProxy(azurite.blob_port) as proxy:
        cs = azurite.connection_string.replace(f":{azurite.blob_port}/", f":{proxy.port}/")
        relay = fault_relay(azurite, tmp_path, LandingStorage=cs)
        relay.rt = Runtime(relay.rt.settings, storage_kwargs=FAST_RETRY)
        relay.rt.retry_delay_seconds = 0.01
        tenant = relay.new_tenant()
        _, path = relay.drop(tenant, rows=3000)
        proxy.cut_next(2, after_bytes=300_000, method="GET", path_contains="/data/")
        outcome = ingest_metadata_blob(relay.rt, relay.landing.container_name, path)
        assert outcome.status == "delivered", outcome.reason
        assert [f.fault for f in proxy.faults()] == ["cut after 300000 bytes"] * 2
        audit(relay, list(generate_rows(3000)), interruptions=2)


def test_key_vault_outage_then_recovery(azurite: Azurite, tmp_path: Path) -> None:
    with KeyVaultStandIn() as vault:
        relay, tenant, path = vault_drop(azurite, tmp_path, vault, rows=400)
        vault.set_available(False)
        # The trigger returns normally (no crash loop); the re-check timer resumes the drop later.
        retrying = ingest_metadata_blob(relay.rt, relay.landing.container_name, path)
        assert retrying.status == "retrying" and "Key Vault" in retrying.reason
        [record] = list(relay.rt.ledger.list(tenant=tenant))
        assert record.state == "in_progress" and not record.lease_active(utcnow())
        assert "Key Vault" in str(record.last_error)
        assert raw_messages(relay) == []

        vault.set_available(True)
        assert [o.status for o in recheck_drops(relay.rt)] == ["delivered"]
        audit(relay, list(generate_rows(400)), interruptions=0)


def test_duplicate_event_during_processing(azurite: Azurite, tmp_path: Path) -> None:
    relay = fault_relay(azurite, tmp_path)
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=6000)
    results: list[Any] = []
    worker = threading.Thread(
        target=lambda: results.append(ingest_metadata_blob(relay.rt, relay.landing.container_name, path))
    )
    worker.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        records = list(relay.rt.ledger.list(tenant=tenant))
        if records and records[0].state == "in_progress":
            break
        time.sleep(0.01)
    second = Runtime(Settings.from_env(relay.env))  # another worker, same drop, same moment
    duplicate = ingest_metadata_blob(second, relay.landing.container_name, path)
    worker.join(timeout=60)
    assert duplicate.status == "skipped" and "in progress" in duplicate.reason
    assert results[0].status == "delivered"
    report = audit(relay, list(generate_rows(6000)), interruptions=0)
    assert report["raw_duplicates"] == 0


def test_stalled_worker_stops_sending_once_its_lease_lapses(azurite: Azurite, tmp_path: Path) -> None:
    """Two attempts never both send: a worker that could not renew its lease stops before a takeover."""
    from shared.ingest import _Checkpointer
    from shared.ledger import new_owner_id

    relay = fault_relay(azurite, tmp_path, DROP_LEASE_SECONDS="2")
    relay.rt.clock = clock = ManualClock(utcnow())
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=50)
    from shared.location import location_from_blob

    loc = location_from_blob(relay.rt.landing_account, relay.landing.container_name, path)
    claim = relay.rt.ledger.claim(loc, tenant, new_owner_id(), 2)
    guard = _Checkpointer(relay.rt, claim.record)
    guard.guard(None)  # fresh lease: sending allowed
    clock.advance(seconds=1.7)
    guard.guard(None)  # still inside the lease less its safety margin
    clock.advance(seconds=0.2)  # 1.9 s without a renewal: past the lease less its margin
    from shared.errors import LeaseLost

    with pytest.raises(LeaseLost):
        guard.guard(None)


def test_outage_beyond_the_retry_budget_fails_visibly_then_reprocess_finishes(azurite: Azurite, tmp_path: Path) -> None:
    from shared.ingest import MAX_ATTEMPTS
    from shared.reprocess import reprocess_drop

    with KeyVaultStandIn() as vault:
        relay, tenant, path = vault_drop(azurite, tmp_path, vault, rows=200)
        vault.set_available(False)
        transient = 0
        for _ in range(MAX_ATTEMPTS + 2):
            outcome = ingest_metadata_blob(relay.rt, relay.landing.container_name, path)
            if outcome.status != "retrying":
                break
            transient += 1
        assert transient == MAX_ATTEMPTS
        assert outcome.status == "failed" and f"gave up after {MAX_ATTEMPTS} attempts" in outcome.reason
        [record] = list(relay.rt.ledger.list(tenant=tenant))
        assert record.state == "failed" and "Key Vault" in str(record.reason)
        assert path in relay.blob_names()  # a failed drop is kept
        # Consumers are told (nothing was sent, yet the drop is known to have failed).
        [failed] = raw_messages(relay)
        assert failed["type"] == "failed" and failed["drop"] == record.drop_id and "gave up" in failed["reason"]

        vault.set_available(True)
        assert reprocess_drop(relay.rt, record.drop_id).status == "delivered"
        audit(relay, list(generate_rows(200)), interruptions=0)


def test_resume_after_a_settings_change_packs_as_the_first_attempt(azurite: Azurite, tmp_path: Path) -> None:
    """The first attempt dies mid-drop under json; the worker that resumes is configured for gzip-base64."""
    from shared.sinks import QueueSink

    relay = fault_relay(azurite, tmp_path, DROP_LEASE_SECONDS="2")
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=3000)
    original = QueueSink.put
    puts = 0

    def checkpoint_recorded() -> bool:
        return any(r.checkpoint_seq >= 0 for r in relay.rt.ledger.list(tenant=tenant))

    def dies_after_30_puts(self: QueueSink, message: Any) -> None:
        nonlocal puts
        puts += 1
        # Puts complete asynchronously: die at the first put after a checkpoint is in the ledger, so the
        # next worker really resumes (not restarts).
        if puts > 30 and checkpoint_recorded():
            self.flush()
            raise KeyboardInterrupt  # stands for the process dying: no clean-up runs
        original(self, message)

    QueueSink.put = dies_after_30_puts  # type: ignore[method-assign]
    try:
        with pytest.raises(KeyboardInterrupt):
            ingest_metadata_blob(relay.rt, relay.landing.container_name, path)
    finally:
        QueueSink.put = original  # type: ignore[method-assign]
    [record] = list(relay.rt.ledger.list(tenant=tenant))
    assert record.checkpoint_seq >= 0 and record.encoding == "json"
    clock = skip_past_lease(relay, tenant)

    changed = Runtime(Settings.from_env(relay.env | {"DOWNSTREAM_MESSAGE_ENCODING": "gzip-base64"}), clock=clock)
    outcome = ingest_metadata_blob(changed, relay.landing.container_name, path)
    assert outcome.status == "delivered", outcome.reason
    [record] = list(relay.rt.ledger.list(tenant=tenant))
    assert record.encoding == "json" and record.resumed_from_seq is not None and record.resumed_from_seq >= 0
    audit(relay, list(generate_rows(3000)), interruptions=1)


@pytest.mark.parametrize("path", ["threads", "async", "inline"])
def test_a_stalled_put_holds_later_puts_within_the_window(azurite: Azurite, path: str) -> None:
    """Behind one stalled put, no message is sent more than the window past the watermark (re-send bound)."""
    from shared import delivery
    from shared.messages import Envelope, Message

    concurrency = 2
    window = 2 * concurrency
    with FaultProxy(azurite.queue_port) as proxy:
        cs = azurite.connection_string.replace(f":{azurite.queue_port}/", f":{proxy.port}/")
        queue = QueueClient.from_connection_string(cs, f"q{uuid.uuid4().hex[:12]}")
        queue.create_queue()
        # The first message's put stalls (puts start concurrently: match its body, not the first to arrive).
        stall = proxy.hold_next(1, method="POST", path_contains="/messages", body_contains=b">message-0<")
        envelope = Envelope(str(uuid.uuid4()), "drop-stall", "table")
        twin = functools.partial(delivery.async_twin, queue)
        sink = delivery.queue_sink(path, queue, twin, envelope, "json", concurrency=concurrency)
        messages = [Message(seq=i, first_row=i, row_count=1, payload=f"message-{i}") for i in range(20)]
        submitted: list[int] = []

        def produce() -> None:
            for message in messages:
                sink.put(message)  # type: ignore[attr-defined]
                submitted.append(message.seq)

        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        deadline = time.monotonic() + 60
        while sum(s.method == "POST" for s in proxy.seen) < window - 1 and time.monotonic() < deadline:
            time.sleep(0.02)  # the puts after the stalled one are acknowledged
        producer.join(0.5)  # a moment to run ahead, if the window let it; it must not
        assert producer.is_alive() and stall.hits == 1
        assert submitted == list(range(window)) and sink.delivered_seq == -1
        stall.release.set()
        producer.join(60)
        sink.flush()  # type: ignore[attr-defined]
        assert submitted == list(range(20)) and sink.delivered_seq == 19
        sink.close()
        stored = sorted(
            int(m.content.removeprefix("message-"))
            for m in queue.receive_messages(messages_per_page=32, max_messages=32)
        )
        assert stored == list(range(20))


@pytest.mark.parametrize("path", ["threads", "async", "inline"])
def test_a_put_refused_while_another_waits_for_the_window_ends_the_sink_cleanly(azurite: Azurite, path: str) -> None:
    """The put that was waiting for room raises the refusal, and flush raises it too instead of waiting forever."""
    from shared import delivery
    from shared.errors import TransientError
    from shared.messages import Envelope, Message

    with FaultProxy(azurite.queue_port) as proxy:
        cs = azurite.connection_string.replace(f":{azurite.queue_port}/", f":{proxy.port}/")
        queue = QueueClient.from_connection_string(cs, f"missing{uuid.uuid4().hex[:12]}")  # never created: 404
        holds = [proxy.hold_next(1, method="POST", body_contains=f">message-{i}<".encode()) for i in range(4)]
        twin = functools.partial(delivery.async_twin, queue)
        sink = delivery.queue_sink(path, queue, twin, Envelope(str(uuid.uuid4()), "d", "t"), "json", concurrency=2)
        outcome: list[BaseException] = []
        submitted: list[int] = []

        def produce() -> None:
            try:
                for i in range(5):  # the window holds four: the fifth waits until one of them ends
                    sink.put(Message(seq=i, first_row=i, row_count=1, payload=f"message-{i}"))  # type: ignore[attr-defined]
                    submitted.append(i)
            except BaseException as exc:
                outcome.append(exc)

        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        deadline = time.monotonic() + 60
        while (sum(h.hits for h in holds) < 2 or len(submitted) < 4) and time.monotonic() < deadline:
            time.sleep(0.02)  # the first puts are held; the fifth is waiting for room
        producer.join(0.2)
        for hold in holds:
            hold.release.set()  # the puts reach the queue now, which does not exist
        producer.join(60)
        # A missing queue may come back: transient.
        assert submitted == [0, 1, 2, 3] and [type(e) for e in outcome] == [TransientError]

        def flush() -> None:
            try:
                sink.flush()  # type: ignore[attr-defined]
            except BaseException as exc:
                outcome.append(exc)

        flushing = threading.Thread(target=flush, daemon=True)
        flushing.start()
        flushing.join(60)
        assert not flushing.is_alive() and [type(e) for e in outcome] == [TransientError] * 2
        sink.close()
