"""Opt-in row transforms, the row stage between the line splitter and the packer.

``lines -> RowStage* -> packer``. Off by default (rows pass exactly as MGDC wrote them); per
deployment, a drop's rows can be

* minimised: ``ROW_COLUMNS`` keeps only the listed columns of a table (everything else is dropped
  before the queue);
* typed: numbers become JSON numbers, booleans booleans and dates ISO-8601 UTC, following the
  dataset's contract (a value that cannot be converted stays as it was and is reported, or fails the
  drop under ``SCHEMA_POLICY=fail``);
* pseudonymised: the person identifiers (the contract's ``IdentifierColumns``) are replaced by
  HMAC-SHA256 under a partner secret (:class:`Pseudonymiser`), stable across weeks and tenants.

What is in force is a :class:`RowSettings`, recorded on the drop at its first attempt; a resume
uses the recorded one, so it packs exactly as before. See docs/contract.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import operator
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC
from typing import Any

import simdjson

from .contract import MAX_EXAMPLES, Contract, contract_for, parse_datetime, plain_copy
from .errors import SchemaViolation


class RowStage(ABC):
    """One step between the line splitter and the packer: rows in, rows out, in order."""

    @abstractmethod
    def process(self, rows: list[bytes]) -> list[bytes]:
        """Transform one batch of rows (deterministic: the same rows always give the same output)."""

    def findings(self) -> list[dict[str, Any]]:
        """What the stage has to add to the drop's schema report."""
        return []


@dataclass(frozen=True)
class RowSettings:
    """The row settings in force for one drop (recorded on the drop as JSON)."""

    policy: str = "report"
    check: bool = True
    check_every: int = 256
    typed: bool = False
    columns: tuple[str, ...] = ()  # the allowlist of this drop's table; () keeps every column
    pseudonymise: bool = False
    secret_name: str = ""
    secret_version: str = ""

    @property
    def transforms(self) -> bool:
        """True when any transform changes rows."""
        return self.typed or bool(self.columns) or self.pseudonymise

    def to_json(self) -> str:
        """The form stored on the drop."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> RowSettings:
        """Read the recorded form back."""
        doc = json.loads(text)
        doc["columns"] = tuple(doc.get("columns") or ())
        return cls(**doc)


_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))
#: Entries of a value cache (pseudonyms, dates): about 250 bytes each at most, so a few MiB.
CACHE_LIMIT = 20_000


class Pseudonymiser:
    """HMAC-SHA256 of an identifier under the partner secret, as 64 hex characters.

    Identifiers are trimmed and lower-cased first (object ids, mail addresses and UPNs compare
    without case), so the same person gives the same pseudonym in every drop, week and tenant.
    """

    def __init__(self, secret: bytes, version: str) -> None:
        if len(secret) < 16:
            raise ValueError("the pseudonymisation secret must hold at least 16 bytes")
        self._secret = secret
        self.version = version
        self._cache: dict[str, str] = {}
        # HMAC (RFC 2104) from two hash states keyed once: ``hmac.digest`` sets up the digest anew
        # on each call, which with OpenSSL 3 costs some 40 us, more than the rest of a person's rows.
        block = hashlib.sha256().block_size
        key = (secret if len(secret) <= block else hashlib.sha256(secret).digest()).ljust(block, b"\0")
        self._inner = hashlib.sha256(key.translate(_IPAD))
        self._outer = hashlib.sha256(key.translate(_OPAD))

    def __call__(self, value: str) -> str:
        """The pseudonym of ``value``."""
        done = self._cache.get(value)
        if done is None:
            if len(self._cache) >= CACHE_LIMIT:
                self._cache.clear()  # bounded memory (rows come grouped by person, so hits stay high)
            inner = self._inner.copy()
            inner.update(value.strip().lower().encode("utf-8"))
            outer = self._outer.copy()
            outer.update(inner.digest())
            done = self._cache[value] = outer.hexdigest()
        return done


def secret_fingerprint(secret: bytes) -> str:
    """A version label for a secret that has none (the key folder): says which secret, reveals nothing."""
    return "sha256:" + hmac.digest(secret, b"viva-relay pseudonym secret version", hashlib.sha256).hex()[:16]


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
#: The C encoder, made once: ``json.dumps`` and ``JSONEncoder.encode`` build one per call, which costs
#: more than encoding a small row. Rows hold no cycles, so no cycle check (``markers=None``).
_MAKE_ENCODER = getattr(json.encoder, "c_make_encoder", None)
_C_ENCODER = (
    None
    if _MAKE_ENCODER is None
    else _MAKE_ENCODER(None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",", False, False, False)
)


def _encode(row: dict[str, Any]) -> str:
    """A row as compact JSON text (UTF-8 kept, NaN refused)."""
    if _C_ENCODER is None:
        return _ENCODER.encode(row)
    return "".join(_C_ENCODER(row, 0))


_BOOLEANS = {
    "true": True,
    "True": True,
    "TRUE": True,
    "1": True,
    "false": False,
    "False": False,
    "FALSE": False,
    "0": False,
}
_MISSING = object()
#: A column's value -> its JSON text in the output row, or _MISSING when the value does not fit.
Emitter = Callable[[Any], Any]
_quote = json.encoder.encode_basestring  # C speed; keeps UTF-8 as is
#: A JSON number. Possessive quantifiers (no backtracking: each part of the grammar can only end one
#: way) make the column-at-a-time match below about a third faster.
_NUMBER = r"-?+(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?+(?:[eE][-+]?+[0-9]++)?+"
_JSON_NUMBER = re.compile(_NUMBER).fullmatch
#: Many numbers at once, one a line: one regex pass over a column instead of a call per value.
_JSON_NUMBERS = re.compile(f"(?:{_NUMBER}\n)*+{_NUMBER}").fullmatch
#: Characters no JSON number holds that could make a list of values parse as something else.
_NOT_IN_NUMBERS = ('"', "[", "]", "{", "}", "t", "f", "n", ":", " ", "\t", "\n", "\r")
_BOOLEAN_JSON: dict[Any, str] = {k: "true" if v else "false" for k, v in _BOOLEANS.items()}
_BOOLEAN_JSON.update({True: "true", False: "false"})  # also the ints 1 and 0, which hash alike


def _as_json(value: Any) -> str:
    """A value left as it came, as JSON text."""
    kind = type(value)
    if kind is str:
        return _quote(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return int.__repr__(value)
    if kind is float and math.isfinite(value):
        return float.__repr__(value)
    if value is None:
        return "null"
    return _encode(_plain(value))


def _double_json(value: Any) -> Any:
    """A number as a JSON number: a string already spelled as one is kept as it is (no float round
    trip); any other numeric string is written as the shortest float that reads back the same."""
    kind = type(value)
    if kind is str:
        if _JSON_NUMBER(value):
            return value
        try:
            number = float(value)
        except ValueError:
            return _MISSING
        return float.__repr__(number) if math.isfinite(number) and "_" not in value else _MISSING
    if kind is float:
        return float.__repr__(value) if math.isfinite(value) else _MISSING
    if kind is int:
        return int.__repr__(value)
    return _MISSING


def _boolean_json(value: Any) -> Any:
    if type(value) not in (str, bool, int):
        return _MISSING
    return _BOOLEAN_JSON.get(value, _MISSING)


def _datetime_json() -> Emitter:
    cache: dict[str, str] = {}

    def emit(value: Any) -> Any:
        if type(value) is not str:
            return _MISSING
        done = cache.get(value)
        if done is None:
            when = parse_datetime(value)
            if when is None:
                return _MISSING
            done = _quote(when.astimezone(UTC).isoformat().replace("+00:00", "Z"))
            if len(cache) < CACHE_LIMIT:
                cache[value] = done
        return done

    return emit


@dataclass
class _Unconverted:
    count: int = 0
    rows: list[int] = field(default_factory=list)


_CONTAINERS = (simdjson.Object, simdjson.Array)
_CONTAINER_SET = frozenset(_CONTAINERS)


_plain = plain_copy  # a simdjson container as plain Python (what the encoder takes)


class RowTransformer(RowStage):
    """Applies the allowlist, typed values and pseudonyms to each row, written out as compact JSON.

    Each column gets one emitter, made once, that writes its value's JSON text: a quoted pseudonym
    for identifiers, the typed form for contract columns when ``typed`` is on, the value as it came
    otherwise. Rows are assembled from those texts (no per-row encoder).
    """

    def __init__(
        self,
        table: str,
        settings: RowSettings,
        pseudonymiser: Pseudonymiser | None = None,
        contract: Contract | None = None,
    ) -> None:
        self.settings = settings
        self.contract = contract if contract is not None else contract_for(table)
        if settings.pseudonymise and pseudonymiser is None:
            raise ValueError("pseudonymisation needs the partner secret")
        self._pseudonym = pseudonymiser if settings.pseudonymise else None  # only when asked for
        self._identifiers = frozenset(self.contract.identifier_columns if self.contract else ())
        self._parser = simdjson.Parser()
        self._numbers = simdjson.Parser()  # for :meth:`_all_json_numbers` only
        self._rows = 0
        self._unconverted: dict[str, _Unconverted] = {}
        self._emitters: dict[str, tuple[str, Emitter]] = {}
        #: Columns whose texts are worth caching (identifiers, dates): value -> JSON text.
        self._texts: dict[str, dict[str, str]] = {}
        #: Each kept column's name, prefix and emitter, and the whole output row with a ``%s`` for each.
        self._plan, self._template = self._plan_of(settings.columns)
        self._pick = operator.itemgetter(*settings.columns) if settings.columns else None
        #: For the validator: reads the kept columns of a parsed row, so the row need not be parsed
        #: again here (:meth:`hand_over`). Only for two columns or more (itemgetter then gives a tuple).
        self.pick: Callable[[Any], tuple[Any, ...]] | None = self._pick if len(self._plan) > 1 else None
        self.pick_columns: tuple[str, ...] = settings.columns  # what :attr:`pick` reads, in order
        self._handed: tuple[list[bytes], list[tuple[Any, ...]]] | None = None
        #: Without an allowlist: the last row layout seen (its columns in order), its plan and template.
        self._layout: tuple[tuple[str, ...], list[tuple[str, str, Emitter]], str] | None = None

    def _plan_of(self, columns: tuple[str, ...]) -> tuple[list[tuple[str, str, Emitter]], str]:
        """The plan (name, prefix, emitter) of rows written with these columns, and their row template."""
        plan = [(n, *self._emitter(n)) for n in columns]
        for name, _, emit in plan:
            if emit not in (_as_json, _double_json, _boolean_json):
                self._texts.setdefault(name, {})
        # The whole output row, filled in one C call a row.
        template = "{" + ",".join(prefix.replace("%", "%%") + "%s" for _, prefix, _ in plan) + "}"
        return plan, template

    def _emitter(self, name: str) -> tuple[str, Emitter]:
        """The column's ``"name":`` prefix and its emitter."""
        known = self._emitters.get(name)
        if known is not None:
            return known
        emit: Emitter = _as_json
        if name in self._identifiers and self._pseudonym is not None:
            pseudonym = self._pseudonym

            def emit(value: Any) -> Any:
                return '"' + pseudonym(value if type(value) is str else _encode(_plain(value))) + '"'

        elif self.settings.typed and self.contract is not None:
            kind = self.contract.type_of(name)
            if kind == "double":
                emit = _double_json
            elif kind == "boolean":
                emit = _boolean_json
            elif kind == "datetime":
                emit = _datetime_json()
        made = self._emitters[name] = (_quote(name) + ":", emit)
        return made

    def _unconvertible(self, name: str, index: int) -> None:
        miss = self._unconverted.setdefault(name, _Unconverted())
        miss.count += 1
        if len(miss.rows) < MAX_EXAMPLES:
            miss.rows.append(index)
        if self.settings.policy == "fail":
            raise SchemaViolation(f"row {index + 1}: column {name!r} cannot be converted to its contract type")

    def _text(self, name: str, emit: Emitter, value: Any, index: int) -> str:
        if value is None:
            return "null"
        text = emit(value)
        if text is _MISSING:
            self._unconvertible(name, index)
            return _as_json(value)
        return str(text)

    def _whole_row(self, line: bytes, index: int) -> bytes:
        parts = []
        for name, value in json.loads(line).items():
            prefix, emit = self._emitter(name)
            parts.append(prefix + self._text(name, emit, value, index))
        return ("{" + ",".join(parts) + "}").encode("utf-8")

    def _one(self, line: bytes, index: int) -> bytes:
        if not self._plan:
            return self._whole_row(line, index)
        # Only the kept columns are read, lazily (a lookup of an absent key is slow in simdjson, so
        # presence is learnt from KeyError).
        try:
            doc: Any = self._parser.parse(line)
        except (ValueError, RuntimeError):
            # Valid JSON simdjson cannot represent (an integer beyond 64 bits, 1e400): the validator
            # accepted it on its slow path, so read it as the standard library does.
            doc = json.loads(line)
        parts = []
        try:
            for name, prefix, emit in self._plan:
                try:
                    value = doc[name]
                except KeyError:
                    continue
                if value is None:
                    parts.append(prefix + "null")
                    continue
                text = emit(value)
                if text is _MISSING:
                    self._unconvertible(name, index)
                    text = _as_json(value)
                parts.append(prefix + text)
        finally:
            del doc
        return ("{" + ",".join(parts) + "}").encode("utf-8")

    def process(self, rows: list[bytes]) -> list[bytes]:
        """Transform every row of the batch."""
        start = self._rows
        self._rows += len(rows)
        handed, self._handed = self._handed, None
        if handed is not None and rows and handed[0] is rows and len(handed[1]) == len(rows):
            return self._assemble(handed[1], start)
        if self._plan and rows:
            done = self._by_columns(rows, start)
            if done is not None:
                return done
        elif rows:
            done = self._by_row_layout(rows, start)
            if done is not None:
                return done
        one = self._one
        return [one(line, start + i) for i, line in enumerate(rows)]

    def _by_columns(self, rows: list[bytes], start: int) -> list[bytes] | None:
        """The allowlist path a column at a time: C-speed maps over each column's values.

        None when a row lacks a kept column (the row-by-row path handles that batch).
        """
        parse = self._parser.parse
        many = len(self._plan) > 1
        pick = self._pick
        assert pick is not None
        picked = []
        try:
            for line in rows:
                doc: Any = parse(line)
                try:
                    values = pick(doc)
                    if not _CONTAINER_SET.isdisjoint(map(type, values if many else (values,))):
                        # Nested values must not outlive the parser's next row: plain copies.
                        values = tuple(map(_plain, values)) if many else _plain(values)
                    picked.append(values)
                finally:
                    del doc
        except (KeyError, ValueError, RuntimeError):
            return None  # a kept column is absent, or a row simdjson cannot represent: row by row
        if len(self._plan) == 1:
            picked = [(v,) for v in picked]
        return self._assemble(picked, start)

    def _layout_of(self, keys: tuple[str, ...]) -> tuple[list[tuple[str, str, Emitter]], str]:
        """The plan and template for rows with exactly these columns in this order."""
        if self._layout is None or self._layout[0] != keys:
            self._layout = (keys, *self._plan_of(keys))
        return self._layout[1], self._layout[2]

    def _by_row_layout(self, rows: list[bytes], start: int) -> list[bytes] | None:
        """No allowlist: a batch whose rows all have the first row's columns, in its order, a column at a time.

        The output is what the row-by-row path writes (every column, in the row's order), so it does not
        depend on how rows were batched. None when a row differs (the row-by-row path handles that batch).
        """
        if not rows:
            return None
        parse = self._parser.parse
        picked = []
        keys: tuple[str, ...] = ()
        try:
            for line in rows:
                doc: Any = parse(line)
                try:
                    if not keys:
                        keys = tuple(doc.keys())
                        if len(keys) < 2 or len(set(keys)) != len(keys):
                            return None  # one column, or a repeated name: the row-by-row path
                        plan, template = self._layout_of(keys)
                    elif tuple(doc.keys()) != keys:
                        return None
                    values = tuple(doc.values())  # in the row's order, which is the layout's
                    if not _CONTAINER_SET.isdisjoint(map(type, values)):
                        values = tuple(map(_plain, values))  # nested values must not outlive the parser's next row
                    picked.append(values)
                finally:
                    del doc
        except (AttributeError, KeyError, ValueError, RuntimeError):
            return None  # not an object, or a row simdjson cannot represent: row by row
        return self._assemble(picked, start, plan, template)

    def hand_over(self, rows: list[bytes], picked: list[tuple[Any, ...]]) -> None:
        """The kept columns of ``rows`` (one tuple a row, from :attr:`pick`, nested values as plain
        copies), read by the validator's parse: the next :meth:`process` of this very list uses them."""
        self._handed = (rows, picked)

    def _assemble(
        self,
        picked: list[tuple[Any, ...]],
        start: int,
        plan: list[tuple[str, str, Emitter]] | None = None,
        template: str | None = None,
    ) -> list[bytes]:
        """The output rows from each row's kept values: a column's texts at a time, then one row each."""
        columns = [
            self._column_texts(name, emit, values, start)
            for (name, _, emit), values in zip(plan or self._plan, zip(*picked, strict=True), strict=True)
        ]
        return list(map(str.encode, map((template or self._template).__mod__, zip(*columns, strict=True))))

    def _column_texts(self, name: str, emit: Emitter, values: tuple[Any, ...], start: int) -> list[str]:
        """Every value of one column as JSON text; the common cases without a Python call per value."""
        kinds = set(map(type, values))
        if emit is _double_json and kinds == {str}:
            spelled = self._all_json_numbers(values)
            if spelled is None:  # simdjson cannot say (a number beyond its range): the regex decides
                joined = "\n".join(values)
                # (A value holding a line break would pass as two numbers: the count rules that out.)
                spelled = bool(_JSON_NUMBERS(joined)) and joined.count("\n") == len(values) - 1
            if spelled:
                return list(values)  # numeric strings already spelled as JSON numbers
        if emit is _as_json and kinds == {str}:
            return list(map(_quote, values))
        if emit is _boolean_json and kinds == {bool}:
            return ["true" if v else "false" for v in values]
        cache = self._texts.get(name)
        if cache is not None and kinds == {str}:
            # Pseudonyms and dates repeat (a person's weeks, a drop's few dates): look them up a
            # column at a time, and compute only the values not seen yet.
            texts: list[Any] = list(map(cache.get, values))
            if None in texts and self._cache_new(cache, emit, values):
                texts = list(map(cache.get, values))
            if None in texts:
                for i, value in enumerate(values):
                    if texts[i] is None:
                        # A person's rows come together: the first of them has just filled the cache.
                        text = cache.get(value)
                        if text is not None:
                            texts[i] = text
                            continue
                        text = emit(value)
                        if text is _MISSING:
                            self._unconvertible(name, start + i)
                            text = _as_json(value)
                        elif len(cache) < CACHE_LIMIT:
                            cache[value] = text
                        texts[i] = text
            return texts
        out = []
        for i, value in enumerate(values):
            if value is None:
                out.append("null")
                continue
            text = emit(value)
            if text is _MISSING:
                self._unconvertible(name, start + i)
                text = _as_json(value)
            out.append(text)
        return out

    def _all_json_numbers(self, values: tuple[str, ...]) -> bool | None:
        """Whether every value is spelled as a JSON number, by parsing them as one JSON array.

        With no whitespace and no character that can start a string, array, object or literal, a
        valid ``[v1,v2,...]`` holds only numbers; as many elements as values means no value held a
        comma, so each value is exactly one number (simdjson follows the JSON grammar strictly).
        None when simdjson refuses a number JSON allows (beyond its range): the caller decides.
        """
        joined = ",".join(values)
        if any(c in joined for c in _NOT_IN_NUMBERS):
            return False
        try:
            doc: Any = self._numbers.parse(("[" + joined + "]").encode())
        except (ValueError, RuntimeError):
            return None
        try:
            return len(doc) == len(values)
        finally:
            del doc

    @staticmethod
    def _cache_new(cache: dict[str, str], emit: Emitter, values: tuple[str, ...]) -> bool:
        """Put the texts of the values not cached yet into ``cache``, each distinct value once.

        False when one of them does not convert or the cache is full: the caller then goes row by row
        (which reports each such row).
        """
        for value in set(values).difference(cache):
            text = emit(value)
            if text is _MISSING or len(cache) >= CACHE_LIMIT:
                return False
            cache[value] = text
        return True

    def findings(self) -> list[dict[str, Any]]:
        """Values the typed transform left as they were."""
        return [
            {
                "check": "not_converted",
                "column": name,
                "count": miss.count,
                "examples": [{"row": r} for r in miss.rows],
            }
            for name, miss in self._unconverted.items()
        ]


def row_columns_for(table: str, allowlists: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    """The allowlist of ``table`` (() when the table has none)."""
    return tuple(allowlists.get(table, ()))


def check_allowlists(allowlists: Mapping[str, tuple[str, ...]]) -> list[str]:
    """Problems with ``ROW_COLUMNS`` against the shipped contracts (empty when it is fine)."""
    problems = []
    for table, columns in allowlists.items():
        contract = contract_for(table)
        if contract is None:
            continue  # a table without a contract: its names cannot be checked
        known = contract.names()
        unknown = [c for c in columns if c not in known]
        if unknown:
            problems.append(f"{table}: unknown columns {unknown}")
    return problems
