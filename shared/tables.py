"""What every Table storage store of Viva Relay shares (drop ledger, run ledger, tenant registry).

One error mapping (a 412 is an ETag conflict the caller resolves; other service and network errors
are transient), lazy table creation, equality queries with parameters, and UTC timestamps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import EdmType, EntityProperty, TableClient, UpdateMode

from .clock import Clock, to_utc, utc_now
from .errors import StoreRejected, TransientError, is_permanent_status

T = TypeVar("T")


def utcnow() -> datetime:
    """The current time, timezone-aware."""
    return datetime.now(UTC)


def as_utc(value: Any) -> datetime | None:
    """A stored timestamp as an aware UTC datetime (None if it is not a datetime)."""
    return to_utc(value) if isinstance(value, datetime) else None


def with_etag_retries(step: Callable[[], T], contention: str, attempts: int = 10) -> T:
    """Run ``step`` (read, decide, conditional write) until it completes without losing a race.

    The one home of the stale-ETag loop: a lost race is a ResourceModifiedError (an ETag-guarded replace)
    or a ResourceExistsError (an insert of a row another writer created), and ``step`` then runs again on
    a fresh read. After ``attempts`` lost races: TransientError(``contention``), retried later as a whole.
    """
    for _ in range(attempts):
        try:
            return step()
        except (ResourceModifiedError, ResourceExistsError):
            continue
    raise TransientError(contention)


class TableStore:
    """One Azure Table (Azurite locally) with Viva Relay's error handling."""

    #: How errors name this store ("ledger", "run ledger", ...).
    label = "table"

    def __init__(self, table: TableClient, *, clock: Clock = utc_now) -> None:
        self.table = table
        #: Where this store's "now" comes from (a test passes a settable clock instead of sleeping).
        self.clock = clock
        self._ensured = False

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one table operation; 412 -> ResourceModifiedError, service/network -> TransientError."""
        try:
            return fn()
        except (ResourceNotFoundError, ResourceExistsError, ResourceModifiedError):
            raise
        except HttpResponseError as exc:
            if exc.status_code == 412:
                raise ResourceModifiedError(message=str(exc), response=exc.response) from exc
            if is_permanent_status(exc.status_code):
                # The request itself is wrong (a value too large for the table, say): retrying cannot help.
                raise StoreRejected(f"{self.label} {what} refused: HTTP {exc.status_code} {exc.reason}") from exc
            raise TransientError(f"{self.label} {what} failed: HTTP {exc.status_code} {exc.reason}") from exc
        except AzureError as exc:
            raise TransientError(f"{self.label} {what} failed: {exc}") from exc

    def ensure(self) -> None:
        """Create the table if missing (once per process)."""
        if self._ensured:
            return
        with contextlib.suppress(ResourceExistsError):
            self.call("create table", self.table.create_table)
        self._ensured = True

    def read_entity(self, partition: str, row: str) -> Any | None:
        """One entity, or None."""
        self.ensure()
        try:
            return self.call("read", lambda: self.table.get_entity(partition, row))
        except ResourceNotFoundError:
            return None

    def select_entities(self, equal: Mapping[str, Any] | None = None, *, raw_filter: str = "") -> list[Any]:
        """Entities whose columns equal ``equal`` (all of them when empty), or matching ``raw_filter``."""
        self.ensure()
        clauses = [f"{column} eq @p{i}" for i, column in enumerate(equal or {})]
        params = {f"p{i}": value for i, value in enumerate((equal or {}).values())}
        flt = " and ".join([*clauses, *([raw_filter] if raw_filter else [])])
        if not flt:
            return self.call("list", lambda: list(self.table.list_entities()))
        return self.call("query", lambda: list(self.table.query_entities(flt, parameters=params)))

    def insert_entity(self, entity: dict[str, Any]) -> str:
        """Create an entity (ResourceExistsError if it exists); returns its ETag."""
        self.ensure()
        meta = self.call("insert", lambda: self.table.create_entity(as_int64(entity)))
        return str(meta.get("etag", ""))

    def replace_entity(self, entity: dict[str, Any], etag: str) -> str:
        """Replace an entity if its ETag still matches (ResourceModifiedError otherwise); new ETag."""
        self.ensure()
        meta = self.call(
            "update",
            lambda: self.table.update_entity(
                as_int64(entity), mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
            ),
        )
        return str(meta.get("etag", ""))


def as_int64(entity: Mapping[str, Any]) -> dict[str, Any]:
    """``entity`` with every whole number typed Int64.

    The Tables SDK writes a plain Python int as Int32 and refuses one above 2**31 - 1 (a drop of
    more than 2 GiB of plaintext, say); every counter and size of every store is Int64 instead.
    """
    return {
        k: EntityProperty(v, EdmType.INT64) if isinstance(v, int) and not isinstance(v, bool) else v
        for k, v in entity.items()
    }


def entity_props(entity: Mapping[str, Any]) -> dict[str, Any]:
    """An entity's columns without its keys (Int64 columns as plain ints)."""
    return {
        k: v.value if isinstance(v, EntityProperty) else v
        for k, v in dict(entity).items()
        if k not in ("PartitionKey", "RowKey")
    }


def entity_etag(entity: Any) -> str:
    """The ETag the Tables SDK attached to an entity."""
    return str(entity.metadata.get("etag", ""))


def without_nulls(props: Mapping[str, Any]) -> dict[str, Any]:
    """Columns to write: a None removes the column (REPLACE writes exactly what is given)."""
    return {k: v for k, v in props.items() if v is not None}
