"""Whatever arrives, the handler returns normally and the ledger says why (against Azurite)."""

from __future__ import annotations

import json
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shared.ingest
from devtools.azurite import Azurite
from shared.clock import utc_now
from shared.ingest import IngestOutcome, ingest_metadata_blob
from shared.location import location_from_blob
from shared.runtime import Runtime
from tests.conftest import Relay, make_relay
from tests.test_hostile import hostile_metadata
from tests.test_ingest import expected_rows, rows_of
from tests.test_metadata import doc

GUARD = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
SETTLED = ("failed", "waiting", "delivered", "retrying", "skipped")


def fresh_root(tenant: str) -> str:
    return f"{uuid.uuid4().hex[:12]}/VivaInsights/{tenant}"


def put_metadata(relay: Relay, tenant: str, raw: bytes) -> str:
    path = f"{fresh_root(tenant)}/metadata/JobMetadata/Metadata.json"
    relay.landing.upload_blob(path, raw)
    return path


def assert_accounted(relay: Relay, path: str, outcome: IngestOutcome) -> None:
    """The handler returned, and the ledger (or the outcome, for a duplicate) says what happened and why."""
    assert isinstance(outcome, IngestOutcome) and outcome.status in SETTLED, outcome
    if outcome.status == "skipped":
        return
    location = location_from_blob(relay.rt.landing_account, relay.landing.container_name, path)
    record = relay.rt.ledger.find(outcome.drop_id or location.drop_id)
    assert record is not None, outcome
    if record.state in ("failed", "waiting"):
        assert record.reason, record
    if record.state == "failed":
        assert record.reason_code
    if outcome.status == "retrying":
        assert record.last_error


@pytest.mark.parametrize(("what", "raw"), hostile_metadata(), ids=[w for w, _ in hostile_metadata()])
def test_hostile_metadata_through_the_handler_fails_the_drop_with_a_reason(relay: Relay, what: str, raw: bytes) -> None:
    tenant = relay.new_tenant()
    path = put_metadata(relay, tenant, raw)
    outcome = ingest_metadata_blob(relay.rt, relay.landing.container_name, path)
    assert outcome.status == "failed" and outcome.code == "bad_metadata", outcome
    assert_accounted(relay, path, outcome)


_JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([2**31, 2**63, 10**400, -1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["/Date(99999999999999999999)/", "9" * 5000, "x" * 300, "{}", "[]", "\n", "0.5"]),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)
_FIELDS = st.sampled_from(
    [
        "TenantId",
        "TableName",
        "NumberOfRowsExtracted",
        "JobSubmissionTime",
        "RequestStartDate",
        "ExtractionResultId",
        "CopyActivityId",
        "Errors",
        "ColumnsRequested",
        "PublicKeyVersion",
        "DecryptionKeyDetails",
        "ApplicationId",
    ]
)


def test_random_metadata_through_the_handler_always_returns_with_a_reason(relay: Relay) -> None:
    tenant = relay.new_tenant()

    @GUARD
    @given(changes=st.dictionaries(_FIELDS, _JUNK, max_size=4), depth=st.sampled_from([0, 0, 0, 40, 5000]))
    def example(changes: dict[str, Any], depth: int) -> None:
        raw = json.dumps(doc(TenantId=tenant) | changes).encode()
        if depth:
            raw = b'{"x":' * depth + raw + b"}" * depth
        path = put_metadata(relay, tenant, raw)
        outcome = ingest_metadata_blob(relay.rt, relay.landing.container_name, path)
        assert_accounted(relay, path, outcome)

    example()


_ROW = st.one_of(
    st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=8)), max_size=3).map(
        lambda d: json.dumps(d).encode()
    ),
    st.binary(max_size=40),
    st.sampled_from(
        [
            b"",
            b"   ",
            b"[1,2]",
            b'{"a":' * 3000 + b"1" + b"}" * 3000,
            '{"n": "Zoë"}'.encode("utf-16"),
            b'{"a": NaN}',
            b'{"a": 1e400}',
            b'{"big": 123456789012345678901234567890}',
        ]
    ),
)


def test_random_rows_through_the_handler_always_return_with_a_reason(relay: Relay) -> None:
    tenant = relay.new_tenant()

    @settings(GUARD, max_examples=15)
    @given(rows=st.lists(_ROW, min_size=1, max_size=12))
    def example(rows: list[bytes]) -> None:
        _, path = relay.drop(tenant, rows=None, row_source=iter(rows), root=fresh_root(tenant))
        outcome = ingest_metadata_blob(relay.rt, relay.landing.container_name, path)
        assert_accounted(relay, path, outcome)
        assert outcome.status in ("failed", "delivered"), outcome

    example()


def test_an_unexpected_exception_is_recorded_by_type_and_the_handler_returns(
    relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(raw: bytes) -> Any:
        raise KeyError("row value 'Jane Doe' must never reach the ledger")

    monkeypatch.setattr(shared.ingest, "parse_metadata", broken)
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=5)

    outcome = ingest_metadata_blob(relay.rt, relay.landing.container_name, path)

    assert outcome.status == "failed" and outcome.code == "internal_error"
    [record] = relay.rt.ledger.list(tenant=tenant)
    assert record.state == "failed" and record.reason_code == "internal_error"
    assert "KeyError" in str(record.reason) and "Jane" not in str(record.reason)


def test_an_unexpected_exception_mid_attempt_gives_the_lease_back_with_its_type(
    relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay.rt.retry_delay_seconds = 0.01

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("row value 'Jane Doe'")

    monkeypatch.setattr(shared.ingest, "stream_drop", broken)
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=5)

    outcome = ingest_metadata_blob(relay.rt, relay.landing.container_name, path)

    assert outcome.status == "retrying" and outcome.code == "internal_error"
    [record] = relay.rt.ledger.list(tenant=tenant)
    assert record.state == "in_progress" and not record.lease_active(utc_now())
    assert record.last_error == "internal_error: unexpected ZeroDivisionError"
    monkeypatch.undo()
    assert ingest_metadata_blob(relay.rt, relay.landing.container_name, path).status == "delivered"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_queue_unreachable_when_first_created_is_transient(azurite: Azurite, tmp_path: Path) -> None:
    relay = make_relay(azurite, tmp_path)
    relay.rt.retry_delay_seconds = 0.01
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=20)
    cs = azurite.connection_string
    queue_endpoint = next(p for p in cs.split(";") if p.startswith("QueueEndpoint="))
    broken_env = relay.env | {
        "RelayStorage": cs.replace(queue_endpoint, f"QueueEndpoint=http://127.0.0.1:{_closed_port()}/devstoreaccount1")
    }
    from shared.config import Settings

    broken = Runtime(Settings.from_env(broken_env), storage_kwargs={"retry_total": 0})
    broken.retry_delay_seconds = 0.01

    outcome = ingest_metadata_blob(broken, relay.landing.container_name, path)

    assert outcome.status == "retrying" and outcome.code == "transient", outcome
    [record] = relay.rt.ledger.list(tenant=tenant)
    assert record.state == "in_progress" and "ServiceRequestError" in str(record.last_error)
    assert ingest_metadata_blob(relay.rt, relay.landing.container_name, path).status == "delivered"
    assert rows_of(relay.messages()) == expected_rows(20)


def test_rows_past_the_count_are_never_sent(relay: Relay) -> None:
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=3000)
    meta = json.loads(relay.landing.download_blob(path).readall())
    meta["NumberOfRowsExtracted"] = 10
    relay.landing.upload_blob(path, json.dumps(meta).encode(), overwrite=True)

    outcome = ingest_metadata_blob(relay.rt, relay.landing.container_name, path)

    assert outcome.status == "failed" and outcome.code == "row_count_mismatch"
    rows = [m for m in relay.messages() if m["type"] == "rows"]
    assert sum(len(m["rows"]) for m in rows) <= 10
