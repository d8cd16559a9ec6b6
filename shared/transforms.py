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
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC
from typing import Any

import simdjson

from .contract import MAX_EXAMPLES, Contract, contract_for, is_boolean, is_double, parse_datetime
from .errors import SchemaViolation

_TRUE = frozenset({"true", "True", "TRUE", "1"})


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
    check_every: int = 64
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

    def __call__(self, value: str) -> str:
        """The pseudonym of ``value``."""
        done = self._cache.get(value)
        if done is None:
            if len(self._cache) > 200_000:
                self._cache.clear()  # bounded memory on huge directories
            digest = hmac.digest(self._secret, value.strip().lower().encode("utf-8"), hashlib.sha256)
            done = self._cache[value] = digest.hex()
        return done


def secret_fingerprint(secret: bytes) -> str:
    """A version label for a secret that has none (the key folder): says which secret, reveals nothing."""
    return "sha256:" + hmac.digest(secret, b"viva-relay pseudonym secret version", hashlib.sha256).hex()[:16]


def _to_number(value: Any) -> Any:
    if type(value) is str:
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            return float(text)
    return value


def _to_boolean(value: Any) -> Any:
    if type(value) is bool:
        return value
    return (value in _TRUE) if type(value) is str else bool(value)


def _to_datetime(value: Any) -> Any:
    when = parse_datetime(value)
    if when is None:
        raise ValueError("not a date")
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


_CONVERTERS = {
    "double": (is_double, _to_number),
    "boolean": (is_boolean, _to_boolean),
    "datetime": (lambda v: parse_datetime(v) is not None, _to_datetime),
}


@dataclass
class _Unconverted:
    count: int = 0
    rows: list[int] = field(default_factory=list)


class RowTransformer(RowStage):
    """Applies the allowlist, typed values and pseudonyms to each row (re-serialised compactly)."""

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
        self._pseudonym = pseudonymiser
        self._identifiers = frozenset(self.contract.identifier_columns if self.contract else ())
        self._parser = simdjson.Parser()
        self._rows = 0
        self._unconverted: dict[str, _Unconverted] = {}
        self._plans: dict[str, Any] = {}

    def _plan(self, name: str) -> Any:
        """What to do with one column's value: (check, convert) for typed columns, else None."""
        plan = self._plans.get(name, ...)
        if plan is ...:
            kind = self.contract.type_of(name) if self.contract and self.settings.typed else None
            plan = self._plans[name] = _CONVERTERS.get(kind) if kind else None
        return plan

    def _value(self, name: str, value: Any, index: int) -> Any:
        if isinstance(value, simdjson.Object):
            value = value.as_dict()
        elif isinstance(value, simdjson.Array):
            value = value.as_list()
        if value is None:
            return None
        if name in self._identifiers and self._pseudonym is not None:
            return self._pseudonym(value if type(value) is str else json.dumps(value))
        plan = self._plan(name)
        if plan is None:
            return value
        check, convert = plan
        if check(value):
            try:
                return convert(value)
            except (ValueError, OverflowError):
                pass
        miss = self._unconverted.setdefault(name, _Unconverted())
        miss.count += 1
        if len(miss.rows) < MAX_EXAMPLES:
            miss.rows.append(index)
        if self.settings.policy == "fail":
            raise SchemaViolation(f"row {index + 1}: column {name!r} cannot be converted to its contract type")
        return value

    def _one(self, line: bytes, index: int) -> bytes:
        value = self._value
        if self.settings.columns:
            # Only the kept columns are read, lazily (a lookup of an absent key is slow in simdjson,
            # so presence is learnt from KeyError).
            doc: Any = self._parser.parse(line)
            out: dict[str, Any] = {}
            try:
                for name in self.settings.columns:
                    try:
                        out[name] = value(name, doc[name], index)
                    except KeyError:
                        continue
            finally:
                del doc
        else:
            out = {n: value(n, v, index) for n, v in json.loads(line).items()}
        return json.dumps(out, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")

    def process(self, rows: list[bytes]) -> list[bytes]:
        """Transform every row of the batch."""
        start = self._rows
        self._rows += len(rows)
        return [self._one(line, start + i) for i, line in enumerate(rows)]

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
