"""The one stale-ETag loop every Table store uses."""

from __future__ import annotations

import pytest
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError

from shared.errors import TransientError
from shared.tables import with_etag_retries


def test_a_lost_race_runs_the_step_again_on_a_fresh_read() -> None:
    calls: list[int] = []

    def step() -> str:
        calls.append(len(calls))
        if len(calls) == 1:
            raise ResourceModifiedError("stale ETag")
        if len(calls) == 2:
            raise ResourceExistsError("inserted meanwhile")
        return "written"

    assert with_etag_retries(step, "contention") == "written"
    assert len(calls) == 3


def test_endless_contention_is_transient_not_a_hang() -> None:
    calls: list[int] = []

    def step() -> None:
        calls.append(1)
        raise ResourceModifiedError("stale ETag")

    with pytest.raises(TransientError, match="could not update drop d1"):
        with_etag_retries(step, "could not update drop d1", attempts=4)
    assert len(calls) == 4


def test_other_errors_are_not_retried() -> None:
    calls: list[int] = []

    def step() -> None:
        calls.append(1)
        raise ValueError("a decision, not a race")

    with pytest.raises(ValueError):
        with_etag_retries(step, "contention")
    assert len(calls) == 1
