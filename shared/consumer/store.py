"""Applying messages to PostgreSQL: staging with COPY, drop states, and the one-transaction publish.

Rules (docs/consumer.md):

* a rows message is staged once per ``(drop, seq)`` (the staging primary key); a copy of a staged or
  published message is a duplicate and changes nothing;
* a ``complete`` message records ``messages`` and ``rows``; the drop is published when every seq from
  0 to ``messages - 1`` is staged, in one transaction that upserts its rows into the dataset's table
  (a row of a drop whose window ends later is never overwritten by an older drop) and removes its
  staging rows;
* a ``failed`` message discards the drop's staging rows; any later message of that drop reopens it
  (a reprocess starts from scratch);
* a message that cannot be used goes to the ``poison`` table.

Every function here runs inside the caller's transaction unless it says otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from .contract import Complete, Failed, Parsed, Poison, Rows
from .schema import SCHEMA, TypedColumn, published_table, typed_columns

log = logging.getLogger("viva_relay.consumer")

S = SCHEMA
#: Escapes of PostgreSQL's COPY text format (backslash first).
_COPY_ESCAPES = ((b"\\", b"\\\\"), (b"\t", b"\\t"), (b"\n", b"\\n"), (b"\r", b"\\r"))


@dataclass
class Applied:
    """What applying a batch of messages did."""

    staged: int = 0
    rows_staged: int = 0
    duplicates: int = 0
    poisoned: int = 0
    controls: int = 0
    drops: set[str] = field(default_factory=set)

    def add(self, other: Applied) -> None:
        """Add another batch's counts to these."""
        self.staged += other.staged
        self.rows_staged += other.rows_staged
        self.duplicates += other.duplicates
        self.poisoned += other.poisoned
        self.controls += other.controls
        self.drops |= other.drops


@dataclass(frozen=True)
class Published:
    """The outcome of one publish attempt: ``published``, ``waiting`` (seqs missing) or ``failed``."""

    drop: str
    status: str
    rows: int = 0
    missing: int = 0
    reason: str = ""


def _copy_field(value: bytes) -> bytes:
    for raw, escaped in _COPY_ESCAPES:
        if raw in value:
            value = value.replace(raw, escaped)
    return value


def poison(conn: psycopg.Connection, item: Poison) -> None:
    """Record an unusable message (reason and raw text)."""
    conn.execute(
        f"INSERT INTO {S}.poison (reason, drop_id, seq, raw) VALUES (%s, %s, %s, %s)",
        (item.reason, item.drop, item.seq, item.raw.replace("\x00", "")),
    )
    log.warning("poison message (drop %s seq %s): %s", item.drop, item.seq, item.reason)


def _ensure_drops(conn: psycopg.Connection, items: Sequence[Rows | Complete | Failed]) -> None:
    firsts = {m.drop: m for m in items}
    with conn.cursor() as cur:
        cur.executemany(
            f"INSERT INTO {S}.drops (drop_id, tenant, table_name) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            [(m.drop, m.tenant, m.table) for m in firsts.values()],
        )


def _lock_drops(
    conn: psycopg.Connection, drops: Iterable[str], mode: str
) -> dict[str, tuple[str, int | None, str, str]]:
    """Lock the drops' rows (``SHARE`` while staging, ``UPDATE`` to change state) in a fixed order."""
    rows = conn.execute(
        f"SELECT drop_id, status, messages, tenant, table_name FROM {S}.drops"
        f" WHERE drop_id = ANY(%s) ORDER BY drop_id FOR {mode}",
        (sorted(drops),),
    ).fetchall()
    return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}


def _reopen_failed(conn: psycopg.Connection, drops: Iterable[str], status: str) -> None:
    """A message of a failed drop starts a reprocess: forget the old attempt's seqs and counts."""
    reopened = [
        r[0]
        for r in conn.execute(
            f"UPDATE {S}.drops SET status = %s, attempt = attempt + 1, messages = NULL, rows = NULL,"
            " completed_at = NULL WHERE drop_id = ANY(%s) AND status = 'failed' RETURNING drop_id",
            (status, sorted(drops)),
        )
    ]
    if reopened:
        conn.execute(f"DELETE FROM {S}.staging WHERE drop_id = ANY(%s)", (reopened,))


def _mismatch(item: Rows | Complete | Failed, tenant: str, table: str) -> Poison | None:
    if (item.tenant, item.table) != (tenant, table):
        return Poison(
            f"drop {item.drop} belongs to tenant {tenant} table {table}, not {item.tenant} {item.table}",
            item.raw,
            item.drop,
            getattr(item, "seq", None),
        )
    return None


def stage_rows(conn: psycopg.Connection, items: Sequence[Rows]) -> Applied:
    """Stage rows messages with one COPY; duplicates and messages of published drops are skipped."""
    done = Applied()
    if not items:
        return done
    _ensure_drops(conn, items)
    drops = {m.drop for m in items}
    done.drops |= drops
    _reopen_failed(conn, drops, "receiving")
    state = _lock_drops(conn, drops, "SHARE")
    staged = {
        (r[0], r[1])
        for r in conn.execute(
            f"SELECT drop_id, seq FROM {S}.staging"
            " WHERE (drop_id, seq) IN (SELECT * FROM unnest(%s::text[], %s::int[]))",
            ([m.drop for m in items], [m.seq for m in items]),
        )
    }
    fresh: dict[tuple[str, int], Rows] = {}
    for m in items:
        status, messages, tenant, table = state[m.drop]
        bad = _mismatch(m, tenant, table)
        if bad is not None:
            poison(conn, bad)
            done.poisoned += 1
        elif status == "published" or (m.drop, m.seq) in staged or (m.drop, m.seq) in fresh:
            done.duplicates += 1
        elif messages is not None and m.seq >= messages:
            poison(conn, Poison(f"seq {m.seq} is beyond the drop's {messages} messages", m.raw, m.drop, m.seq))
            done.poisoned += 1
        else:
            fresh[(m.drop, m.seq)] = m
    if fresh:
        columns = "drop_id, seq, first_row, row_count, sample, message"
        with conn.cursor().copy(f"COPY {S}.staging ({columns}) FROM STDIN") as copy:
            for m in fresh.values():
                copy.write(
                    b"%s\t%d\t%d\t%d\t%s\t%s\n"
                    % (
                        _copy_field(m.drop.encode()),
                        m.seq,
                        m.first_row,
                        m.row_count,
                        _copy_field(m.sample),
                        _copy_field(m.body),
                    )
                )
    done.staged += len(fresh)
    done.rows_staged += sum(m.row_count for m in fresh.values())
    return done


def apply_complete(conn: psycopg.Connection, item: Complete) -> Applied:
    """Record a drop's ``complete`` message (its seqs beyond ``messages`` are moved to poison)."""
    done = Applied(controls=1, drops={item.drop})
    _ensure_drops(conn, [item])
    _reopen_failed(conn, [item.drop], "receiving")
    status, _, tenant, table = _lock_drops(conn, [item.drop], "UPDATE")[item.drop]
    bad = _mismatch(item, tenant, table)
    if bad is not None:
        poison(conn, bad)
        done.poisoned += 1
        return done
    if status in ("published", "complete"):
        done.duplicates += 1
        return done
    conn.execute(
        f"UPDATE {S}.drops SET status = 'complete', messages = %s, rows = %s, run_id = %s, extraction_id = %s,"
        " request_start = %s, request_end = %s, completed_at = now(), reason = NULL WHERE drop_id = %s",
        (
            item.messages,
            item.rows,
            item.run_id,
            item.extraction_id,
            item.request_start,
            item.request_end,
            item.drop,
        ),
    )
    beyond = conn.execute(
        f"WITH moved AS (DELETE FROM {S}.staging WHERE drop_id = %s AND seq >= %s RETURNING drop_id, seq, message)"
        f" INSERT INTO {S}.poison (reason, drop_id, seq, raw)"
        " SELECT 'seq ' || seq || ' is beyond the drop''s ' || %s || ' messages', drop_id, seq, message"
        " FROM moved",
        (item.drop, item.messages, item.messages),
    ).rowcount
    done.poisoned += max(0, beyond)
    return done


def apply_failed(conn: psycopg.Connection, item: Failed) -> Applied:
    """Discard a drop's staged rows on its ``failed`` message (a published drop is left as it is)."""
    done = Applied(controls=1, drops={item.drop})
    _ensure_drops(conn, [item])
    status, _, _, _ = _lock_drops(conn, [item.drop], "UPDATE")[item.drop]
    if status == "published":
        log.warning("drop %s: failed message after it was published; ignored", item.drop)
        done.duplicates += 1
        return done
    conn.execute(f"DELETE FROM {S}.staging WHERE drop_id = %s", (item.drop,))
    conn.execute(
        f"UPDATE {S}.drops SET status = 'failed', reason = %s, messages = NULL, rows = NULL, completed_at = NULL"
        " WHERE drop_id = %s",
        (item.reason[:2000], item.drop),
    )
    return done


def apply_messages(conn: psycopg.Connection, items: Sequence[Parsed]) -> Applied:
    """Apply messages in their order: runs of rows messages are staged with one COPY each."""
    done = Applied()
    run: list[Rows] = []
    for item in items:
        if isinstance(item, Rows):
            run.append(item)
            continue
        done.add(stage_rows(conn, run))
        run = []
        if isinstance(item, Poison):
            poison(conn, item)
            done.poisoned += 1
        elif isinstance(item, Complete):
            done.add(apply_complete(conn, item))
        else:
            done.add(apply_failed(conn, item))
    done.add(stage_rows(conn, run))
    return done


def ready_drops(conn: psycopg.Connection, among: Iterable[str] | None = None) -> list[str]:
    """Drops whose ``complete`` message arrived and that are not published yet."""
    if among is None:
        rows = conn.execute(f"SELECT drop_id FROM {S}.drops WHERE status = 'complete' ORDER BY completed_at").fetchall()
    else:
        rows = conn.execute(
            f"SELECT drop_id FROM {S}.drops WHERE status = 'complete' AND drop_id = ANY(%s) ORDER BY completed_at",
            (sorted(among),),
        ).fetchall()
    return [r[0] for r in rows]


def publish(conn: psycopg.Connection, drop_id: str) -> Published:
    """Publish one drop in its own transaction if it is complete and every seq is staged."""
    try:
        with conn.transaction():
            return _publish(conn, drop_id)
    except (psycopg.DataError, psycopg.IntegrityError) as exc:
        # A value the published layout cannot hold (e.g. a MetricDate that is not a date): the drop
        # fails with the reason; its staged rows are kept for inspection until a reprocess.
        reason = f"publish: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        with conn.transaction():
            conn.execute(f"UPDATE {S}.drops SET status = 'failed', reason = %s WHERE drop_id = %s", (reason, drop_id))
        log.error("drop %s failed to publish: %s", drop_id, reason)
        return Published(drop_id, "failed", reason=reason)


def _publish(conn: psycopg.Connection, drop_id: str) -> Published:
    row = conn.execute(
        f"SELECT status, messages, rows, tenant, table_name, coalesce(request_end, completed_at)"
        f" FROM {S}.drops WHERE drop_id = %s FOR UPDATE",
        (drop_id,),
    ).fetchone()
    if row is None or row[0] != "complete":
        return Published(drop_id, row[0] if row else "unknown")
    _, messages, rows, tenant, table_name, drop_end = row
    counted = conn.execute(
        f"SELECT count(*), coalesce(sum(row_count), 0) FROM {S}.staging WHERE drop_id = %s AND seq < %s",
        (drop_id, messages),
    ).fetchone()
    assert counted is not None
    have, staged_rows = int(counted[0]), int(counted[1])
    if have < messages:
        return Published(drop_id, "waiting", missing=messages - have)
    if staged_rows != rows:
        reason = f"the complete message says {rows} rows but its {messages} messages hold {staged_rows}"
        conn.execute(f"DELETE FROM {S}.staging WHERE drop_id = %s", (drop_id,))
        conn.execute(f"UPDATE {S}.drops SET status = 'failed', reason = %s WHERE drop_id = %s", (reason, drop_id))
        return Published(drop_id, "failed", reason=reason)
    published = published_table(conn, table_name)
    columns = typed_columns(conn, table_name, published, drop_id)
    params = {"drop": drop_id, "tenant": tenant, "end": drop_end}
    try:
        # Fast path: a drop holds each (person, MetricDate) once, so no sort is needed.
        with conn.transaction():
            upserted = conn.execute(_upsert_sql(published, columns, dedupe=False), params).rowcount
    except psycopg.errors.CardinalityViolation:
        # The drop repeats a key: its last row wins (sorting the drop's rows costs time, so only now).
        upserted = conn.execute(_upsert_sql(published, columns, dedupe=True), params).rowcount
    conn.execute(f"DELETE FROM {S}.staging WHERE drop_id = %s", (drop_id,))
    conn.execute(f"UPDATE {S}.drops SET status = 'published', published_at = now() WHERE drop_id = %s", (drop_id,))
    log.info("drop %s published: %d rows into %s.%s", drop_id, rows, S, published)
    return Published(drop_id, "published", rows=max(0, upserted))


def _upsert_sql(published: str, typed: Sequence[TypedColumn], *, dedupe: bool) -> sql.Composed:
    """INSERT the drop's rows and supersede rows of older drops; with ``dedupe`` the last of equal keys wins."""
    r = sql.SQL("e.r")
    names = sql.SQL("").join(sql.SQL(", ") + sql.Identifier(c.column) for c in typed)
    values = sql.SQL("").join(sql.SQL(", ") + c.expression(r) for c in typed)
    updates = sql.SQL("").join(sql.SQL(", {c} = EXCLUDED.{c}").format(c=sql.Identifier(c.column)) for c in typed)
    table = sql.Identifier(S, published)
    return sql.SQL(
        "INSERT INTO {table} AS p (tenant, person_id, metric_date, drop_id, drop_end, data{names})"
        " SELECT {distinct}"
        " %(tenant)s, coalesce(e.r ->> 'PersonId', '') AS person_id,"
        " left(e.r ->> 'MetricDate', 10)::date AS metric_date,"
        " %(drop)s, %(end)s, e.r{values}"
        " FROM {staging} s CROSS JOIN LATERAL jsonb_array_elements(s.message::jsonb -> 'rows')"
        " WITH ORDINALITY AS e(r, i)"
        " WHERE s.drop_id = %(drop)s"
        "{order}"
        " ON CONFLICT (tenant, person_id, metric_date) DO UPDATE SET drop_id = EXCLUDED.drop_id,"
        " drop_end = EXCLUDED.drop_end, published_at = now(), data = EXCLUDED.data{updates}"
        " WHERE p.drop_end <= EXCLUDED.drop_end"
    ).format(
        table=table,
        names=names,
        values=values,
        updates=updates,
        staging=sql.Identifier(S, "staging"),
        distinct=sql.SQL("DISTINCT ON (person_id, metric_date)" if dedupe else ""),
        order=sql.SQL(" ORDER BY person_id, metric_date, s.first_row + e.i DESC" if dedupe else ""),
    )
