"""Helpers of the consumer tests: pack drops exactly as the relay does, put them on a queue, audit PostgreSQL."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import Counter
from datetime import date, timedelta
from typing import Any

import psycopg
from azure.storage.queue import QueueClient

from shared.messages import Envelope, MessagePacker, failure_message
from tests.conftest import FAULT_REPORTS

PERSON_REPORT = "VivaInsightsDataset_PersonReport_v1"
PUBLISHED = "viva_relay.vivainsightsdataset_personreport_v1"


def person_rows(persons: int, weeks: list[int], tag: str, *, seed: str = "p") -> list[bytes]:
    """Rows keyed by (PersonId, MetricDate); ``tag`` goes into a value so a test can tell drops apart."""
    start = date(2024, 1, 7)
    rows = []
    for p in range(persons):
        person = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{seed}:{p}"))
        for w in weeks:
            day = (start + timedelta(weeks=w)).isoformat()
            row = {
                "PersonId": person,
                "MetricDate": f"{day}T00:00:00Z",
                "Collaboration hours": f"{p + w}.5",
                "Tag": tag,
            }
            rows.append(json.dumps(row, separators=(",", ":")).encode())
    return rows


class PackedDrop:
    """A drop's messages as the relay would send them (same packer, same contract)."""

    def __init__(
        self,
        rows: list[bytes],
        *,
        tenant: str | None = None,
        drop: str | None = None,
        encoding: str = "json",
        limit: int = 1024,
        request_end: str = "2026-11-23T00:00:00+00:00",
    ) -> None:
        self.tenant = tenant or str(uuid.uuid4())
        self.drop = drop or uuid.uuid4().hex
        self.rows = rows
        envelope = Envelope(self.tenant, self.drop, PERSON_REPORT)
        packer = MessagePacker(envelope, encoding, limit=limit)
        self.messages = [m.payload for m in [*packer.add(list(rows)), *packer.finish()]]
        self.complete = packer.complete_message({"run_id": "run-1", "request_end": request_end}).payload
        self.failed = failure_message(envelope, encoding, "integrity", "a data file was cut short")

    def all(self) -> list[str]:
        """Every rows message, then the complete message."""
        return [*self.messages, self.complete]


def put(queue: QueueClient, payloads: list[str]) -> None:
    """Send messages in this order."""
    for payload in payloads:
        queue.send_message(payload)


def until_every_message_is_visible(queue: QueueClient, *, within: float) -> None:
    """Wait until no message of the queue is hidden (those a stopped run received return after their
    visibility timeout); a fixed sleep would wait the whole timeout from the moment it starts."""
    deadline = time.monotonic() + within
    while True:
        total = queue.get_queue_properties().approximate_message_count or 0  # hidden ones included
        assert total <= 32, total  # one peek sees them all
        if len(queue.peek_messages(max_messages=32)) == total:
            return
        assert time.monotonic() < deadline, f"{total} messages, some still hidden after {within} s"
        time.sleep(0.1)


def published(url: str, tenant: str | None = None) -> list[dict[str, Any]]:
    """The published rows' JSON (of one tenant, when given)."""
    with psycopg.connect(url) as conn:
        exists = conn.execute("SELECT to_regclass(%s)", (PUBLISHED,)).fetchone()
        if exists is None or exists[0] is None:
            return []  # created on the dataset's first publish
        if tenant is None:
            rows = conn.execute(f"SELECT data FROM {PUBLISHED}").fetchall()
        else:
            rows = conn.execute(f"SELECT data FROM {PUBLISHED} WHERE tenant = %s", (tenant,)).fetchall()
    return [r[0] for r in rows]


def drop_status(url: str, drop: str) -> str | None:
    """The drop's status in ``viva_relay.drops``."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT status FROM viva_relay.drops WHERE drop_id = %s", (drop,)).fetchone()
    return None if row is None else str(row[0])


def audit(url: str, expected: list[bytes], *, tenant: str | None = None, case: str = "") -> dict[str, int]:
    """Compare the published rows with the rows expected; report and assert match, 0 duplicates, 0 lost."""
    want = Counter(json.dumps(json.loads(r), sort_keys=True) for r in expected)
    have = Counter(json.dumps(r, sort_keys=True) for r in published(url, tenant))
    report = {
        "expected": sum(want.values()),
        "published": sum(have.values()),
        "duplicates": sum(c - 1 for c in have.values() if c > 1),
        "lost": sum((want - have).values()),
        "unexpected": sum((have - want).values()),
    }
    name = case or os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0].split("::")[-1]
    FAULT_REPORTS.append(
        f"consumer {name}: rows expected={report['expected']} published={report['published']}"
        f" match={report['expected'] == report['published'] and not report['unexpected']}"
        f" duplicates={report['duplicates']} lost={report['lost']}"
    )
    assert report["lost"] == 0
    assert report["duplicates"] == 0
    assert report["unexpected"] == 0
    assert report["published"] == report["expected"]
    return report
