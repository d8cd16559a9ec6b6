"""Typed records of the Table stores and the one codec each store uses to read and write them.

Each store (drop ledger, run ledger, tenant registry) has a frozen dataclass with one typed field per
column and a :class:`RecordCodec` that lists the columns: the codec is the only place that knows a
column's name and its Table type. Code reads ``record.rows``, never ``entity["Rows"]``; an update is a
new record (:func:`dataclasses.replace`) written through the store's ETag-guarded update.

A stored value is converted to its field's type (whole numbers as Python ints, timestamps as aware
UTC datetimes). A column the codec does not know, or a value of another type than the column's, is
kept in the record's ``extra`` mapping and written back unchanged, so rewriting a row never loses a
column another version wrote. A field that is None is not written (the column is removed), as before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, Literal, Protocol, TypeVar

from .tables import as_utc, entity_props

#: The Table types a column may have (ints are written as Int64: see ``tables.as_int64``).
Kind = Literal["str", "int", "float", "bool", "datetime"]


class StoredRecord(Protocol):
    """What every typed record has besides its columns."""

    @property
    def etag(self) -> str:
        """The row's ETag when it was read (or written); '' for a record not stored yet."""

    @property
    def extra(self) -> Mapping[str, Any]:
        """Columns the codec does not know, kept as they were read."""


R = TypeVar("R", bound=StoredRecord)


@dataclass(frozen=True)
class Column:
    """One Table column: the record's field ``attr`` is stored as column ``name`` of type ``kind``."""

    attr: str
    name: str
    kind: Kind


#: The kinds by short name, for the codecs' column tables.
STR: Final[Kind] = "str"
INT: Final[Kind] = "int"
FLOAT: Final[Kind] = "float"
BOOL: Final[Kind] = "bool"
DATETIME: Final[Kind] = "datetime"


def columns(*specs: tuple[str, str, Kind]) -> list[Column]:
    """The columns of (field, stored name, Table type) triples, in order."""
    return [Column(attr, name, kind) for attr, name, kind in specs]


def _typed(value: Any, kind: Kind) -> Any | None:
    """``value`` as the column's Python type, or None when it is of another type (kept in ``extra``)."""
    if kind == "datetime":
        return as_utc(value)
    if kind == "bool":
        return value if isinstance(value, bool) else None
    if isinstance(value, bool):
        return None  # a bool is an int to Python, never to the Table
    if kind == "int":
        return value if isinstance(value, int) else None
    if kind == "float":
        return float(value) if isinstance(value, int | float) else None
    return value if isinstance(value, str) else None


class RecordCodec(Generic[R]):
    """Entity <-> record for one store: the keys, the columns and their types."""

    def __init__(self, record_type: Callable[..., R], keys: tuple[str, str], columns: Sequence[Column]) -> None:
        self.record_type = record_type
        self.name = str(getattr(record_type, "__name__", "record"))
        #: The record's fields that hold the PartitionKey and the RowKey.
        self.keys = keys
        self.columns = tuple(columns)
        self.by_attr = {c.attr: c for c in self.columns}

    def decode(self, entity: Mapping[str, Any]) -> R:
        """The record of a stored entity (its ETag from the SDK's metadata, when there is one)."""
        props = entity_props(entity)
        values: dict[str, Any] = {}
        for column in self.columns:
            stored = props.get(column.name)
            if stored is None:
                props.pop(column.name, None)
                continue
            typed = _typed(stored, column.kind)
            if typed is not None:
                values[column.attr] = typed
                del props[column.name]
        metadata = getattr(entity, "metadata", None) or {}
        partition, row = self.keys
        values |= {partition: str(entity["PartitionKey"]), row: str(entity["RowKey"])}
        return self.record_type(etag=str(metadata.get("etag", "")), extra=props, **values)

    def encode(self, record: R) -> dict[str, Any]:
        """The entity to write: keys, every field that is not None, and the extra columns."""
        partition, row = self.keys
        entity: dict[str, Any] = {k: v for k, v in record.extra.items() if v is not None}
        entity |= {"PartitionKey": getattr(record, partition), "RowKey": getattr(record, row)}
        for column in self.columns:
            value = getattr(record, column.attr)
            if value is not None:
                entity[column.name] = value
        return entity

    def column(self, attr: str) -> str:
        """The column name of field ``attr`` (for a query's filter)."""
        return self.by_attr[attr].name


def check_fields(codec: RecordCodec[Any], fields: Mapping[str, Any]) -> None:
    """TypeError naming any key of ``fields`` that is not a column of the codec (a misspelt update)."""
    unknown = sorted(set(fields) - set(codec.by_attr))
    if unknown:
        raise TypeError(f"not a column of {codec.name}: {', '.join(unknown)}")
