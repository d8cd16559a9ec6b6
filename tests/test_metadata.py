"""Metadata.json parsing: every tolerance of SPEC.md and every validation error."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from shared.errors import MetadataError, MetadataNotReady
from shared.metadata import FIELDS, parse_metadata

TENANT = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
WRAPPED = base64.b64encode(bytes(range(256))).decode()
IV = base64.b64encode(bytes(16)).decode()


def doc(**changes: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "CopyActivityId": "7d5b2e4c-2b0a-4a53-8f7e-0c0c1b8f6a11",
        "JobSubmissionTime": "2026-11-23T06:00:00.1234567Z",
        "JobCompletionTime": "2026-11-23T06:31:10Z",
        "RequestStartDate": "2026-11-09T00:00:00Z",
        "RequestEndDate": "2026-11-23T00:00:00Z",
        "ColumnsRequested": "PersonId,MetricDate, Collaboration hours",
        "NumberOfRowsExtracted": 1234,
        "DataFactoryName": "adf",
        "TenantId": TENANT,
        "Errors": [],
        "TableName": "VivaInsightsDataset_PersonReport_v1",
        "ApplicationId": "0b7f3f0e-1d0a-4d6a-9c38-0a5b9c3c2d11",
        "OfficeGeo": "NAM",
        "ExtractionResultId": "r-1",
        "PublicKeyVersion": "0123456789abcdef0123456789abcdef",
        "DecryptionKeyDetails": {"DecryptionKeyType": "File", "value": WRAPPED, "iv": IV},
    }
    d.update(changes)
    return d


def parse(d: dict[str, Any]) -> Any:
    return parse_metadata(json.dumps(d).encode())


def test_all_sixteen_fields_are_read() -> None:
    md = parse(doc())
    assert len(FIELDS) == 16
    assert md.tenant_id == TENANT
    assert md.rows_expected == 1234
    assert md.table_name == "VivaInsightsDataset_PersonReport_v1"
    assert md.columns_requested == ("PersonId", "MetricDate", "Collaboration hours")
    assert md.key is not None and md.key.wrapped_key == bytes(range(256)) and md.key.iv == bytes(16)
    assert md.job_submission_time is not None and md.job_submission_time.microsecond == 123456
    assert md.request_end_date is not None and md.request_end_date.isoformat() == "2026-11-23T00:00:00+00:00"
    assert md.public_key_version == "0123456789abcdef0123456789abcdef"
    assert md.office_geo == "NAM" and md.data_factory_name == "adf" and not md.has_errors


def test_field_names_match_case_insensitively_and_details_may_be_a_string() -> None:
    d = {k.lower(): v for k, v in doc().items()}
    d["decryptionkeydetails"] = json.dumps({"decryptionkeytype": "file", "VALUE": WRAPPED, "IV": IV})
    md = parse(d)
    assert md.key is not None and md.key.wrapped_key == bytes(range(256))


@pytest.mark.parametrize("count", ["1234", 1234.0, " 1234 ", "1234.0"])
def test_counts_as_strings_or_numbers(count: Any) -> None:
    assert parse(doc(NumberOfRowsExtracted=count)).rows_expected == 1234


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-23",
        "2026-11-23 06:00:00",
        1795420800,
        "1795420800000",
        "11/23/2026 6:00:00 AM",
        "/Date(1795420800000)/",
        "Mon, 23 Nov 2026 06:00:00 GMT",
    ],
)
def test_dates_parse_tolerantly(value: Any) -> None:
    md = parse(doc(JobCompletionTime=value))
    assert md.job_completion_time is not None and md.job_completion_time.year == 2026


def test_bom_and_whitespace_are_ignored() -> None:
    assert parse_metadata(b"\xef\xbb\xbf \n" + json.dumps(doc()).encode() + b"\n").tenant_id == TENANT


def test_url_safe_base64_without_padding() -> None:
    wrapped = base64.urlsafe_b64encode(bytes(range(255, -1, -1))).decode().rstrip("=")
    md = parse(doc(DecryptionKeyDetails={"DecryptionKeyType": "File", "value": wrapped, "iv": IV}))
    assert md.key is not None and md.key.wrapped_key == bytes(range(255, -1, -1))


@pytest.mark.parametrize("raw", [b"", b"   ", b'{"TenantId": "3f25', b"\xef\xbb\xbf"])
def test_empty_or_incomplete_is_not_ready(raw: bytes) -> None:
    with pytest.raises(MetadataNotReady):
        parse_metadata(raw)


def test_errors_set_needs_no_key_or_count() -> None:
    d = doc(Errors=["Extraction failed: throttled"])
    del d["DecryptionKeyDetails"], d["NumberOfRowsExtracted"]
    md = parse(d)
    assert md.has_errors and md.errors == ("Extraction failed: throttled",) and md.key is None


@pytest.mark.parametrize("errors", [[], "", None, "[]"])
def test_empty_errors_mean_no_errors(errors: Any) -> None:
    assert not parse(doc(Errors=errors)).has_errors


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"TenantId": "not-a-guid"}, "TenantId 'not-a-guid' is not a GUID"),
        ({"TenantId": None}, "no TenantId"),
        ({"NumberOfRowsExtracted": -1}, "NumberOfRowsExtracted must be a non-negative whole number"),
        ({"NumberOfRowsExtracted": "12 rows"}, "NumberOfRowsExtracted must be a non-negative whole number"),
        ({"NumberOfRowsExtracted": 1.5}, "NumberOfRowsExtracted must be a non-negative whole number"),
        ({"NumberOfRowsExtracted": True}, "NumberOfRowsExtracted must be a non-negative whole number"),
        ({"NumberOfRowsExtracted": None}, "no NumberOfRowsExtracted"),
        ({"TableName": None}, "no TableName"),
        ({"DecryptionKeyDetails": None}, "no DecryptionKeyDetails"),
        ({"DecryptionKeyDetails": "{not json"}, "DecryptionKeyDetails is a string but not JSON"),
        ({"DecryptionKeyDetails": [1, 2]}, "DecryptionKeyDetails must be an object"),
        ({"DecryptionKeyDetails": {"DecryptionKeyType": "Folder", "value": WRAPPED, "iv": IV}}, "must be 'File'"),
        ({"DecryptionKeyDetails": {"DecryptionKeyType": "File", "iv": IV}}, "has no value"),
        ({"DecryptionKeyDetails": {"DecryptionKeyType": "File", "value": WRAPPED}}, "has no iv"),
        ({"DecryptionKeyDetails": {"DecryptionKeyType": "File", "value": "%%%", "iv": IV}}, "not valid Base64"),
        ({"DecryptionKeyDetails": {"DecryptionKeyType": "File", "value": "AAAA", "iv": IV}}, "decodes to 3 bytes"),
        ({"JobCompletionTime": "yesterday"}, "JobCompletionTime is not a date"),
        ({"ApplicationId": "app"}, "ApplicationId 'app' is not a GUID"),
        ({"PublicKeyVersion": "../../etc"}, "is not a key version"),
        ({"ColumnsRequested": 12}, "ColumnsRequested must be"),
    ],
)
def test_validation_errors_are_precise(changes: dict[str, Any], message: str) -> None:
    d = doc()
    for k, v in changes.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    with pytest.raises(MetadataError) as info:
        parse(d)
    assert message in str(info.value)


def test_not_an_object() -> None:
    with pytest.raises(MetadataError, match="must hold a JSON object"):
        parse_metadata(b"[1, 2]")


def test_conflicting_duplicate_case_fields() -> None:
    raw = json.dumps(doc()).replace('"TableName"', '"tablename": "X", "TableName"', 1).encode()
    with pytest.raises(MetadataError, match="twice"):
        parse_metadata(raw)


def test_tenant_id_in_braces() -> None:
    assert parse(doc(TenantId="{" + TENANT.upper() + "}")).tenant_id == TENANT
