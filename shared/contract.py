"""The data contract: every drop's rows checked against its dataset's column list, as they stream.

A contract is data (``shared/contracts/<TableName>.json``: column names and types, the person and
date columns, known aliases); this module loads it and checks rows against it. The check only
observes: rows pass on unchanged. It runs inside row validation (:class:`CheckingValidator`), so
each row is parsed once.

What is checked for every row: its column count, the date window and duplicate (person, date)
pairs, and whether a column that looked all-null so far is still null. The full check (every key
and every value's type) runs on the first :data:`FULL_CHECK_ROWS` rows, on every row whose column
count differs from the last fully checked one, and on every ``sample_every``-th row after that
(``SCHEMA_CHECK_EVERY``; 1 checks every row). The report says how many rows were fully checked.

A report never holds a row's values: findings carry counts, column names and row positions only.
See docs/contract.md.
"""

from __future__ import annotations

import json
import math
import re
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

import simdjson

from .bytepath import MAX_BLANK_BYTES, RowValidator
from .metadata import DropMetadata

REPORT_VERSION = 1
#: Rows of a drop that are always fully checked (keys and every value's type).
FULL_CHECK_ROWS = 500
#: Row positions given as examples of one finding.
MAX_EXAMPLES = 3
#: The report's JSON stays below this many characters: an Azure Table string property holds 32K
#: UTF-16 characters (64 KiB) and the ``complete`` message must still fit one queue message after
#: Base64. Examples go first, then long column lists are cut; counts never.
REPORT_CHAR_LIMIT = 24_000
TYPES = ("double", "boolean", "datetime", "string")
POLICIES = ("report", "fail")

_TRUE = frozenset({"true", "True", "TRUE", "1"})
_FALSE = frozenset({"false", "False", "FALSE", "0"})
_FOLD_RE = re.compile(r"[\W_]+", re.UNICODE)


def fold(name: str) -> str:
    """A column name without case, punctuation and spaces (what 'likely renamed' compares)."""
    return _FOLD_RE.sub("", name).casefold()


@dataclass(frozen=True)
class Contract:
    """One dataset's expected columns (from ``shared/contracts``)."""

    table: str
    source: str
    columns: dict[str, str]  # name -> type, in the documented order
    person_column: str = ""
    date_column: str = ""
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    identifier_columns: tuple[str, ...] = ()

    def canonical(self, name: str) -> str | None:
        """The contract column ``name`` stands for (itself or through a known alias)."""
        if name in self.columns:
            return name
        for column, aliases in self.aliases.items():
            if name in aliases:
                return column
        return None

    def resolve(self, name: str) -> str | None:
        """The contract column ``name`` stands for: itself, a known alias, or the same name folded."""
        found = self.canonical(name)
        if found is None:
            found = next((c for c in self.columns if fold(c) == fold(name)), None)
        return found

    def type_of(self, name: str) -> str | None:
        """The contract type of a column or of one of its aliases."""
        column = self.canonical(name)
        return self.columns.get(column) if column else None

    def names(self) -> set[str]:
        """Every name the contract knows, aliases included."""
        return set(self.columns) | {a for aliases in self.aliases.values() for a in aliases}


@cache
def known_tables() -> dict[str, Contract]:
    """Every shipped contract by TableName."""
    out: dict[str, Contract] = {}
    for entry in resources.files("shared.contracts").iterdir():
        if not entry.name.endswith(".json"):
            continue
        doc = json.loads(entry.read_text(encoding="utf-8"))
        columns = {c["Name"]: c["Type"] for c in doc["Columns"]}
        bad = sorted({t for t in columns.values() if t not in TYPES})
        if bad:
            raise ValueError(f"contract {entry.name}: unknown types {bad}")
        out[doc["TableName"]] = Contract(
            table=doc["TableName"],
            source=doc.get("Source", ""),
            columns=columns,
            person_column=doc.get("PersonColumn") or "",
            date_column=doc.get("DateFilterColumn") or "",
            aliases={k: tuple(v) for k, v in (doc.get("Aliases") or {}).items()},
            identifier_columns=tuple(doc.get("IdentifierColumns") or ()),
        )
    return out


def contract_for(table: str) -> Contract | None:
    """The contract of ``table`` (exact TableName), or None for a table we ship none for."""
    return known_tables().get(table)


# --- value checks (one per contract type; only types that need a look have one) ---------------


def is_double(value: Any) -> bool:
    """A JSON number or a string holding one (finite; no Python-only forms such as ``1_000``)."""
    kind = type(value)
    if kind is float or kind is int:
        return True
    if kind is not str:
        return False
    try:
        number = float(value)  # C speed; the rare odd forms float() takes are refused below
    except ValueError:
        return False
    return math.isfinite(number) and "_" not in value


def is_boolean(value: Any) -> bool:
    """true/false, 0/1, or their string forms."""
    kind = type(value)
    if kind is bool:
        return True
    if kind is int:
        return value in (0, 1)
    return kind is str and (value in _TRUE or value in _FALSE)


def parse_datetime(value: Any) -> datetime | None:
    """An ISO-8601 date or timestamp as an aware UTC datetime (naive means UTC); None if it is not one."""
    if type(value) is not str:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def is_string(value: Any) -> bool:
    """A JSON string."""
    return type(value) is str


_CHECKERS: dict[str, Callable[[Any], bool]] = {
    "double": is_double,
    "boolean": is_boolean,
    "datetime": lambda v: parse_datetime(v) is not None,
    "string": is_string,
}


# --- ColumnsRequested --------------------------------------------------------------------------


def match_requested(parts: Iterable[str], known: Iterable[str], *, longest: int = 12) -> tuple[list[str], list[str]]:
    """Split ``ColumnsRequested`` into known column names; returns (matched names, unmatched parts).

    The field is comma-separated while names may hold commas ("Small-group meeting, call, and chat
    hours"): at each position the longest run of parts that, joined again, names a known column
    (exactly, or after :func:`fold`) wins. A part that starts no match is reported as unmatched.
    """
    items = [p.strip() for p in parts if p.strip()]
    exact = {k: k for k in known}
    folded: dict[str, str] = {}
    for k in exact:
        folded.setdefault(fold(k), k)
    matched: list[str] = []
    unmatched: list[str] = []
    i = 0
    while i < len(items):
        for j in range(min(len(items), i + longest), i, -1):
            joined = items[i:j]
            name = exact.get(", ".join(joined)) or exact.get(",".join(joined)) or folded.get(fold(",".join(joined)))
            if name:
                matched.append(name)
                i = j
                break
        else:
            unmatched.append(items[i])
            i += 1
    return matched, unmatched


# --- the check ---------------------------------------------------------------------------------


@dataclass
class _ColumnStats:
    rows: int = 0  # fully checked rows that have the column
    nulls: int = 0
    bad_count: int = 0
    bad_rows: list[int] = field(default_factory=list)
    kinds: set[str] = field(default_factory=set)
    late_value: bool = False  # a value seen outside the fully checked rows

    def bad(self, index: int) -> None:
        """Count a value that does not fit the column's type, at row ``index``."""
        self.bad_count += 1
        if len(self.bad_rows) < MAX_EXAMPLES:
            self.bad_rows.append(index)


_KIND = {str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


#: Most slots of the duplicate-pair table (8 bytes each: 8 MiB). The table never grows past this,
#: whatever the drop's size; it is kept at most half full (see :class:`_Pairs`).
PAIR_SLOTS = 1 << 20
_ZEROS = array("q", [0]) * 4096


class _Pairs:
    """The (person, date) pairs seen so far, as 64-bit hashes in an open-addressing table of fixed size.

    A repeat is found as its row arrives. The table is sized once, for the drop's row count, at most
    :data:`PAIR_SLOTS` slots, and is never more than half full: up to ``PAIR_SLOTS // 2`` distinct pairs
    (524,288, about 1.5 GB of the person report) every repeated pair is found. Past that the table is
    thinned instead of grown: it keeps only the pairs whose hash falls in one half of the hash space
    (then a quarter, ...), and only those are remembered from then on, so a repeat of a watched pair is
    still found in any later row. :attr:`share` says which share of pairs was watched; the count is
    then a lower bound (about ``count / share`` in all). The watched half depends on the process's
    string hashing, so two attempts of such a drop may count differently; neither changes a row.
    """

    def __init__(self, expected_rows: int | None = None) -> None:
        max_slots = PAIR_SLOTS
        want = 2 * expected_rows if expected_rows else max_slots
        slots = min(1024, max_slots)
        while slots < want and slots < max_slots:
            slots *= 2
        self.table = array("q", [0]) * slots
        self.mask = slots - 1
        self.limit = slots // 2
        self.held = 0
        self.level = 0  # pairs watched: those whose selector bits (32 and up) are all zero
        self.count = 0
        self.examples: list[int] = []

    @property
    def share(self) -> float:
        """The share of all pairs whose repeats are found (1.0: every one)."""
        return 1.0 / (1 << self.level)

    def add(self, key: int, row: int) -> None:
        """One pair."""
        self.extend([key], [row])

    def extend(self, keys: list[int], rows: list[int]) -> None:
        """A batch of pairs (hashes) at row positions ``rows``."""
        if self.level or self.held + len(keys) >= self.limit or 0 in keys:
            self._extend_watched(keys, rows)
            return
        # The common case, in as few steps a pair as possible: the table cannot fill up in this batch.
        table, mask = self.table, self.mask
        repeats = 0
        for j, key in enumerate(keys):
            i = key & mask
            found = table[i]
            if not found:
                table[i] = key
                continue
            while found and found != key:
                i = (i + 1) & mask
                found = table[i]
            if found:
                repeats += 1
                self._repeat(rows[j])
            else:
                table[i] = key
        self.held += len(keys) - repeats

    def _repeat(self, row: int) -> None:
        self.count += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(row)

    def _extend_watched(self, keys: list[int], rows: list[int]) -> None:
        """:meth:`extend` one pair at a time: a pair 0, a table that may fill up, or a share watched."""
        table, mask, limit, held = self.table, self.mask, self.limit, self.held
        select = (1 << self.level) - 1
        for pair, row in zip(keys, rows, strict=True):
            if select and (pair >> 32) & select:
                continue  # not in the watched share
            key = pair or 1  # 0 marks an empty slot
            i = key & mask
            found = table[i]
            while found and found != key:
                i = (i + 1) & mask
                found = table[i]
            if found:
                self._repeat(row)
            else:
                table[i] = key
                held += 1
                if held >= limit:
                    self.held = held
                    self._thin()
                    held, select = self.held, (1 << self.level) - 1
        self.held = held

    def _thin(self) -> None:
        """Watch half as many pairs: keep those whose next selector bit is zero, and re-insert them."""
        self.level += 1
        select = (1 << self.level) - 1
        table = self.table
        kept = array("q", (k for k in table if k and not (k >> 32) & select))
        for start in range(0, len(table), len(_ZEROS)):
            table[start : start + len(_ZEROS)] = _ZEROS[: len(table) - start]
        mask = self.mask
        for key in kept:
            i = key & mask
            while table[i]:
                i = (i + 1) & mask
            table[i] = key
        self.held = len(kept)

    def duplicates(self) -> tuple[int, list[int]]:
        """How many rows repeat an earlier row's pair, and the first few of them."""
        return self.count, list(self.examples)


class _Layout:
    """One sequence of column names seen in fully checked rows, with its checks grouped by type.

    Values are checked a type at a time at C speed where possible (``float`` over every double
    column of the row); only when that fails is each value of the group looked at on its own.
    """

    def __init__(self, stats: list[_ColumnStats], kinds: list[str | None]) -> None:
        self.stats = stats
        self.rows = 0
        self.doubles = [i for i, k in enumerate(kinds) if k == "double"]
        self.strings = [i for i, k in enumerate(kinds) if k == "string"]
        self.others = [(i, _CHECKERS[k]) for i, k in enumerate(kinds) if k in ("boolean", "datetime")]

    def _slow(self, positions: list[int], values: list[Any], check: Callable[[Any], bool], index: int) -> None:
        for i in positions:
            value = values[i]
            if value is not None and not check(value):
                self.stats[i].bad(index)

    def check(self, values: list[Any], index: int) -> None:
        """Count nulls and values that do not fit their column's type (row ``index``)."""
        if None in values:
            for column, value in zip(self.stats, values, strict=True):
                if value is None:
                    column.nulls += 1
        if self.doubles:
            picked = [values[i] for i in self.doubles]
            try:
                if not math.isfinite(math.fsum(map(float, picked))) or bool in set(map(type, picked)):
                    raise ValueError
            except (ValueError, TypeError, OverflowError):
                self._slow(self.doubles, values, is_double, index)
        if self.strings and set(type(values[i]) for i in self.strings) != {str}:
            self._slow(self.strings, values, is_string, index)
        for i, check in self.others:
            value = values[i]
            if value is not None and not check(value):
                self.stats[i].bad(index)


class ContractCheck:
    """Observes every row of one drop and builds its schema report (never changes a row)."""

    def __init__(self, metadata: DropMetadata, *, policy: str = "report", sample_every: int = 256) -> None:
        self.table = metadata.table_name
        self.contract = contract_for(metadata.table_name)
        self.policy = policy
        self.sample_every = max(1, sample_every)
        self.requested = metadata.columns_requested
        self.window = (metadata.request_start_date, metadata.request_end_date)
        self.rows = 0
        self.fully_checked = 0
        self._columns: dict[str, _ColumnStats] = {}
        self._layouts: dict[tuple[str, ...], _Layout] = {}
        self._last_width = -1
        self._null_candidates: list[str] = []
        c = self.contract
        self._person = c.person_column if c else ""
        self._person_names = (c.person_column, *c.aliases.get(c.person_column, ())) if c else ()
        self._date = c.date_column if c else ""
        self._date_key = ""  # the date and person columns as present in the last fully checked row
        self._person_key = ""
        self._date_counts: Counter[Any] = Counter()
        self._date_first_row: dict[Any, int] = {}
        self._pairs = _Pairs(metadata.rows_expected)
        self.extra_findings: list[dict[str, Any]] = []

    # -- per row ---------------------------------------------------------------------------

    def observe(self, row: Any, line: bytes | None = None) -> None:
        """Look at one row: ``row`` parsed (a simdjson Object, or a dict), ``line`` its bytes.

        ``self.rows`` is its position. Only cheap lookups of present keys touch the simdjson object
        (a lookup of an absent key is slow there); the full check reads the row as a dict.
        """
        index = self.rows
        width = len(row)
        if index < FULL_CHECK_ROWS or width != self._last_width or index % self.sample_every == 0:
            source = self._full_of(row, line, index, width)
        else:
            source = row
            if self._null_candidates:
                self._watch_nulls(row)
        try:
            date = source[self._date_key] if self._date_key else None
            person = source[self._person_key] if self._person_key else None
        except KeyError:  # the same width but other columns: look at the row in full
            source = self._full_of(row, line, index, width)
            date = source.get(self._date_key) if self._date_key else None
            person = source.get(self._person_key) if self._person_key else None
        self._count_one(date, person, index)
        self.rows = index + 1

    def next_full(self, index: int) -> int:
        """The first row position at or after ``index`` fully checked for its position alone."""
        if index < FULL_CHECK_ROWS:
            return index
        every = self.sample_every
        return -(-index // every) * every

    def _count_one(self, date: Any, person: Any, index: int) -> None:
        """Count one row's date (for the window) and (person, date) pair (for duplicates)."""
        if self._date:
            counts = self._date_counts
            try:
                if date not in counts:
                    self._date_first_row[date] = index
                counts[date] += 1
            except TypeError:  # not hashable: an object or array, counted as a bad date
                counts[repr(date)] += 1
        if type(person) is str:
            self._pairs.add(hash((person, date)), index)

    def take(self, dates: list[Any], persons: list[Any], where: list[int]) -> None:
        """Count the dates and (person, date) pairs of rows at positions ``where``, a batch at once.

        The common case (string dates already seen, string ids never seen) runs at C speed; anything
        else goes row by row.
        """
        fast = {type(None), str}.issuperset(map(type, dates)) and set(map(type, persons)) == {str}
        if fast and self._date:
            counts = self._date_counts
            before = len(counts)
            counts.update(dates)
            if len(counts) > before:
                for date, index in zip(dates, where, strict=True):
                    self._date_first_row.setdefault(date, index)
        if fast:
            self._pairs.extend(list(map(hash, zip(persons, dates, strict=True))), where)
            return
        for date, person, index in zip(dates, persons, where, strict=True):
            self._count_one(date, person, index)

    def _full_of(self, row: Any, line: bytes | None, index: int, width: int) -> dict[str, Any]:
        """Fully check the row; returns it as a dict and notes where its person and date are."""
        parsed: dict[str, Any] = row if isinstance(row, dict) else json.loads(line) if line is not None else {}
        self._full(parsed, index)
        self._last_width = width
        self._date_key = self._date if self._date in parsed else ""
        self._person_key = next((n for n in self._person_names if n in parsed), "")
        return parsed

    def _layout(self, keys: tuple[str, ...]) -> _Layout:
        stats = []
        for name in keys:
            column = self._columns.get(name)
            if column is None:
                column = self._columns[name] = _ColumnStats()
            stats.append(column)
        kinds = [self.contract.type_of(n) if self.contract else None for n in keys]
        layout = self._layouts[keys] = _Layout(stats, kinds)
        return layout

    def _full(self, row: dict[str, Any], index: int) -> None:
        self.fully_checked += 1
        keys = tuple(row)
        layout = self._layouts.get(keys)
        new_layout = layout is None
        if layout is None:
            layout = self._layout(keys)
        layout.rows += 1
        values = list(row.values())
        if self.contract is None:
            for column, value in zip(layout.stats, values, strict=True):
                column.kinds.add(_KIND.get(type(value), "object"))
                column.nulls += value is None
        else:
            layout.check(values, index)
        if index + 1 >= FULL_CHECK_ROWS and (new_layout or index + 1 == FULL_CHECK_ROWS or self._null_candidates):
            self._tally()
            self._null_candidates = [n for n, s in self._columns.items() if self._all_null(s)]

    def _tally(self) -> None:
        """Each column's count of fully checked rows, from the layouts' row counts."""
        for column in self._columns.values():
            column.rows = 0
        for layout in self._layouts.values():
            for column in layout.stats:
                column.rows += layout.rows

    def _watch_nulls(self, row: Any) -> None:
        """A column null in every row so far: look at it in every row until a value shows up."""
        for name in self._null_candidates:
            try:
                value = row[name]
            except KeyError:
                continue
            if value is not None:
                self._columns[name].late_value = True
                self._null_candidates = [n for n in self._null_candidates if n != name]

    @staticmethod
    def _all_null(stats: _ColumnStats) -> bool:
        return stats.rows > 0 and stats.nulls == stats.rows and not stats.late_value

    # -- the report ------------------------------------------------------------------------

    def findings(self) -> list[dict[str, Any]]:
        """Every finding, in a stable order."""
        self._tally()
        out: list[dict[str, Any]] = []
        seen = {n: s for n, s in self._columns.items() if s.rows}
        if self.contract is not None:
            out += self._column_findings(self.contract, seen)
        out += self._requested_findings(seen)
        if self.contract is not None:
            out += self._value_findings(self.contract, seen)
        out += self.extra_findings
        return out

    def _column_findings(self, contract: Contract, seen: dict[str, _ColumnStats]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        requested, _ = match_requested(self.requested, contract.names() | set(seen))
        asked = {contract.resolve(n) for n in requested} - {None}
        expected = [c for c in contract.columns if c in asked] if asked else list(contract.columns)
        present = {contract.canonical(n) or n for n in seen}
        unexplained = [n for n in seen if contract.canonical(n) is None]
        by_fold = {fold(n): n for n in unexplained}
        for column in expected:
            if column not in present:
                renamed = by_fold.pop(fold(column), None)
                if renamed is not None:
                    out.append({"check": "renamed", "expected": column, "seen": renamed, "rows": seen[renamed].rows})
                    unexplained.remove(renamed)
                else:
                    out.append({"check": "missing", "column": column, "rows_without": self.fully_checked})
            else:
                for alias in contract.aliases.get(column, ()):
                    if alias in seen and column not in seen:
                        out.append({"check": "renamed", "expected": column, "seen": alias, "rows": seen[alias].rows})
                stats = seen.get(column)
                if stats is not None and stats.rows < self.fully_checked:
                    out.append({"check": "missing", "column": column, "rows_without": self.fully_checked - stats.rows})
        out += [{"check": "unexpected", "column": n, "rows": seen[n].rows} for n in unexplained]
        return out

    def _requested_findings(self, seen: dict[str, _ColumnStats]) -> list[dict[str, Any]]:
        if not self.requested:
            return []
        known = set(seen) | (self.contract.names() if self.contract else set())
        matched, unmatched = match_requested(self.requested, known)
        out: list[dict[str, Any]] = []
        if unmatched:
            out.append({"check": "requested_unmatched", "names": unmatched})
        if matched:
            canon = self.contract.canonical if self.contract else (lambda n: n)
            asked = {canon(n) or n for n in matched}
            extra = [n for n in seen if (canon(n) or n) not in asked]
            if extra:
                out.append({"check": "not_requested", "columns": extra})
        return out

    def _value_findings(self, contract: Contract, seen: dict[str, _ColumnStats]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for name, stats in seen.items():
            kind = contract.type_of(name)
            if kind and stats.bad_count:
                out.append(
                    {
                        "check": "bad_type",
                        "column": name,
                        "type": kind,
                        "count": stats.bad_count,
                        "examples": [{"row": r} for r in stats.bad_rows],
                    }
                )
        out += [{"check": "all_null", "column": n, "rows": s.rows} for n, s in seen.items() if self._all_null(s)]
        if self._date:
            out += self._date_findings()
        duplicates, duplicate_rows = self._pairs.duplicates()
        if duplicates:
            columns = [self._person, self._date] if self._date else [self._person]
            finding: dict[str, Any] = {"check": "duplicates", "columns": columns, "count": duplicates}
            if self._pairs.level:
                finding["share_checked"] = self._pairs.share  # the count is a lower bound (see _Pairs)
            finding["examples"] = [{"row": r} for r in duplicate_rows]
            out.append(finding)
        return out

    def _date_findings(self) -> list[dict[str, Any]]:
        start, end = self.window
        outside = 0
        examples: list[int] = []
        for value, count in self._date_counts.items():
            if value is None:
                continue  # a null or absent date is reported by the column checks
            when = parse_datetime(value)
            if when is None:
                continue  # not a date: a bad_type finding of the date column
            if (start is not None and when < start) or (end is not None and when > end):
                outside += count
                first = self._date_first_row.get(value)
                if first is not None:
                    examples.append(first)
        if not outside:
            return []
        return [
            {
                "check": "out_of_window",
                "column": self._date,
                "count": outside,
                "window": [start.isoformat() if start else None, end.isoformat() if end else None],
                "examples": [{"row": r} for r in sorted(examples)[:MAX_EXAMPLES]],
            }
        ]

    def report(self) -> dict[str, Any]:
        """The drop's schema report (kept under :data:`REPORT_CHAR_LIMIT` characters as JSON)."""
        findings = self.findings()
        doc: dict[str, Any] = {
            "v": REPORT_VERSION,
            "table": self.table,
            "contract": self.contract.table if self.contract else None,
            "policy": self.policy,
            "rows": self.rows,
            "rows_fully_checked": self.fully_checked,
            "drift": bool(findings),
            "findings": findings,
        }
        if self._pairs.level:
            # Past the duplicate table's size only a share of (person, date) pairs is watched.
            doc["duplicates_share_checked"] = self._pairs.share
        if self.contract is None:
            doc["columns_seen"] = [
                {"column": n, "rows": s.rows, "nulls": s.nulls, "kinds": sorted(s.kinds)}
                for n, s in self._columns.items()
            ]
        return fit_report(doc)


def fit_report(doc: dict[str, Any], limit: int = REPORT_CHAR_LIMIT) -> dict[str, Any]:
    """Shrink a report to ``limit`` characters of JSON: drop examples, then cut long lists (never counts)."""
    if len(report_json(doc)) <= limit:
        return doc
    for finding in doc["findings"]:
        if finding.pop("examples", None) is not None:
            finding["examples_dropped"] = True
    doc["truncated"] = True
    lists = [f for f in doc["findings"] for key in ("columns", "names") if isinstance(f.get(key), list)]
    keep = 50
    while len(report_json(doc)) > limit and keep >= 1:
        for finding in lists:
            for key in ("columns", "names"):
                values = finding.get(key)
                if isinstance(values, list) and len(values) > keep:
                    finding[f"{key}_total"] = finding.get(f"{key}_total", len(values))
                    finding[key] = values[:keep]
        if "columns_seen" in doc and len(doc["columns_seen"]) > keep:
            doc["columns_seen_total"] = doc.get("columns_seen_total", len(doc["columns_seen"]))
            doc["columns_seen"] = doc["columns_seen"][:keep]
        keep //= 2
    while len(report_json(doc)) > limit and len(doc["findings"]) > 1:
        doc["findings_total"] = doc.get("findings_total", len(doc["findings"]))
        doc["findings"] = doc["findings"][: len(doc["findings"]) // 2]
    return doc


def report_json(doc: dict[str, Any]) -> str:
    """The report as compact JSON (what the ledger stores)."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


_CONTAINER_TYPES = frozenset((simdjson.Object, simdjson.Array))


def plain_copy(value: Any) -> Any:
    """A simdjson container as plain Python (it must not outlive the parser's next row)."""
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value


def _copy_containers(picked: list[tuple[Any, ...]]) -> bool:
    """Replace nested values of the last picked row by plain copies (they must not outlive the
    parser's next row); False when it held none."""
    last = picked[-1] if picked else ()
    if _CONTAINER_TYPES.isdisjoint(map(type, last)):
        return False
    picked[-1] = tuple(map(plain_copy, last))
    return True


class CheckingValidator(RowValidator):
    """Row validation that also shows each parsed row to a :class:`ContractCheck` (one parse per row)."""

    def __init__(
        self, check: ContractCheck, max_blank_bytes: int = MAX_BLANK_BYTES, stages: Sequence[Any] = ()
    ) -> None:
        super().__init__(max_blank_bytes)
        self.check = check
        # The first row stage may read its columns from this parse (``pick``) and be handed them
        # (``hand_over``), so a transformed row is parsed once, not twice.
        first = stages[0] if stages else None
        self._pick: Callable[[Any], tuple[Any, ...]] | None = getattr(first, "pick", None)
        self._taker = first if self._pick is not None else None
        columns = tuple(getattr(first, "pick_columns", ())) if self._pick is not None else ()
        #: Where the picked tuple holds a column: the date and person are then read from it.
        self._picked_at = {name: i for i, name in enumerate(columns)}

    def _keys(self, pick: bool) -> tuple[str, str, int, int]:
        """The date and person keys of the check now, and their places in a picked row (-1: none)."""
        c = self.check
        date_at = self._picked_at.get(c._date_key, -1) if pick and c._date_key else -1
        person_at = self._picked_at.get(c._person_key, -1) if pick and c._person_key else -1
        if date_at < 0 or person_at < 0:
            date_at = person_at = -1
        return c._date_key, c._person_key, date_at, person_at

    def validate(self, lines: list[bytes]) -> list[bytes]:
        """Validate as :class:`RowValidator` does, observing every row.

        Rows that need no full check only have their date and person read here (from the picked
        columns when the stage keeps them); those are counted a batch at a time
        (:meth:`ContractCheck.take`). The check's state is read into locals once and again only
        after a row it looks at in full.
        """
        if not lines:
            return lines
        parse = self._parser.parse
        object_type = simdjson.Object
        c = self.check
        observe = c.observe
        dates: list[Any] = []
        persons: list[Any] = []
        where: list[int] = []
        start = i = c.rows
        next_full = c.next_full(i)
        width, nulls = c._last_width, c._null_candidates
        pick = self._pick
        date_key, person_key, date_at, person_at = self._keys(pick is not None)
        picked: list[tuple[Any, ...]] = []
        values: tuple[Any, ...] = ()
        try:
            for line in lines:
                try:
                    doc = parse(line)
                except RuntimeError:
                    # The last picked row's nested values still point into the parser: copy them
                    # (checked here, not on every row: rows with nested kept values are rare).
                    values = ()
                    if not _copy_containers(picked):
                        raise
                    doc = parse(line)
                if type(doc) is not object_type:
                    break
                if pick is not None:
                    try:
                        values = pick(doc)
                    except KeyError:  # a kept column is absent: the stage reads this batch itself
                        pick = None
                        date_at = person_at = -1
                    else:
                        picked.append(values)
                if i == next_full or len(doc) != width or nulls:
                    c.rows = i
                    observe(doc, line)
                    width, nulls = c._last_width, c._null_candidates
                    date_key, person_key, date_at, person_at = self._keys(pick is not None)
                    if i == next_full:
                        next_full = c.next_full(i + 1)
                elif date_at >= 0:
                    dates.append(values[date_at])
                    persons.append(values[person_at])
                    where.append(i)
                else:
                    try:
                        date = doc[date_key] if date_key else None
                        person = doc[person_key] if person_key else None
                    except KeyError:  # the same width but other columns
                        c.rows = i
                        observe(doc, line)
                        width, nulls = c._last_width, c._null_candidates
                        date_key, person_key, date_at, person_at = self._keys(pick is not None)
                    else:
                        dates.append(date)
                        persons.append(person)
                        where.append(i)
                i += 1
                del doc  # the parser can only be reused once no object of it is alive
        except (ValueError, RuntimeError, UnicodeDecodeError):
            pass  # the slow path names the bad row, or accepts what simdjson cannot represent
        c.rows = i
        if where:
            c.take(dates, persons, where)
        done = i - start
        self.rows += done
        if done == len(lines):
            if pick is not None and self._taker is not None:
                _copy_containers(picked)  # the last row's nested values outlive this parse
                self._taker.hand_over(lines, picked)
            return lines
        del picked, values, dates, persons  # nothing of the parser may stay alive for the slow path
        rest = self._slow(lines[done:])
        for line in rest:
            observe(json.loads(line), line)
        self.rows += len(rest)
        return lines[:done] + rest
