"""The consumer's database layout: migrations from ``migrations/*.sql`` and the per-dataset tables.

Migrations run in one transaction under an advisory lock, so several consumers starting at once apply
each file exactly once. A dataset's published table is created on its first publish; a typed column
is added the first time a drop carries a JSON number or boolean under that key.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import psycopg
from psycopg import sql

SCHEMA = "viva_relay"
_MIGRATION_LOCK = 0x56495641  # any constant shared by every consumer ("VIVA")
_IDENTIFIER_BYTES = 63  # PostgreSQL truncates longer names
#: Names a published table must not take (the consumer's own tables).
_RESERVED_TABLES = frozenset({"drops", "staging", "datasets", "dataset_columns", "poison", "schema_migrations"})
#: Columns every published table has; a typed column never takes one of these names.
BASE_COLUMNS = ("tenant", "person_id", "metric_date", "drop_id", "drop_end", "published_at", "data")
_SQL_TYPES = {"number": "double precision", "boolean": "boolean"}


def migration_files() -> list[tuple[str, str]]:
    """``(version, sql)`` of every migration shipped with the package, in order."""
    folder = resources.files("shared.consumer") / "migrations"
    files = sorted((f.name, f) for f in folder.iterdir() if f.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), f.read_text(encoding="utf-8")) for name, f in files]


def migrate(conn: psycopg.Connection) -> list[str]:
    """Apply the migrations not applied yet; returns their versions (empty when up to date)."""
    applied_now: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.schema_migrations"
                " (version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(sql.Identifier(SCHEMA))
        )
        done = {row[0] for row in conn.execute(f"SELECT version FROM {SCHEMA}.schema_migrations")}
        for version, text in migration_files():
            if version in done:
                continue
            conn.execute(text.encode("utf-8"))
            conn.execute(f"INSERT INTO {SCHEMA}.schema_migrations (version) VALUES (%s)", (version,))
            applied_now.append(version)
    return applied_now


def pending_migrations(conn: psycopg.Connection) -> list[str]:
    """Versions not applied yet (all of them on an empty database)."""
    exists = conn.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.schema_migrations",)).fetchone()
    done: set[str] = set()
    if exists and exists[0] is not None:
        done = {row[0] for row in conn.execute(f"SELECT version FROM {SCHEMA}.schema_migrations")}
    return [version for version, _ in migration_files() if version not in done]


def identifier(name: str, taken: set[str] | frozenset[str] = frozenset()) -> str:
    """A lower-case ``[a-z0-9_]`` identifier for ``name``; a short hash keeps long or taken names unique."""
    base = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "x"
    if base[0].isdigit():
        base = "c_" + base
    if len(base) <= _IDENTIFIER_BYTES and base not in taken:
        return base
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:8]  # noqa: S324 - a name suffix, not security
    return f"{base[: _IDENTIFIER_BYTES - 9]}_{digest}"


def published_table(conn: psycopg.Connection, table_name: str) -> str:
    """The published table of dataset ``table_name``, created (and registered) on first use."""
    row = conn.execute(f"SELECT published_table FROM {SCHEMA}.datasets WHERE table_name = %s", (table_name,)).fetchone()
    if row is not None:
        return str(row[0])
    taken = {r[0] for r in conn.execute(f"SELECT published_table FROM {SCHEMA}.datasets")} | _RESERVED_TABLES
    name = identifier(table_name, taken)
    table = sql.Identifier(SCHEMA, name)
    # One row per (tenant, person, week); NULLS NOT DISTINCT so a dataset without MetricDate still has one
    # row per person.
    conn.execute(
        sql.SQL(
            "CREATE TABLE {table} ("
            " tenant text NOT NULL, person_id text NOT NULL, metric_date date,"
            " drop_id text NOT NULL, drop_end timestamptz NOT NULL,"
            " published_at timestamptz NOT NULL DEFAULT now(), data jsonb NOT NULL)"
        ).format(table=table)
    )
    conn.execute(
        sql.SQL("CREATE UNIQUE INDEX {index} ON {table} (tenant, person_id, metric_date) NULLS NOT DISTINCT").format(
            index=sql.Identifier(f"{name[:55]}_key"), table=table
        )
    )
    conn.execute(f"INSERT INTO {SCHEMA}.datasets (table_name, published_table) VALUES (%s, %s)", (table_name, name))
    return name


@dataclass(frozen=True)
class TypedColumn:
    """A JSON key of a dataset that is also kept in its own typed column."""

    json_key: str
    column: str
    sql_type: str

    def expression(self, row: sql.Composable) -> sql.Composable:
        """The SQL that reads this column's value from a JSONB row (NULL when the value has another type)."""
        json_type = "number" if self.sql_type == "double precision" else "boolean"
        return sql.SQL("CASE WHEN jsonb_typeof({row} -> {key}) = {jt} THEN ({row} ->> {key})::{st} END").format(
            row=row, key=sql.Literal(self.json_key), jt=sql.Literal(json_type), st=sql.SQL(self.sql_type)
        )


def typed_columns(conn: psycopg.Connection, table_name: str, published: str, drop_id: str) -> list[TypedColumn]:
    """The dataset's typed columns, adding one for each key this drop carries as a JSON number or boolean.

    The first row of each staged message is sampled: a key whose value is a number or boolean there gets
    a column (``double precision`` or ``boolean``). With the relay's ``typed`` transform off every value is
    a string and the dataset has no typed column.
    """
    known = {
        r[0]: TypedColumn(r[0], r[1], r[2])
        for r in conn.execute(
            f"SELECT json_key, column_name, sql_type FROM {SCHEMA}.dataset_columns WHERE table_name = %s",
            (table_name,),
        )
    }
    seen = conn.execute(
        f"SELECT DISTINCT j.key, jsonb_typeof(j.value) FROM {SCHEMA}.staging s,"
        " jsonb_each(s.sample) j"
        " WHERE s.drop_id = %s AND jsonb_typeof(j.value) IN ('number', 'boolean') ORDER BY 1",
        (drop_id,),
    ).fetchall()
    taken = {c.column for c in known.values()} | set(BASE_COLUMNS)
    for key, json_type in seen:
        if key in known or key in ("PersonId", "MetricDate"):
            continue
        column = TypedColumn(key, identifier(key, taken), _SQL_TYPES[json_type])
        conn.execute(
            sql.SQL("ALTER TABLE {table} ADD COLUMN {column} {type}").format(
                table=sql.Identifier(SCHEMA, published),
                column=sql.Identifier(column.column),
                type=sql.SQL(column.sql_type),
            )
        )
        conn.execute(
            f"INSERT INTO {SCHEMA}.dataset_columns (table_name, json_key, column_name, sql_type)"
            " VALUES (%s, %s, %s, %s)",
            (table_name, column.json_key, column.column, column.sql_type),
        )
        known[key] = column
        taken.add(column.column)
    return sorted(known.values(), key=lambda c: c.column)
