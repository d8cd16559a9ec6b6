"""The ingest is an attempt object with named steps (validate, claim, unwrap, stream, settle), against Azurite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared.ingest import DropAttempt, IngestOutcome, StreamStats
from shared.keys import FileKey
from shared.ledger import DELIVERED, FAILED
from shared.location import location_from_blob
from shared.sources import BlobDropSource
from tests.conftest import Relay, make_relay
from tests.test_ingest import expected_rows, rows_of


class RecordingAttempt(DropAttempt):
    """The real attempt, noting which step ran."""

    steps: list[str]

    def validate(self, metadata_bytes: bytes | None) -> IngestOutcome | None:
        self.steps = ["validate"]
        return super().validate(metadata_bytes)

    def claim(self) -> IngestOutcome | None:
        self.steps.append("claim")
        return super().claim()

    def unwrap(self) -> FileKey:
        self.steps.append("unwrap")
        return super().unwrap()

    def stream(self, run: Any, file_key: FileKey) -> StreamStats:
        self.steps.append("stream")
        return super().stream(run, file_key)

    def settle(self, run: Any, stats: StreamStats) -> IngestOutcome:
        self.steps.append("settle")
        return super().settle(run, stats)


@pytest.fixture
def relay(azurite: Any, tmp_path: Path) -> Relay:
    made = make_relay(azurite, tmp_path)
    made.rt.retry_delay_seconds = 0.01
    return made


def attempt_for(relay: Relay, path: str) -> RecordingAttempt:
    location = location_from_blob(relay.rt.landing_account, relay.landing.container_name, path)
    return RecordingAttempt(relay.rt, BlobDropSource(relay.landing, location))


def test_a_good_drop_goes_through_every_step_in_order(relay: Relay) -> None:
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=120)
    attempt = attempt_for(relay, path)

    outcome = attempt.run()

    assert outcome.status == "delivered" and outcome.rows == 120, outcome
    assert attempt.steps == ["validate", "claim", "unwrap", "stream", "settle"]
    record = relay.rt.ledger.get(tenant, outcome.drop_id)
    assert record is not None and record.state == DELIVERED
    rows = [m for m in relay.messages() if m["drop"] == outcome.drop_id and m["type"] == "rows"]
    assert rows_of(sorted(rows, key=lambda m: m["seq"])) == expected_rows(120)


def test_a_drop_for_another_tenants_key_stops_at_unwrap_and_is_settled_as_failed(relay: Relay) -> None:
    tenant, other = relay.new_tenant(), relay.new_tenant()
    _, path = relay.drop(tenant, rows=50, public_tenant=other)  # wrapped with the wrong tenant's key
    attempt = attempt_for(relay, path)

    outcome = attempt.run()

    assert outcome.status == "failed", outcome
    assert "stream" not in attempt.steps and attempt.steps[-1] == "unwrap"
    record = relay.rt.ledger.get(tenant, outcome.drop_id)
    assert record is not None and record.state == FAILED
    assert not [m for m in relay.messages() if m["drop"] == outcome.drop_id and m["type"] == "rows"]


def test_a_bad_metadata_file_ends_the_attempt_at_validate(relay: Relay) -> None:
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=10)
    relay.landing.upload_blob(path, b'{"not": "a metadata file"}', overwrite=True)
    attempt = attempt_for(relay, path)

    outcome = attempt.run()

    assert outcome.status == "failed" and outcome.code, outcome
    assert attempt.steps == ["validate"]
