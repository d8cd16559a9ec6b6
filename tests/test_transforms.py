"""The row transformer on its own: both paths (a column at a time, row by row) give the same rows."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.errors import SchemaViolation
from shared.transforms import Pseudonymiser, RowSettings, RowTransformer

PERSON_REPORT = "VivaInsightsDataset_PersonReport_v1"
SECRET = b"a test secret of at least thirty-two bytes"


def run(rows: list[dict[str, Any]], **settings: Any) -> tuple[list[dict[str, Any]], RowTransformer]:
    transformer = RowTransformer(PERSON_REPORT, RowSettings(**settings), Pseudonymiser(SECRET, "v1"))
    lines = [json.dumps(r, ensure_ascii=False).encode() for r in rows]
    out = transformer.process(lines[:3]) + transformer.process(lines[3:])
    return [json.loads(line) for line in out], transformer


def test_typed_numbers_booleans_dates_and_what_cannot_be_converted() -> None:
    rows: list[dict[str, Any]] = [
        {"PersonId": "A-1", "MetricDate": "2025-03-02", "IsActive": "true", "Email hours": "12.50", "Meetings": "7"},
        {"PersonId": "a-1", "MetricDate": "2025-03-09T02:00:00+02:00", "IsActive": False, "Email hours": "+1"},
        {"PersonId": None, "MetricDate": None, "IsActive": "1", "Email hours": ".5", "Meetings": 3},
        {"PersonId": "b", "MetricDate": "never", "IsActive": "maybe", "Email hours": "n/a", "Meetings": "007"},
        {
            "PersonId": "c",
            "MetricDate": "2025-03-16T00:00:00Z",
            "IsActive": True,
            "Email hours": 2.25,
            "Meetings": "1e3",
        },
    ]
    columns = ("PersonId", "MetricDate", "IsActive", "Email hours", "Meetings")
    for kept in ((), columns):
        out, transformer = run(rows, typed=True, columns=kept, pseudonymise=True)
        pseudonym = Pseudonymiser(SECRET, "")
        assert out[0] == {
            "PersonId": pseudonym("A-1"),
            "MetricDate": "2025-03-02T00:00:00Z",
            "IsActive": True,
            "Email hours": 12.5,
            "Meetings": 7,
        }
        assert out[1]["PersonId"] == out[0]["PersonId"]  # case-folded: the same person
        assert out[1]["MetricDate"] == "2025-03-09T00:00:00Z" and out[1]["Email hours"] == 1.0
        assert out[1].get("Meetings") is None and "Meetings" not in out[1]  # absent stays absent
        assert out[2] == {"PersonId": None, "MetricDate": None, "IsActive": True, "Email hours": 0.5, "Meetings": 3}
        assert out[3]["MetricDate"] == "never" and out[3]["IsActive"] == "maybe" and out[3]["Email hours"] == "n/a"
        assert out[3]["Meetings"] == 7.0 and out[4]["Meetings"] == 1000.0 and out[4]["Email hours"] == 2.25
        missed = {f["column"]: f for f in transformer.findings()}
        assert set(missed) == {"MetricDate", "IsActive", "Email hours"}
        assert missed["Email hours"] == {"check": "not_converted", "column": "Email hours", "count": 1,
                                         "examples": [{"row": 3}]}  # fmt: skip


def test_the_allowlist_keeps_order_nested_values_and_text_as_is() -> None:
    rows = [{"z": 1, "Name, with comma": 'Zoë "Q"', "nested": {"a": [1, 2]}, "drop me": "x"} for _ in range(5)]
    out, _ = run(rows, columns=("nested", "Name, with comma"))
    assert out == [{"nested": {"a": [1, 2]}, "Name, with comma": 'Zoë "Q"'}] * 5


def test_fail_policy_stops_at_the_first_value_that_cannot_be_converted() -> None:
    rows = [{"Email hours": "1"}, {"Email hours": "lots"}]
    with pytest.raises(SchemaViolation, match="row 2"):
        run(rows * 3, typed=True, columns=("Email hours",), policy="fail")


def test_integers_beyond_64_bits_are_transformed_like_any_valid_row() -> None:
    """simdjson cannot hold such a number; the validator accepts the row, so the transform must too."""
    from shared.bytepath import RowValidator
    from shared.contract import CheckingValidator, ContractCheck
    from tests.test_contract import metadata

    huge = 123456789012345678901234567890
    rows: list[dict[str, Any]] = [
        {"PersonId": "p", "MetricDate": "2025-03-02", "Meetings": "2", "Email hours": huge, "z": huge},
        {"PersonId": "q", "MetricDate": "2025-03-09", "Meetings": huge, "Email hours": "1.5", "z": 1},
    ]
    lines = [json.dumps(r).encode() for r in rows]
    columns = ("PersonId", "MetricDate", "Meetings", "Email hours")
    for kept in (columns, ()):
        settings = RowSettings(typed=True, columns=kept, pseudonymise=True)
        alone = RowTransformer(PERSON_REPORT, settings, Pseudonymiser(SECRET, "v1"))
        fused = RowTransformer(PERSON_REPORT, settings, Pseudonymiser(SECRET, "v1"))
        check = ContractCheck(metadata())
        validators = (RowValidator(), CheckingValidator(check, stages=[fused]))
        outputs = [t.process(v.validate(list(lines))) for t, v in zip((alone, fused), validators, strict=True)]
        assert outputs[0] == outputs[1]
        out = [json.loads(line) for line in outputs[0]]
        assert out[0]["Email hours"] == huge and out[1]["Meetings"] == huge
        assert out[0]["Meetings"] == 2 and out[1]["Email hours"] == 1.5
        assert out[0]["PersonId"] == Pseudonymiser(SECRET, "")("p")
        assert ("z" in out[0]) is (not kept)


@pytest.mark.parametrize("secret", [SECRET, b"s" * 16, bytes(range(64)), bytes(range(200)) * 3])
def test_pseudonyms_are_hmac_sha256_of_the_trimmed_lower_cased_identifier(secret: bytes) -> None:
    import hashlib
    import hmac

    pseudonym = Pseudonymiser(secret, "v1")
    for value in ("A-1", " Zoë@Example.com ", "", "0449a096-91a3-54ce-8018-2661a2692b97"):
        expected = hmac.new(secret, value.strip().lower().encode("utf-8"), hashlib.sha256).hexdigest()
        assert pseudonym(value) == expected


def test_numbers_are_kept_as_spelled_exactly_when_json_would_read_them_as_numbers() -> None:
    """The batch check (all values parsed as one JSON array) agrees with the JSON grammar on every value."""
    import re

    number = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?").fullmatch
    odd = ["1", "-0", "0.5", "1E+5", "2e-3", "1e400", "123456789012345678901234567890", "01", "1.", ".5", "+1",
           "-", "", " 1", "1 ", "1,2", "1\n2", "NaN", "Infinity", "1e", "1.5E", "0x10", "1_000", "١", "[1]", '"1"',
           "true", "1]", "[2", "1.0.0", "--1", "1e5.5"]  # fmt: skip
    columns = ("Email hours", "Meetings")
    for value in odd:
        for batch in ([value], ["7", value, "8"], [value] * 3):
            rows = [{"Email hours": v, "Meetings": "3"} for v in batch]
            transformer = RowTransformer(PERSON_REPORT, RowSettings(typed=True, columns=columns))
            out = transformer.process([json.dumps(r).encode() for r in rows])
            spelled = number(value) is not None
            assert (out[batch.index(value)].startswith(b'{"Email hours":' + value.encode() + b",")) is spelled, value


def test_identifiers_are_left_as_they_are_unless_pseudonymisation_is_on() -> None:
    row = b'{"PersonId":"p-1","MetricDate":"2024-03-03","Meetings":"2"}'
    handed = Pseudonymiser(b"a partner secret of 32 bytes....", "v1")
    plain = RowTransformer(PERSON_REPORT, RowSettings(typed=True), handed).process([row, row])
    assert [json.loads(r)["PersonId"] for r in plain] == ["p-1", "p-1"]
    hidden = RowTransformer(PERSON_REPORT, RowSettings(typed=True, pseudonymise=True), handed).process([row, row])
    assert [json.loads(r)["PersonId"] for r in hidden] == [handed("p-1")] * 2


def test_rows_without_an_allowlist_come_out_the_same_however_they_are_batched() -> None:
    """Without ROW_COLUMNS a batch of rows with one layout goes a column at a time; others row by row."""
    rows = [
        b'{"PersonId":"p-1","MetricDate":"2024-03-03","Meetings":"2","IsActive":"true"}',
        b'{"PersonId":"p-2","MetricDate":"2024-03-03","Meetings":"3.5","IsActive":false}',
        b'{"MetricDate":"2024-03-03","PersonId":"p-3","Meetings":"4","IsActive":true}',  # other order
        b'{"PersonId":"p-4","MetricDate":"2024-03-03","Meetings":{"a":[1]},"IsActive":true}',  # nested
        b'{"PersonId":"p-5","MetricDate":"2024-03-03","Meetings":"x","IsActive":true,"Extra":1}',
    ]
    settings = RowSettings(typed=True)
    one_by_one = [RowTransformer(PERSON_REPORT, settings).process([r])[0] for r in rows]
    for size in (1, 2, 3, 5):
        transformer = RowTransformer(PERSON_REPORT, settings)
        batched = [out for i in range(0, len(rows), size) for out in transformer.process(rows[i : i + size])]
        assert batched == one_by_one, size
    assert [list(json.loads(r)) for r in one_by_one][2] == ["MetricDate", "PersonId", "Meetings", "IsActive"]
    assert json.loads(one_by_one[1])["Meetings"] == 3.5 and json.loads(one_by_one[3])["Meetings"] == {"a": [1]}
