"""The contract check on rows as the byte path hands them over: each kind of drift, Microsoft's shapes."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import shared.contract as contract_module
from devtools.simulate import DropVariant, build_metadata, generate_rows
from shared.contract import (
    REPORT_CHAR_LIMIT,
    CheckingValidator,
    ContractCheck,
    contract_for,
    match_requested,
    report_json,
)
from shared.metadata import DropMetadata, parse_metadata

PERSON_REPORT = "VivaInsightsDataset_PersonReport_v1"
USERS = "BasicDataSet_v0.User_v1"
NOW = datetime(2025, 3, 10, tzinfo=UTC)
WEEK_1 = "2025-02-24T00:00:00Z"
WEEK_2 = "2025-03-03T00:00:00Z"


def metadata(table: str = PERSON_REPORT, requested: str = "", **fields: Any) -> DropMetadata:
    doc = build_metadata(
        tenant_id=str(uuid.uuid4()),
        rows=1,
        wrapped_key=b"k" * 256,
        iv=b"i" * 16,
        key_version="v1",
        variant=DropVariant(),
        table_name=table,
        now=NOW,
    )
    doc["ColumnsRequested"] = requested
    doc.update(fields)
    return parse_metadata(json.dumps(doc).encode())


def clean_rows(people: int = 4, weeks: tuple[str, ...] = (WEEK_1, WEEK_2)) -> list[dict[str, Any]]:
    """Rows exactly as the published schema says: every column, the right types, in the window."""
    contract = contract_for(PERSON_REPORT)
    assert contract is not None
    rows = []
    for p in range(people):
        person = str(uuid.UUID(int=p + 1))
        for w, week in enumerate(weeks):
            row: dict[str, Any] = {}
            for name, kind in contract.columns.items():
                row[name] = {"double": 1.5 * (p + w), "boolean": True, "datetime": week, "string": person}[kind]
            rows.append(row)
    return rows


def check(
    rows: list[dict[str, Any]], md: DropMetadata | None = None, **kw: Any
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run rows through the checking validator as the byte path does; (report, findings)."""
    md = md or metadata()
    c = ContractCheck(md, **kw)
    validator = CheckingValidator(c)
    lines = [json.dumps(r).encode() for r in rows]
    for start in range(0, len(lines), 7):  # several batches, as decode_rows gives them
        assert validator.validate(lines[start : start + 7]) == lines[start : start + 7]
    report = c.report()
    return report, report["findings"]


def kinds(findings: list[dict[str, Any]]) -> list[str]:
    return [f["check"] for f in findings]


def test_the_two_shipped_contracts() -> None:
    person = contract_for(PERSON_REPORT)
    assert person is not None and len(person.columns) == 70
    types = list(person.columns.values())
    assert types.count("double") == 67
    assert person.columns["IsActive"] == "boolean" and person.columns["MetricDate"] == "datetime"
    assert person.columns["ObjectId"] == "string"
    users = contract_for(USERS)
    assert users is not None and users.person_column == "id"
    assert {"birthday", "mobilePhone", "interests", "mail", "userPrincipalName"} <= set(users.columns)
    assert set(users.identifier_columns) == {"id", "mail", "userPrincipalName"}
    assert "Microsoft" in users.source and "User_v1" in users.source


def test_rows_that_fit_the_contract_have_no_finding() -> None:
    report, findings = check(clean_rows())
    assert findings == [] and report["drift"] is False
    assert report["rows"] == 8 and report["rows_fully_checked"] == 8
    assert report["contract"] == PERSON_REPORT


def test_a_missing_column() -> None:
    rows = clean_rows()
    for r in rows:
        del r["Email hours"]
    _, findings = check(rows)
    assert findings == [{"check": "missing", "column": "Email hours", "rows_without": 8}]


def test_a_column_missing_from_some_rows() -> None:
    rows = clean_rows()
    del rows[2]["Chat hours"]
    _, findings = check(rows)
    assert findings == [{"check": "missing", "column": "Chat hours", "rows_without": 1}]


def test_an_extra_column() -> None:
    rows = clean_rows()
    for r in rows:
        r["Focus hours"] = 3.0
    _, findings = check(rows)
    assert findings == [{"check": "unexpected", "column": "Focus hours", "rows": 8}]


def test_a_renamed_column() -> None:
    rows = clean_rows()
    for r in rows:
        r["Small-group meeting, call, and chat hours"] = r.pop("Small-group meeting call and chat hours")
    _, findings = check(rows)
    assert findings == [
        {
            "check": "renamed",
            "expected": "Small-group meeting call and chat hours",
            "seen": "Small-group meeting, call, and chat hours",
            "rows": 8,
        }
    ]


def test_bad_types_are_counted_with_row_positions_only() -> None:
    rows = clean_rows()
    rows[1]["Email hours"] = "twelve"
    rows[5]["Email hours"] = "NaN"
    rows[3]["IsActive"] = "maybe"
    rows[4]["MetricDate"] = "last week"
    rows[6]["ObjectId"] = 12345
    rows[7]["Chat hours"] = "42.5"  # a numeric string fits a double
    report, findings = check(rows)
    by_column = {f["column"]: f for f in findings if f["check"] == "bad_type"}
    assert by_column["Email hours"] == {
        "check": "bad_type",
        "column": "Email hours",
        "type": "double",
        "count": 2,
        "examples": [{"row": 1}, {"row": 5}],
    }
    assert by_column["IsActive"]["examples"] == [{"row": 3}]
    assert by_column["MetricDate"]["type"] == "datetime" and by_column["MetricDate"]["count"] == 1
    assert by_column["ObjectId"]["type"] == "string"
    assert "Chat hours" not in by_column
    text = report_json(report)
    assert "twelve" not in text and "maybe" not in text and "last week" not in text and "12345" not in text


def test_an_all_null_column() -> None:
    rows = clean_rows()
    for r in rows:
        r["Meeting hours"] = None
    rows[0]["Email hours"] = None  # null in one row only: not a finding
    _, findings = check(rows)
    assert findings == [{"check": "all_null", "column": "Meeting hours", "rows": 8}]


def test_dates_outside_the_request_window() -> None:
    rows = clean_rows(weeks=(WEEK_1, "2024-06-02T00:00:00Z"))
    md = metadata(RequestStartDate="2025-02-20T00:00:00Z", RequestEndDate="2025-03-10T00:00:00Z")
    _, findings = check(rows, md)
    assert findings == [
        {
            "check": "out_of_window",
            "column": "MetricDate",
            "count": 4,
            "window": ["2025-02-20T00:00:00+00:00", "2025-03-10T00:00:00+00:00"],
            "examples": [{"row": 1}],
        }
    ]


def test_duplicate_person_weeks() -> None:
    rows = clean_rows()
    rows.append(dict(rows[3]))
    rows.append(dict(rows[0]))
    _, findings = check(rows)
    assert findings == [
        {"check": "duplicates", "columns": ["ObjectId", "MetricDate"], "count": 2, "examples": [{"row": 8}, {"row": 9}]}
    ]


def microsoft_v1_rows() -> list[dict[str, Any]]:
    """Rows shaped like Microsoft's own v1 sample file: display-name keys, PersonId, numbers as strings."""
    out = []
    for row in clean_rows():
        shaped: dict[str, Any] = {}
        for name, value in row.items():
            if name == "ObjectId":
                shaped["PersonId"] = value
            elif name == "Small-group meeting call and chat hours":
                shaped["Small-group meeting, call, and chat hours"] = str(value)
            elif name == "Internal network size":
                continue
            elif isinstance(value, float):
                shaped[name] = str(value) if value % 1 else str(int(value))
            else:
                shaped[name] = value
        out.append(shaped)
    return out


def test_microsoft_v1_shaped_rows_give_exactly_the_known_differences() -> None:
    requested = ",".join(microsoft_v1_rows()[0])  # what such a drop's ColumnsRequested says
    _, findings = check(microsoft_v1_rows(), metadata(requested=requested))
    assert findings == [
        {"check": "renamed", "expected": "Small-group meeting call and chat hours",
         "seen": "Small-group meeting, call, and chat hours", "rows": 8},
        {"check": "renamed", "expected": "ObjectId", "seen": "PersonId", "rows": 8},
    ]  # fmt: skip
    # Without ColumnsRequested naming its columns, the column Microsoft's sample lacks is missing too.
    _, findings = check(microsoft_v1_rows())
    assert {"check": "missing", "column": "Internal network size", "rows_without": 8} in findings
    assert kinds(findings) == ["renamed", "missing", "renamed"]


def test_the_shipped_v0_sample_shape_is_reported_not_crashed_on() -> None:
    """The vivainsights-shaped sample: underscore names, bare numbers, plain dates, HR attributes."""
    rows = [json.loads(r) for r in generate_rows(70, shape="underscore")]
    report, findings = check(rows, metadata(RequestStartDate="2024-01-01T00:00:00Z", RequestEndDate="2024-12-31"))
    renamed = {f["seen"]: f["expected"] for f in findings if f["check"] == "renamed"}
    assert renamed["PersonId"] == "ObjectId"
    assert renamed["Collaboration_hours"] == "Collaboration hours"
    assert renamed["After_hours_collaboration_hours"] == "After-hours collaboration hours"
    unexpected = {f["column"] for f in findings if f["check"] == "unexpected"}
    assert {"FunctionType", "Organization", "LevelDesignation"} <= unexpected
    missing = {f["column"] for f in findings if f["check"] == "missing"}
    assert "IsActive" in missing
    # Bare numbers fit doubles and plain dates parse: no type finding, no window finding.
    assert not [f for f in findings if f["check"] in ("bad_type", "out_of_window", "duplicates")]
    assert report["rows"] == 70 and report["drift"] is True


def test_directory_rows_are_checked_against_the_user_contract() -> None:
    rows = [
        {"id": str(uuid.UUID(int=i)), "mail": f"p{i}@contoso.example", "userPrincipalName": f"p{i}@contoso.example",
         "displayName": f"Person {i}", "accountEnabled": i % 2 == 0, "puser": "x"}
        for i in range(5)
    ]  # fmt: skip
    rows[2]["accountEnabled"] = "perhaps"
    rows.append(dict(rows[1]))
    _, findings = check(rows, metadata(USERS, requested="id,mail,userPrincipalName,displayName,accountEnabled"))
    assert {"check": "unexpected", "column": "puser", "rows": 6} in findings
    assert {"check": "not_requested", "columns": ["puser"]} in findings
    [bad] = [f for f in findings if f["check"] == "bad_type"]
    assert bad["column"] == "accountEnabled" and bad["examples"] == [{"row": 2}]
    [dup] = [f for f in findings if f["check"] == "duplicates"]
    assert dup["columns"] == ["id"] and dup["count"] == 1
    assert not [f for f in findings if f["check"] == "missing"]  # only what was requested is expected


def test_an_unknown_table_gets_what_was_seen_without_expectations() -> None:
    rows: list[dict[str, Any]] = [{"a": 1, "b": None, "c": "x"}, {"a": 2.5, "b": None, "c": "y"}]
    report, findings = check(rows, metadata("VivaInsightsDataset_SomethingNew_v3"))
    assert findings == [] and report["drift"] is False and report["contract"] is None
    assert report["columns_seen"] == [
        {"column": "a", "rows": 2, "nulls": 0, "kinds": ["number"]},
        {"column": "b", "rows": 2, "nulls": 2, "kinds": ["null"]},
        {"column": "c", "rows": 2, "nulls": 0, "kinds": ["string"]},
    ]


def test_columns_requested_with_commas_in_names() -> None:
    known = ["PersonId", "MetricDate", "Small-group meeting, call, and chat hours", "Meeting hours"]
    text = "PersonId,MetricDate,Small-group meeting, call, and chat hours,Focus time,Meeting hours"
    matched, unmatched = match_requested(text.split(","), known)
    assert matched == ["PersonId", "MetricDate", "Small-group meeting, call, and chat hours", "Meeting hours"]
    assert unmatched == ["Focus time"]
    # Matching also forgives the commas the schema leaves out.
    schema_name = "Small-group meeting call and chat hours"
    matched, unmatched = match_requested(["Small-group meeting", "call", "and chat hours"], [schema_name])
    assert matched == ["Small-group meeting call and chat hours"] and unmatched == []


def test_requested_columns_that_match_nothing_are_reported() -> None:
    rows = clean_rows()
    requested = "ObjectId,MetricDate,Email hours,Frobnication index"
    _, findings = check(rows, metadata(requested=requested))
    assert findings[0] == {"check": "requested_unmatched", "names": ["Frobnication index"]}
    [extra] = [f for f in findings if f["check"] == "not_requested"]
    assert "Chat hours" in extra["columns"] and "Email hours" not in extra["columns"]


def test_a_huge_report_stays_under_the_table_property_limit() -> None:
    rows = [{f"column {i} with a long and winding name": "x" for i in range(3000)} for _ in range(2)]
    report, _ = check(rows, metadata("Unknown_v1"))
    assert len(report_json(report)) <= REPORT_CHAR_LIMIT
    assert report["truncated"] is True and report["columns_seen_total"] == 3000 and report["rows"] == 2
    extra: dict[str, Any] = {f"extra {i} column of some length": 1 for i in range(3000)}
    rows = [{**r, **extra} for r in clean_rows()]
    report, _ = check(rows)
    assert len(report_json(report)) <= REPORT_CHAR_LIMIT and report["drift"] is True


def test_sampling_after_the_first_rows_and_the_exact_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(contract_module, "FULL_CHECK_ROWS", 10)
    rows = clean_rows(people=20, weeks=(WEEK_1,))
    rows[13]["Email hours"] = "bad"  # not a sampled row (every 4th), same column count
    rows[16]["Email hours"] = "bad"  # a sampled row
    rows[17]["Email hours"] = None
    rows[18]["Meeting hours"] = None
    for r in rows:
        r["Chat hours"] = None
    rows[15]["Chat hours"] = 2.0  # a late value: the column is no longer all-null
    report, findings = check(rows, sample_every=4)
    assert report["rows_fully_checked"] == 12
    [bad] = [f for f in findings if f["check"] == "bad_type"]
    assert bad["count"] == 1 and bad["examples"] == [{"row": 16}]
    assert not [f for f in findings if f["check"] == "all_null"]
    report, findings = check(rows, sample_every=1)
    assert report["rows_fully_checked"] == 20
    [bad] = [f for f in findings if f["check"] == "bad_type"]
    assert bad["count"] == 2


def test_dates_from_net_and_offsets_are_compared_in_utc() -> None:
    rows = clean_rows(weeks=("2025-02-23T01:00:00+02:00",))
    md = metadata(RequestStartDate="2025-02-22T23:30:00Z", RequestEndDate="2025-03-10")
    _, findings = check(rows, md)
    assert findings == [{"check": "out_of_window", "column": "MetricDate", "count": 4,
                         "window": ["2025-02-22T23:30:00+00:00", "2025-03-10T00:00:00+00:00"],
                         "examples": [{"row": 0}]}]  # fmt: skip
    assert (NOW - timedelta(days=1)).tzinfo is UTC


def test_the_duplicate_table_has_a_fixed_size_and_watches_a_share_once_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory for duplicates does not grow with the drop: past half the table only a share of pairs is watched."""
    monkeypatch.setattr(contract_module, "PAIR_SLOTS", 64)  # at most 32 distinct pairs held
    weeks = tuple(f"2025-0{1 + w // 28}-{1 + w % 28:02d}T00:00:00Z" for w in range(8))
    exact = clean_rows(people=3, weeks=weeks)  # 24 distinct pairs: below the limit, every repeat found
    _, findings = check(exact + exact[:5], md=metadata(), sample_every=1)
    assert [f for f in findings if f["check"] == "duplicates"] == [
        {"check": "duplicates", "columns": ["ObjectId", "MetricDate"], "count": 5,
         "examples": [{"row": 24}, {"row": 25}, {"row": 26}]}
    ]  # fmt: skip
    many = clean_rows(people=100, weeks=weeks)  # 800 distinct pairs, each repeated once at the end
    c = ContractCheck(metadata(), sample_every=1)
    validator = CheckingValidator(c)
    lines = [json.dumps(r).encode() for r in many + many]
    for start in range(0, len(lines), 50):
        validator.validate(lines[start : start + 50])
        assert len(c._pairs.table) == 64
    report = c.report()
    (found,) = [f for f in report["findings"] if f["check"] == "duplicates"]
    share = report["duplicates_share_checked"]
    assert share == found["share_checked"] and share <= 32 / 800
    # Every repeat of a watched pair is found: as many as the table held when the repeats came.
    assert 0 < found["count"] < 32 and found["examples"][0]["row"] >= 800
