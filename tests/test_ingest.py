"""A drop through the ingest function's own code into a real Azurite queue, and every bad input."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from azure.functions.blob import InputStream

import shared.runtime
from devtools.simulate import DropVariant, generate_rows
from shared.ingest import ingest_metadata_blob, recheck_drops
from tests.conftest import Relay, make_relay


def rows_of(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in sorted((m for m in messages if m["type"] == "rows"), key=lambda m: m["seq"]):
        out.extend(m["rows"])
    return out


def expected_rows(n: int, shape: str = "display") -> list[dict[str, Any]]:
    return [json.loads(r) for r in generate_rows(n, shape=shape)]


@pytest.fixture
def function_env(relay: Relay, monkeypatch: pytest.MonkeyPatch) -> Relay:
    """Point the process-wide runtime (what the Functions host uses) at this relay."""
    for key, value in relay.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(shared.runtime, "_runtime", None)
    return relay


def call_ingest_function(relay: Relay, blob_name: str) -> None:
    """Invoke the blob-triggered function as the host would (InputStream with container/path)."""
    from function_app import create_app

    fn = next(f for f in create_app().get_functions() if f.get_function_name() == "ingest_drop")
    data = relay.landing.download_blob(blob_name).readall()
    stream = InputStream(
        data=data, name=f"{relay.landing.container_name}/{blob_name}", uri=f"{relay.landing.url}/{blob_name}"
    )
    fn.get_user_function()(stream)


def test_drop_delivered_row_for_row_through_the_function(function_env: Relay) -> None:
    relay = function_env
    tenant = relay.new_tenant()
    _sim, path = relay.drop(tenant, rows=700)
    call_ingest_function(relay, path)

    messages = relay.messages()
    assert rows_of(messages) == expected_rows(700)
    complete = [m for m in messages if m["type"] == "complete"]
    assert len(complete) == 1
    rows_msgs = [m for m in messages if m["type"] == "rows"]
    assert complete[0]["rows"] == 700 and complete[0]["messages"] == len(rows_msgs)
    assert sorted(m["seq"] for m in rows_msgs) == list(range(len(rows_msgs)))
    assert complete[0]["seq"] == len(rows_msgs)
    assert {m["tenant"] for m in messages} == {tenant}
    assert {m["table"] for m in messages} == {"VivaInsightsDataset_PersonReport_v1"}

    [record] = list(relay.rt.ledger.list(tenant=tenant))
    assert record.state == "delivered"
    assert record.rows == 700
    assert record.messages == len(rows_msgs)
    assert record.algorithm == "RSA-OAEP-256"
    assert record.run_id == path.split("/")[0]
    assert record.mbps is not None and record.mbps > 0
    # Delivery never deletes: cleanup does, later.
    assert path in relay.blob_names()


@pytest.mark.parametrize("encoding", ["json", "base64", "gzip-base64"])
def test_every_message_fits_the_queue_limit_as_stored(azurite: Any, tmp_path: Any, encoding: str) -> None:
    relay = make_relay(azurite, tmp_path, DOWNSTREAM_MESSAGE_ENCODING=encoding)
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=400, variant=DropVariant(shape="underscore"))
    outcome = ingest_metadata_blob(relay.rt, relay.landing.container_name, path)
    assert outcome.status == "delivered", outcome.reason
    raw = []
    while batch := list(relay.rt.queue.receive_messages(messages_per_page=32, max_messages=32, visibility_timeout=60)):
        for m in batch:
            raw.append(m.content)
            relay.rt.queue.delete_message(m)
    assert raw and max(len(c.encode()) for c in raw) <= 64 * 1024
    assert len(raw) == outcome.messages + 1
    from shared.messages import decode_message

    assert rows_of([decode_message(c) for c in raw]) == expected_rows(400, "underscore")


def test_messages_never_expire_by_default(relay: Relay) -> None:
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=10)
    ingest_metadata_blob(relay.rt, relay.landing.container_name, path)
    [m, *_] = list(relay.rt.queue.peek_messages(max_messages=1))
    assert m.expires_on is None or m.expires_on.year >= 9999


def test_duplicate_event_delivers_once(relay: Relay) -> None:
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=120)
    first = ingest_metadata_blob(relay.rt, relay.landing.container_name, path)
    second = ingest_metadata_blob(relay.rt, relay.landing.container_name, path)
    assert first.status == "delivered"
    assert second.status == "skipped" and "delivered" in second.reason
    messages = relay.messages()
    assert len([m for m in messages if m["type"] == "complete"]) == 1
    assert rows_of(messages) == expected_rows(120)


def test_event_for_another_container_or_blob_is_ignored(relay: Relay) -> None:
    assert ingest_metadata_blob(relay.rt, "other", "x/metadata/JobMetadata/Metadata.json").status == "ignored"
    tenant = relay.new_tenant()
    _sim, _ = relay.drop(tenant, rows=5)
    data_blob = next(n for n in relay.blob_names() if "metadata/" not in n)
    assert ingest_metadata_blob(relay.rt, relay.landing.container_name, data_blob).status == "ignored"
    assert list(relay.rt.ledger.list()) == []


def _assert_failed(relay: Relay, tenant: str, code: str, words: str, before: list[str]) -> None:
    records = [r for r in relay.rt.ledger.list() if r.tenant == tenant]
    assert len(records) == 1
    record = records[0]
    assert record.state == "failed"
    assert record.reason_code == code
    assert words in str(record.reason)
    assert relay.blob_names() == before  # nothing deleted
    messages = relay.messages()
    assert not [m for m in messages if m["type"] == "complete"]
    # Once an attempt has started, consumers are told not to use what was sent: one `failed` message.
    failed = [m for m in messages if m["type"] == "failed"]
    started = code in (
        "integrity",
        "bad_row",
        "row_count_mismatch",
        "row_too_large",
        "key_unwrap_failed",
        "key_not_found",
    )
    assert [(m["code"], m["seq"]) for m in failed] == ([(code, None)] if started else [])


def test_extraction_errors_recorded_and_stopped(function_env: Relay) -> None:
    relay = function_env
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=0, errors=["Request was throttled by the source"])
    before = relay.blob_names()
    call_ingest_function(relay, path)  # returns normally: no crash loop
    _assert_failed(relay, tenant, "extraction_errors", "throttled", before)


def test_tenant_mismatch_is_refused(relay: Relay) -> None:
    tenant = relay.new_tenant()
    other = relay.new_tenant()
    # Metadata says `tenant`, but the drop lies under the other tenant's folder.
    _, path = relay.drop(tenant, rows=20, root=f"{uuid.uuid4()}/VivaInsights/{other}")
    before = relay.blob_names()
    outcome = ingest_metadata_blob(relay.rt, relay.landing.container_name, path)
    assert outcome.status == "failed" and outcome.code == "tenant_mismatch"
    _assert_failed(relay, other, "tenant_mismatch", tenant, before)


def test_wrong_key_fails_with_reason(relay: Relay) -> None:
    tenant = relay.new_tenant()
    stranger = relay.new_tenant()
    _, path = relay.drop(tenant, rows=20, public_tenant=stranger)  # wrapped with another tenant's key
    before = relay.blob_names()
    outcome = ingest_metadata_blob(relay.rt, relay.landing.container_name, path)
    assert outcome.status == "failed"
    _assert_failed(relay, tenant, "key_unwrap_failed", "could not be unwrapped", before)


def test_missing_key_fails_with_reason(relay: Relay) -> None:
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=20)
    (relay.keys.current_path(tenant)).unlink()
    before = relay.blob_names()
    assert ingest_metadata_blob(relay.rt, relay.landing.container_name, path).status == "failed"
    _assert_failed(relay, tenant, "key_not_found", "no key for tenant", before)


def _data_blob(relay: Relay) -> str:
    return next(n for n in relay.blob_names() if "/metadata/" not in n)


def test_truncated_ciphertext_fails(relay: Relay) -> None:
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=300)
    name = _data_blob(relay)
    data = relay.landing.download_blob(name).readall()
    relay.landing.upload_blob(name, data[: len(data) // 2 + 5], overwrite=True)
    before = relay.blob_names()
    assert ingest_metadata_blob(relay.rt, relay.landing.container_name, path).status == "failed"
    _assert_failed(relay, tenant, "integrity", "truncated", before)


def test_truncated_on_a_block_boundary_fails(relay: Relay) -> None:
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=300)
    name = _data_blob(relay)
    data = relay.landing.download_blob(name).readall()
    relay.landing.upload_blob(name, data[: (len(data) // 2) // 16 * 16], overwrite=True)
    before = relay.blob_names()
    assert ingest_metadata_blob(relay.rt, relay.landing.container_name, path).status == "failed"
    _assert_failed(relay, tenant, "integrity", "", before)


def test_tampered_ciphertext_fails(relay: Relay) -> None:
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=300)
    name = _data_blob(relay)
    data = bytearray(relay.landing.download_blob(name).readall())
    data[len(data) // 3] ^= 0x55
    relay.landing.upload_blob(name, bytes(data), overwrite=True)
    before = relay.blob_names()
    assert ingest_metadata_blob(relay.rt, relay.landing.container_name, path).status == "failed"
    _assert_failed(relay, tenant, "integrity", "", before)


def test_malformed_line_fails(relay: Relay) -> None:
    tenant = relay.new_tenant()
    good = list(generate_rows(50))
    bad = [*good[:20], b'{"PersonId": "x", "Collaboration hours": ', *good[20:]]
    _, path = relay.drop(tenant, rows=None, row_source=iter(bad))
    before = relay.blob_names()
    assert ingest_metadata_blob(relay.rt, relay.landing.container_name, path).status == "failed"
    _assert_failed(relay, tenant, "bad_row", "row 21", before)


def test_row_count_mismatch_fails(relay: Relay) -> None:
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=40)
    doc = json.loads(relay.landing.download_blob(path).readall())
    doc["NumberOfRowsExtracted"] = 41
    relay.landing.upload_blob(path, json.dumps(doc).encode(), overwrite=True)
    before = relay.blob_names()
    assert ingest_metadata_blob(relay.rt, relay.landing.container_name, path).status == "failed"
    _assert_failed(relay, tenant, "row_count_mismatch", "40 rows", before)


def test_malformed_metadata_fails(relay: Relay) -> None:
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=10)
    doc = json.loads(relay.landing.download_blob(path).readall())
    doc["NumberOfRowsExtracted"] = -3
    relay.landing.upload_blob(path, json.dumps(doc).encode(), overwrite=True)
    before = relay.blob_names()
    assert ingest_metadata_blob(relay.rt, relay.landing.container_name, path).status == "failed"
    _assert_failed(relay, tenant, "bad_metadata", "NumberOfRowsExtracted", before)


def test_single_row_too_large_fails(azurite: Any, tmp_path: Any) -> None:
    relay = make_relay(azurite, tmp_path, DOWNSTREAM_MESSAGE_ENCODING="json")
    tenant = relay.new_tenant()
    huge = b'{"PersonId":"p","Notes":"' + b"x" * 70_000 + b'"}'
    _, path = relay.drop(tenant, rows=None, row_source=iter([*generate_rows(3), huge]))
    before = relay.blob_names()
    assert ingest_metadata_blob(relay.rt, relay.landing.container_name, path).status == "failed"
    _assert_failed(relay, tenant, "row_too_large", "row 4", before)


def test_empty_metadata_waits_then_recheck_delivers(relay: Relay) -> None:
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=30)
    body = relay.landing.download_blob(path).readall()
    relay.landing.upload_blob(path, b"", overwrite=True)  # ADLS CreateFile: the empty file first
    outcome = ingest_metadata_blob(relay.rt, relay.landing.container_name, path)
    assert outcome.status == "waiting"
    [record] = list(relay.rt.ledger.list(tenant=tenant))
    assert record.state == "waiting"

    relay.landing.upload_blob(path, body[: len(body) // 2], overwrite=True)  # incomplete JSON
    assert recheck_drops(relay.rt)[0].status == "waiting"

    relay.landing.upload_blob(path, body, overwrite=True)  # FlushWithClose: content committed
    outcomes = recheck_drops(relay.rt)
    assert [o.status for o in outcomes] == ["delivered"]
    assert rows_of(relay.messages()) == expected_rows(30)


def test_per_tenant_container_layout(azurite: Any, tmp_path: Any) -> None:
    tenant = str(uuid.uuid4())
    relay = make_relay(azurite, tmp_path, LANDING_CONTAINER=tenant)
    relay.keys.create(tenant)
    _, path = relay.drop(tenant, rows=25, root="2026-11-23")
    outcome = ingest_metadata_blob(relay.rt, tenant, path)
    assert outcome.status == "delivered", outcome.reason
    assert rows_of(relay.messages()) == expected_rows(25)


@pytest.mark.parametrize(
    "variant",
    [
        DropVariant(rsa_padding="RSA-OAEP"),
        DropVariant(key_text="base64", iv_text="base64"),
        DropVariant(key_text="hex", iv_text="hex"),
        DropVariant(details_as_string=True, field_case="lower", counts_as_strings=True),
        DropVariant(parts=3, members=2),
        DropVariant(crlf=True, bom=True, final_newline=False),
        DropVariant(shape="underscore", field_case="upper"),
    ],
    ids=["oaep-sha1", "key-base64", "key-hex", "details-string", "parts-members", "crlf-bom", "underscore"],
)
def test_unconfirmed_variants_are_delivered(relay: Relay, variant: DropVariant) -> None:
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=150, variant=variant)
    outcome = ingest_metadata_blob(relay.rt, relay.landing.container_name, path)
    assert outcome.status == "delivered", outcome.reason
    assert outcome.algorithm == variant.rsa_padding
    assert rows_of(relay.messages()) == expected_rows(150, variant.shape)


def test_rsa1_5_needs_explicit_opt_in(azurite: Any, tmp_path: Any) -> None:
    relay = make_relay(azurite, tmp_path)
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=10, variant=DropVariant(rsa_padding="RSA1_5"))
    assert ingest_metadata_blob(relay.rt, relay.landing.container_name, path).code == "key_unwrap_failed"

    allowed = make_relay(azurite, tmp_path / "b", ALLOW_RSA1_5="true")
    allowed.keys.path.mkdir(parents=True, exist_ok=True)
    for p in relay.keys.path.iterdir():
        (allowed.keys.path / p.name).write_bytes(p.read_bytes())
    _, path2 = allowed.drop(tenant, rows=10, variant=DropVariant(rsa_padding="RSA1_5"))
    outcome = ingest_metadata_blob(allowed.rt, allowed.landing.container_name, path2)
    assert outcome.status == "delivered" and outcome.algorithm == "RSA1_5"


def test_late_duplicate_event_after_cleanup_is_skipped(azurite: Any, tmp_path: Any) -> None:
    relay = make_relay(azurite, tmp_path, DELETE_AFTER_DELIVERY="true")
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=15)
    body = relay.landing.download_blob(path).readall()
    assert ingest_metadata_blob(relay.rt, relay.landing.container_name, path, body).status == "delivered"
    assert relay.blob_names() == []  # delivered, then deleted right away
    late = ingest_metadata_blob(relay.rt, relay.landing.container_name, path, body)
    assert late.status == "skipped" and late.reason == "already deleted"
    assert len([m for m in relay.messages() if m["type"] == "complete"]) == 1


def test_drop_at_container_root_ignores_a_drop_nested_below_it(azurite: Any, tmp_path: Any) -> None:
    tenant = str(uuid.uuid4())
    relay = make_relay(azurite, tmp_path, LANDING_CONTAINER=tenant)
    relay.keys.create(tenant)
    _, root_path = relay.drop(tenant, rows=12, root="")
    _, nested_path = relay.drop(tenant, rows=7, root="2026-11-30")
    first = ingest_metadata_blob(relay.rt, tenant, root_path)
    second = ingest_metadata_blob(relay.rt, tenant, nested_path)
    assert (first.status, first.rows) == ("delivered", 12), first.reason
    assert (second.status, second.rows) == ("delivered", 7), second.reason


def test_metadata_before_its_data_waits_then_delivers(relay: Relay) -> None:
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=40)
    name = _data_blob(relay)
    data = relay.landing.download_blob(name).readall()
    relay.landing.upload_blob(name, b"", overwrite=True)  # the copy has created the file, not filled it
    first = ingest_metadata_blob(relay.rt, relay.landing.container_name, path)
    assert (first.status, first.code) == ("waiting", "no_data_files")
    relay.landing.delete_blob(name)  # or the file is not there at all yet
    assert recheck_drops(relay.rt)[0].status == "waiting"
    [record] = list(relay.rt.ledger.list(tenant=tenant))
    assert record.state == "waiting" and "no data file" in str(record.reason)

    relay.landing.upload_blob(name, data)
    assert [o.status for o in recheck_drops(relay.rt)] == ["delivered"]
    assert rows_of(relay.messages()) == expected_rows(40)


def test_a_later_run_at_the_same_root_is_a_new_drop(azurite: Any, tmp_path: Any) -> None:
    """Per-tenant container with every week's drop at the container root: each week is delivered."""
    from shared.cleanup import find_orphans

    tenant = str(uuid.uuid4())
    relay = make_relay(azurite, tmp_path, LANDING_CONTAINER=tenant, DELETE_AFTER_DELIVERY="true")
    relay.keys.create(tenant)
    _, path = relay.drop(tenant, rows=11, root="")
    week1_body = relay.landing.download_blob(path).readall()
    week1 = ingest_metadata_blob(relay.rt, tenant, path)
    assert week1.status == "delivered" and relay.blob_names() == []

    _, path2 = relay.drop(tenant, rows=13, root="")
    assert path2 == path
    week2 = ingest_metadata_blob(relay.rt, tenant, path)
    assert week2.status == "delivered", week2.reason
    assert week2.drop_id != week1.drop_id and week2.rows == 13
    # A late duplicate of week 1's event still changes nothing.
    assert ingest_metadata_blob(relay.rt, tenant, path, week1_body).status == "skipped"
    drops = {m["drop"] for m in relay.messages() if m["type"] == "complete"}
    assert drops == {week1.drop_id, week2.drop_id}
    assert find_orphans(relay.rt) == []


def test_a_metadata_name_in_another_case_is_read_back_by_its_own_name(relay: Relay) -> None:
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=9)
    body = relay.landing.download_blob(path).readall()
    relay.landing.delete_blob(path)
    odd = path.replace("metadata/JobMetadata/Metadata.json", "Metadata/jobmetadata/METADATA.json")
    relay.landing.upload_blob(odd, b"")
    assert ingest_metadata_blob(relay.rt, relay.landing.container_name, odd).status == "waiting"
    relay.landing.upload_blob(odd, body, overwrite=True)
    assert [o.status for o in recheck_drops(relay.rt)] == ["delivered"]
