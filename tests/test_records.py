"""The typed records of the three Table stores and their codecs: the stored format stays as it was.

Each record round-trips through its codec and through a real table (Azurite); the column names and
Table types are pinned to what earlier versions wrote, so existing tables keep working; whole numbers
above 2**31 stay Int64; a column this version does not know survives a rewrite.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from azure.core.exceptions import ResourceModifiedError
from azure.data.tables import EdmType, EntityProperty, TableClient

from devtools.clock import ManualClock
from shared.droprecord import DROP_CODEC, STATES, DropRecord, UnknownDropState
from shared.ledger import TableDropLedger
from shared.runrecord import RUN_CODEC
from shared.runs import RunLedger
from shared.tenants import Tenant, TenantCodec, TenantRegistry
from tests.conftest import Relay

BIG = 2**31 + 7  # above Int32: the Tables SDK refuses a plain int this large
AT = datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)

#: Every column the drop ledger wrote before the typed records (shared/ledger.py, ingest.py, cleanup.py,
#: rowplan.py, manifest.py), with its Table type.
DROP_COLUMNS: dict[str, str] = {
    **dict.fromkeys(
        [
            "State",
            "Account",
            "Container",
            "DropRoot",
            "MetadataPath",
            "Generation",
            "RunId",
            "LeaseOwner",
            "Reason",
            "ReasonCode",
            "LastError",
            "TableName",
            "ExtractionResultId",
            "CopyActivityId",
            "PublicKeyVersion",
            "DataFactoryName",
            "OfficeGeo",
            "MetadataTenantId",
            "Encoding",
            "Queue",
            "RowSettings",
            "ReadBlobs",
            "Algorithm",
            "KeyVersion",
            "SchemaReport",
            "PreviousReason",
            "PreviousReasonCode",
            "DeletingOwner",
            "DeleteReason",
            "StateBeforeDelete",
            "KeptBlobs",
            "CleanupNote",
            "OrphanDeleteReason",
        ],
        "str",
    ),
    **dict.fromkeys(
        [
            "Attempts",
            "CheckpointSeq",
            "CheckpointRows",
            "RowsExpected",
            "PackerVersion",
            "Rows",
            "Messages",
            "MessagesPutThisAttempt",
            "DataFiles",
            "CiphertextBytes",
            "PlaintextBytes",
            "ResumedFromSeq",
            "PreviousAttempts",
            "BlobsDeleted",
            "BlobsAlreadyGone",
            "BlobsKept",
            "OrphanBlobsDeleted",
            "OrphanBlobsKept",
            "OrphanBlobsLeased",
        ],
        "int",
    ),
    **dict.fromkeys(["Seconds", "MBps"], "float"),
    "SchemaDrift": "bool",
    **dict.fromkeys(
        [
            "FirstSeen",
            "LeaseUntil",
            "StartedAt",
            "UpdatedAt",
            "CompleteSentAt",
            "DeliveredAt",
            "FailedAt",
            "ReprocessedAt",
            "DeletingUntil",
            "DeletingSince",
            "DeletedAt",
            "OrphanDeletedAt",
        ],
        "datetime",
    ),
}
#: The run ledger's columns (shared/runs.py before the typed records).
RUN_COLUMNS: dict[str, str] = {
    **dict.fromkeys(
        [
            "Status",
            "Message",
            "DisplayName",
            "Trigger",
            "SubscriptionId",
            "ResourceGroup",
            "FactoryName",
            "Pipeline",
            "Parameters",
            "DropId",
            "DropState",
        ],
        "str",
    ),
    **dict.fromkeys(["Watch", "NoDropAlert"], "bool"),
    **dict.fromkeys(["StartedAt", "RunStart", "RunEnd", "LastCheckedAt", "NoDropAlertAt"], "datetime"),
}
#: The tenant registry's columns (shared/tenants.py before the codec).
TENANT_COLUMNS: dict[str, str] = {
    **dict.fromkeys(
        [
            "DisplayName",
            "FactorySubscriptionId",
            "FactoryResourceGroup",
            "FactoryName",
            "Pipeline",
            "Parameters",
            "ConsentDate",
            "DisabledReason",
        ],
        "str",
    ),
    **dict.fromkeys(["IncludeDirectory", "Enabled"], "bool"),
    **dict.fromkeys(["AddedAt", "UpdatedAt"], "datetime"),
}

_SAMPLES: dict[str, Any] = {"str": "x", "int": BIG, "float": 12.5, "bool": True, "datetime": AT}


def _full(codec: Any, keys: tuple[str, str]) -> Any:
    """A record of ``codec`` with every field set to a sample of its column's type (distinct strings)."""
    values = {c.attr: (f"{c.attr}-value" if c.kind == "str" else _SAMPLES[c.kind]) for c in codec.columns}
    return codec.record_type(*keys, **values)


def _python_type(value: Any) -> str:
    if isinstance(value, EntityProperty):
        return "int64" if value.edm_type == EdmType.INT64 else str(value.edm_type)
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, datetime):
        return "datetime"
    return {str: "str", float: "float", int: "int32"}[type(value)]


def _stored_types(raw: Any) -> dict[str, str]:
    """Each column of a raw entity read from the table, by the type the table holds it as."""
    return {k: _python_type(v) for k, v in dict(raw).items() if k not in ("PartitionKey", "RowKey")}


def _expected(columns: dict[str, str]) -> dict[str, str]:
    return {k: ("int64" if kind == "int" else kind) for k, kind in columns.items()}


def _table(relay: Relay) -> TableClient:
    return relay.rt.table(f"records{uuid.uuid4().hex[:12]}")


# -- the codecs alone -------------------------------------------------------------------------------


@pytest.mark.parametrize(("codec", "columns"), [(DROP_CODEC, DROP_COLUMNS), (RUN_CODEC, RUN_COLUMNS)])
def test_each_codec_knows_exactly_the_columns_earlier_versions_wrote(codec: Any, columns: dict[str, str]) -> None:
    assert {c.name: c.kind for c in codec.columns} == columns
    record = _full(codec, ("tenant-1", "row-1"))
    entity = codec.encode(record)
    assert set(entity) == {"PartitionKey", "RowKey", *columns}
    assert (entity["PartitionKey"], entity["RowKey"]) == ("tenant-1", "row-1")
    assert codec.decode(entity) == record


def test_a_tenant_round_trips_through_its_codec_with_the_same_columns() -> None:
    tenant = Tenant(
        tenant_id=str(uuid.uuid4()),
        display_name="Contoso",
        factory_subscription_id=str(uuid.uuid4()),
        factory_resource_group="rg",
        factory_name="adf",
        pipeline="p",
        parameters={"DefaultLookbackWindowDays": 7},
        include_directory=True,
        enabled=False,
        consent_date=date(2026, 1, 2),
        disabled_reason="paused",
        added_at=AT,
        updated_at=AT + timedelta(days=1),
    )
    entity = TenantCodec.encode(tenant)
    assert set(entity) == {"PartitionKey", "RowKey", *TENANT_COLUMNS}
    assert (entity["Parameters"], entity["ConsentDate"]) == ('{"DefaultLookbackWindowDays": 7}', "2026-01-02")
    assert TenantCodec.decode(entity) == tenant


def test_an_unknown_or_mistyped_column_is_kept_in_extra_and_written_back() -> None:
    entity = {"PartitionKey": "t", "RowKey": "d", "State": "waiting", "Rows": "many", "NewerColumn": 5}
    record = DROP_CODEC.decode(entity)
    assert record.state == "waiting" and record.rows is None  # "many" is no int: kept as it was
    assert record.extra == {"Rows": "many", "NewerColumn": 5}
    written = DROP_CODEC.encode(record)
    assert {k: written[k] for k in entity} == entity
    # The columns every row has are written with their defaults; nothing else is added.
    assert set(written) - set(entity) == {"Account", "Container", "DropRoot", "MetadataPath", "Generation", "RunId"} | {
        "Attempts",
        "CheckpointSeq",
        "CheckpointRows",
    }
    assert DROP_CODEC.encode(dataclasses.replace(record, rows=3))["Rows"] == 3  # a value set by the code wins


def test_a_drop_record_with_an_unknown_state_is_never_written(relay: Relay) -> None:
    ledger = TableDropLedger(_table(relay))
    with pytest.raises(UnknownDropState, match="done"):
        ledger._insert(DropRecord("t", "d", state="done"))
    assert "done" not in STATES


def test_an_update_naming_no_field_is_refused(relay: Relay) -> None:
    ledger = TableDropLedger(_table(relay))
    record = ledger._insert(DropRecord("t", "d", state="waiting"))
    with pytest.raises(TypeError, match="Rows"):
        ledger.update_if(record, lambda r: True, {"Rows": 3})  # a column name, not a field


# -- through a real table ----------------------------------------------------------------------


def test_a_full_drop_record_is_stored_with_the_old_column_types_and_read_back_equal(relay: Relay) -> None:
    table = _table(relay)
    ledger = TableDropLedger(table)
    record = dataclasses.replace(_full(DROP_CODEC, ("tenant-1", "drop-1")), state="delivered")
    stored = ledger._insert(record)
    assert stored.etag
    assert _stored_types(table.get_entity("tenant-1", "drop-1")) == _expected(DROP_COLUMNS)
    again = ledger.get("tenant-1", "drop-1")
    assert again == record and again is not None and again.etag == stored.etag
    assert again.rows == BIG and again.first_seen == AT and again.schema_drift is True and again.mbps == 12.5


def test_a_full_run_record_is_stored_with_the_old_column_types_and_read_back_equal(relay: Relay) -> None:
    table = _table(relay)
    runs = RunLedger(table)
    record = _full(RUN_CODEC, ("tenant-1", "run-1"))
    runs.insert(record)
    assert _stored_types(table.get_entity("tenant-1", "run-1")) == _expected(RUN_COLUMNS)
    assert runs.get("tenant-1", "run-1") == record


def test_columns_a_record_does_not_know_survive_every_store_rewriting_the_row(relay: Relay) -> None:
    future = {"FutureText": "kept", "FutureCount": EntityProperty(BIG, EdmType.INT64)}
    drops, runs, tenants = _table(relay), _table(relay), _table(relay)
    ledger, run_ledger = TableDropLedger(drops), RunLedger(runs)
    registry = TenantRegistry(tenants)
    tenant = registry.add(Tenant(tenant_id=str(uuid.uuid4()), display_name="Contoso"))

    drops.create_table()
    runs.create_table()
    drops.create_entity({"PartitionKey": "t", "RowKey": "d", "State": "failed", "Attempts": 2, **future})
    runs.create_entity({"PartitionKey": "t", "RowKey": "r", "Status": "Queued", "Watch": True, **future})
    tenants.upsert_entity({**tenants.get_entity("tenant", tenant.tenant_id), **future})

    record = ledger.get("t", "d")
    assert record is not None and record.extra == {"FutureText": "kept", "FutureCount": BIG}
    assert ledger.reopen_failed(record, "again") is not None
    run = run_ledger.get("t", "r")
    assert run is not None and run_ledger.update(run, watch=False).watch is False
    registry.disable(tenant.tenant_id, "paused")

    for table, keys in ((drops, ("t", "d")), (runs, ("t", "r")), (tenants, ("tenant", tenant.tenant_id))):
        raw = table.get_entity(*keys)
        assert raw["FutureText"] == "kept"
        assert _python_type(raw["FutureCount"]) == "int64" and raw["FutureCount"].value == BIG
    assert ledger.get("t", "d").state == "waiting"  # type: ignore[union-attr]
    assert registry.require(tenant.tenant_id).enabled is False


def test_the_tenant_registry_and_run_ledger_take_their_time_from_the_injected_clock(relay: Relay) -> None:
    clock = ManualClock(datetime(2030, 1, 1, tzinfo=UTC))
    registry = TenantRegistry(_table(relay), clock=clock)
    added = registry.add(Tenant(tenant_id=str(uuid.uuid4())))
    assert added.added_at == added.updated_at == clock()
    clock.advance(days=3)
    disabled = registry.disable(added.tenant_id, "paused")
    assert (disabled.added_at, disabled.updated_at) == (datetime(2030, 1, 1, tzinfo=UTC), clock())
    assert registry.require(added.tenant_id).updated_at == clock()
    assert RunLedger(_table(relay), clock=clock).clock() == clock()


def test_a_stale_tenant_write_is_refused_by_its_etag_and_retried_on_a_fresh_read(relay: Relay) -> None:
    registry = TenantRegistry(_table(relay))
    tenant = registry.add(Tenant(tenant_id=str(uuid.uuid4()), display_name="first"))
    newer = registry.add(dataclasses.replace(tenant, display_name="second"), replace_existing=True)
    assert newer.etag != tenant.etag
    with pytest.raises(ResourceModifiedError):
        registry._replace(dataclasses.replace(tenant, display_name="stale"))  # the ETag of the first write
    assert registry.require(tenant.tenant_id).display_name == "second"
    assert registry.disable(tenant.tenant_id).display_name == "second"  # read, changed, written with its ETag
