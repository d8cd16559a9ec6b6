"""The one clock: production code asks a `Clock` for the time, so tests and simulations can set it.

Every store, lease and health rule that needs "now" takes a `Clock` (default `utc_now`) instead of reading
the wall clock itself; a test passes a settable clock and moves it forward instead of sleeping.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

#: A function returning the current time as an aware UTC datetime.
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The wall-clock time, timezone-aware (UTC): the production `Clock`."""
    return datetime.now(UTC)


def to_utc(value: datetime) -> datetime:
    """`value` as an aware UTC datetime; a naive value is taken to be UTC already."""
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
