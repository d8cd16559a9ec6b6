"""Fault tests of the reference consumer, against Azurite and a real PostgreSQL.

Each case reports ``rows expected``, ``published``, ``duplicates`` and ``lost`` in the run's summary
(``fault injection`` section): published rows must equal the rows expected, with 0 duplicates and 0 lost.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.config import ConsumerSettings
from shared.consumer import Consumer, DrainReport, drain
from tests.conftest import Relay
from tests.consumerkit import PackedDrop, audit, drop_status, person_rows, put, until_every_message_is_visible

ROOT = Path(__file__).resolve().parent.parent
VISIBILITY = 2  # seconds a received message stays hidden: short, so a killed run's messages return fast


def consumer_env(relay: Relay, url: str) -> dict[str, str]:
    return relay.env | {
        "CONSUMER_DATABASE_URL": url,
        "CONSUMER_BATCH_MESSAGES": "8",
        "CONSUMER_VISIBILITY_TIMEOUT_SECONDS": str(VISIBILITY),
    }


def consume(relay: Relay, url: str, *, migrate: bool = True) -> DrainReport:
    """One ``--once`` run in this process."""
    consumer = Consumer(ConsumerSettings.from_env(consumer_env(relay, url)))
    try:
        if migrate:
            consumer.migrate()
        return drain(consumer, relay.rt.queue, once=True)
    finally:
        consumer.close()


def kill_at(relay: Relay, url: str, point: str) -> None:
    """Run the consumer as a real process and SIGKILL it once it reaches ``point``."""
    env = {**os.environ, **consumer_env(relay, url), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "consumer_fault_worker.py"), point],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    try:
        for line in proc.stdout:
            if line.strip() == f"AT {point}":
                os.kill(proc.pid, signal.SIGKILL)
                break
            assert time.monotonic() < deadline
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    until_every_message_is_visible(relay.rt.queue, within=VISIBILITY + 60)  # the killed run's messages return


@pytest.mark.slow
@pytest.mark.parametrize("point", ["mid-copy", "before-publish", "during-publish"])
def test_sigkill_then_run_again(relay: Relay, consumer_db: str, point: str) -> None:
    consume(relay, consumer_db)  # migrations applied; nothing to read yet
    drop = PackedDrop(person_rows(40, [0, 1, 2], "a"), tenant=relay.new_tenant())
    assert len(drop.messages) > 8  # more than one batch
    put(relay.rt.queue, drop.all())
    kill_at(relay, consumer_db, point)
    assert drop_status(consumer_db, drop.drop) != "published"
    consume(relay, consumer_db)
    assert drop_status(consumer_db, drop.drop) == "published"
    audit(consumer_db, drop.rows, tenant=drop.tenant, case=f"sigkill {point}")


def test_duplicate_messages(relay: Relay, consumer_db: str) -> None:
    drop = PackedDrop(person_rows(30, [0, 1], "a"))
    put(relay.rt.queue, drop.messages + drop.messages[:5] + [drop.complete, drop.complete, drop.messages[-1]])
    report = consume(relay, consumer_db)
    assert report.applied.duplicates == 7  # 5 rows messages again, the complete again, the last one again
    audit(consumer_db, drop.rows, tenant=drop.tenant)


def test_out_of_order_arrival(relay: Relay, consumer_db: str) -> None:
    drop = PackedDrop(person_rows(30, [0, 1], "a"))
    shuffled = drop.all()
    random.Random(7).shuffle(shuffled)
    put(relay.rt.queue, shuffled)
    consume(relay, consumer_db)
    audit(consumer_db, drop.rows, tenant=drop.tenant)


def test_two_drops_interleaved(relay: Relay, consumer_db: str) -> None:
    first = PackedDrop(person_rows(20, [0, 1], "a", seed="x"))
    second = PackedDrop(person_rows(25, [0, 1], "b", seed="y"))
    a, b = first.all(), second.all()
    mixed = [m for pair in zip(a, b, strict=False) for m in pair] + a[len(b) :] + b[len(a) :]
    put(relay.rt.queue, mixed)
    consume(relay, consumer_db)
    audit(consumer_db, first.rows, tenant=first.tenant, case="interleaved first")
    audit(consumer_db, second.rows, tenant=second.tenant, case="interleaved second")


def test_failed_then_reprocessed(relay: Relay, consumer_db: str) -> None:
    drop = PackedDrop(person_rows(30, [0, 1], "a"))
    put(relay.rt.queue, [*drop.messages[:4], drop.failed])
    consume(relay, consumer_db)
    assert drop_status(consumer_db, drop.drop) == "failed"
    audit(consumer_db, [], tenant=drop.tenant, case="failed (nothing visible)")
    put(relay.rt.queue, drop.all())  # the operator's reprocess sends the whole drop again
    consume(relay, consumer_db)
    assert drop_status(consumer_db, drop.drop) == "published"
    audit(consumer_db, drop.rows, tenant=drop.tenant, case="failed then reprocessed")


@pytest.mark.parametrize("order", ["older first", "newer first"])
def test_two_overlapping_weekly_drops_of_one_tenant(relay: Relay, consumer_db: str, order: str) -> None:
    tenant = relay.new_tenant()
    older = PackedDrop(person_rows(20, [0, 1], "older"), tenant=tenant, request_end="2026-11-16T00:00:00+00:00")
    newer = PackedDrop(person_rows(20, [1, 2], "newer"), tenant=tenant, request_end="2026-11-23T00:00:00+00:00")
    drops = [older, newer] if order == "older first" else [newer, older]
    for drop in drops:
        put(relay.rt.queue, drop.all())
        consume(relay, consumer_db)
    # Week 0 only the older drop covers; weeks 1 and 2 come from the newer drop, whatever the order.
    expected = person_rows(20, [0], "older") + person_rows(20, [1, 2], "newer")
    audit(consumer_db, expected, tenant=tenant, case=f"overlapping weekly drops, {order}")
