"""A settable clock for tests and simulations (development only; never imported by the app)."""

from __future__ import annotations

from datetime import datetime, timedelta

from shared.clock import to_utc


class ManualClock:
    """A `shared.clock.Clock` that stands still until it is moved: `clock()` is the time, `advance` moves it."""

    def __init__(self, start: datetime) -> None:
        self._now = to_utc(start)

    def __call__(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        """Move forward by `delta` or by `timedelta(**kwargs)`; returns the new time."""
        step = delta if delta is not None else timedelta(**kwargs)
        if step < timedelta(0):
            raise ValueError("a clock does not go backwards")
        self._now += step
        return self._now

    def set(self, moment: datetime) -> None:
        """Jump to `moment` (any direction; for simulations that replay a calendar)."""
        self._now = to_utc(moment)
