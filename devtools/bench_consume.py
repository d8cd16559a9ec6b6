"""The bench's ``consume`` variant: a drop's messages from the queue into published PostgreSQL rows.

The drop is first delivered into a real Azurite queue in the shipped encoding (not timed). Then, on
one throw-away PostgreSQL server, two things are timed in the same run:

* ``copy``: a plain ``COPY`` of the same rows (one JSONB value per row) into a table: the floor of
  getting those rows into this server at all;
* ``consume``: the reference consumer draining the queue until the drop is published (receive,
  decode, staging COPY, delete, publish).

``consume_ratio_to_copy = copy seconds / consume seconds`` (1.0 would mean the consumer costs
nothing beyond the COPY). The report also splits the consumer's wall time into its phases.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Callable
from typing import Any

from devtools.azurite import Azurite
from devtools.postgres import LocalPostgres

PERSON_REPORT = "VivaInsightsDataset_PersonReport_v1"
PUBLISHED = "viva_relay.vivainsightsdataset_personreport_v1"


def _timed(phases: dict[str, float], name: str, call: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - started

    return wrapper


def plain_copy(url: str, rows: bytes) -> float:
    """COPY newline-separated JSON rows into a fresh table, one JSONB value each; returns seconds."""
    import psycopg

    escaped = rows.replace(b"\\", b"\\\\").replace(b"\t", b"\\t").replace(b"\r", b"\\r")
    table = f"copy_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (data jsonb NOT NULL)")
        started = time.perf_counter()
        with conn.transaction(), conn.cursor().copy(f"COPY {table} (data) FROM STDIN") as copy:
            view = memoryview(escaped)
            for offset in range(0, len(escaped), 1 << 20):
                copy.write(view[offset : offset + (1 << 20)])
        seconds = time.perf_counter() - started
        conn.execute(f"DROP TABLE {table}")
    return seconds


def measure(stream: Callable[[Any], tuple[float, int]], tenant: str, encoding: str, concurrency: int) -> dict[str, Any]:
    """Deliver with ``stream(sink)`` into Azurite, then time the plain COPY and the consumer."""
    from azure.storage.queue import QueueClient

    from shared.config import ConsumerSettings
    from shared.consumer import Consumer, drain
    from shared.messages import Envelope
    from shared.sinks import QueueSink, StreamSink

    collected = io.BytesIO()
    _, rows = stream(StreamSink(collected))
    drop_id = uuid.uuid4().hex
    with Azurite() as azurite, LocalPostgres() as postgres:
        queue = QueueClient.from_connection_string(azurite.connection_string, f"bench-{drop_id[:8]}")
        queue.create_queue()
        sink = QueueSink(queue, Envelope(tenant, drop_id, PERSON_REPORT), encoding, concurrency=concurrency)
        try:
            stream(sink)  # rows messages, then the complete message
        finally:
            sink.close()
        messages = sink.messages_sent
        copy_seconds = min(plain_copy(postgres.url, collected.getvalue()) for _ in range(2))

        consumer = Consumer(ConsumerSettings(database_url=postgres.url))
        consumer.migrate()
        phases: dict[str, float] = {}
        consumer.apply_parsed = _timed(phases, "staging transaction (COPY)", consumer.apply_parsed)  # type: ignore[method-assign]
        consumer.publish_ready = _timed(phases, "publish", consumer.publish_ready)  # type: ignore[method-assign]
        started = time.perf_counter()
        report = drain(consumer, queue, once=True)
        consume_seconds = time.perf_counter() - started
        with consumer.connection().cursor() as cur:
            published = cur.execute(f"SELECT count(*) FROM {PUBLISHED}").fetchone()
        consumer.close()
    # Receiving and decoding run on a second thread during the database work; what shows is what it
    # did not hide.
    phases["waiting for the next batch (receive + decode), other"] = consume_seconds - sum(phases.values())
    return {
        "rows": rows,
        "messages": messages,
        "published_rows": int(published[0]) if published else 0,
        "duplicates": report.applied.duplicates,
        "copy_seconds": copy_seconds,
        "consume_seconds": consume_seconds,
        "ratio": copy_seconds / consume_seconds if consume_seconds else 0.0,
        "phases": phases,
    }


def report(label: str, plaintext_bytes: int, result: dict[str, Any]) -> str:
    """The consume section of the bench report."""
    rows = result["rows"]
    lines = [
        f"consume into PostgreSQL, drop {label}: {rows:,} rows, {plaintext_bytes / 1e6:.0f} MB,"
        f" {result['messages']} messages",
        f"  plain COPY of the rows : {result['copy_seconds']:.2f} s ({rows / result['copy_seconds']:,.0f} rows/s)",
        f"  consume (queue->table) : {result['consume_seconds']:.2f} s"
        f" ({rows / result['consume_seconds']:,.0f} rows/s),"
        f" {result['published_rows']:,} rows published, {result['duplicates']} duplicates",
        f"  consume_ratio_to_copy  : {result['ratio']:.2f}",
        "  where the consumer's time goes:",
    ]
    for name, seconds in sorted(result["phases"].items(), key=lambda kv: -kv[1]):
        lines.append(f"    {name:<54} {seconds:6.2f} s  {seconds / result['consume_seconds']:5.0%}")
    return "\n".join(lines)
