"""A settable clock for tests and simulations (development only; never imported by the app)."""

from __future__ import annotations

from datetime import datetime, timedelta

from shared.clock import to_utc, utc_now


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


class ShiftedClock:
    """The wall clock plus a settable offset: time still runs (threads, servers), and a test can jump ahead.

    For tests where a real process or server keeps its own time, so a clock that stands still would not do:
    ``advance`` moves past a lease at once instead of sleeping it out.
    """

    def __init__(self, offset: timedelta = timedelta(0)) -> None:
        self.offset = offset

    def __call__(self) -> datetime:
        return utc_now() + self.offset

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        """Move forward by `delta` or by `timedelta(**kwargs)`; returns the new time."""
        step = delta if delta is not None else timedelta(**kwargs)
        if step < timedelta(0):
            raise ValueError("a clock does not go backwards")
        self.offset += step
        return self()
