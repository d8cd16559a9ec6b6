"""The transformed rows are pinned byte for byte: a faster transform must write exactly what was written
before (messages already sent and a resumed drop's packing depend on it), whatever the batch split
and whether the validator hands its parse of a row over to the transform."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared.contract import CheckingValidator, ContractCheck
from shared.transforms import Pseudonymiser, RowSettings, RowTransformer
from tests.test_contract import PERSON_REPORT, metadata

#: Written by the transform as it was before the validator handed rows over (commit 54d3f75), from
#: ROWS below: {settings name: [output lines, findings]}. Regenerate only for an intended change.
PINNED = Path(__file__).parent / "data" / "transform_pinned.json"
SECRET = b"a test secret of at least thirty-two bytes"
COLUMNS = (
    "PersonId",
    "MetricDate",
    "IsActive",
    "Collaboration hours",
    "Meeting hours",
    "Email hours",
    "Chat hours",
    "After-hours collaboration hours",
    "Multitasking hours",
    "Meetings",
)
SETTINGS: dict[str, dict[str, Any]] = {
    "all": {"typed": True, "columns": COLUMNS, "pseudonymise": True},
    "typed": {"typed": True},
    "typed_pseudonymised": {"typed": True, "pseudonymise": True},
    "columns": {"columns": COLUMNS},
    "pseudonymised": {"pseudonymise": True},
}
ROWS = [
    # Microsoft's v1 shape: display names, numbers as strings, PersonId, an unknown column
    b'{"PersonId":"0449A096-91a3-54ce-8018-2661a2692b97","MetricDate":"2024-01-07T00:00:00Z",'
    b'"Collaboration hours":"17.4529865507467","Meeting hours":"27.92","Email hours":"7.5","Chat hours":"0",'
    b'"After-hours collaboration hours":"3.06525933766504","Multitasking hours":"1.7","Meetings":"15",'
    b'"IsActive":true,"Level":"Level3"}',
    # the same person (other case, spaces), bare numbers, numeric strings not spelled as JSON numbers,
    # escaped and raw non-ASCII text
    b'{"PersonId":" 0449a096-91a3-54ce-8018-2661a2692b97 ","MetricDate":"2024-01-14",'
    b'"Collaboration hours":12.25,"Meeting hours":3,"Email hours":"+1","Chat hours":".5",'
    b'"After-hours collaboration hours":"1e3","Multitasking hours":"007","Meetings":"1.0E+2","IsActive":"True",'
    b'"Organization":"R\\u00e9seau \\u2603 \xc3\xa9t\xc3\xa9 \\"q\\""}',
    # values that do not convert, a date with an offset, a nested unknown column with a non-ASCII name
    b'{"PersonId":"\xc3\x85sa@contoso.example","MetricDate":"2024-01-21T02:00:00+02:00",'
    b'"Collaboration hours":null,"Meeting hours":"n/a","Email hours":"1_0","Chat hours":"NaN",'
    b'"After-hours collaboration hours":"-0.0","Multitasking hours":"-12","Meetings":"inf","IsActive":"0",'
    b'"Unknown column \xe2\x9c\x93":{"nested":[1,"x",null]}}',
    b'{"PersonId":"p-3","MetricDate":"never","Collaboration hours":"2","Meeting hours":"2","Email hours":"2",'
    b'"Chat hours":"2","After-hours collaboration hours":"2","Multitasking hours":"2","Meetings":"2",'
    b'"IsActive":"maybe","Extra":[1,2]}',
    b'{"PersonId":null,"MetricDate":null,"Collaboration hours":1.5e-7,"Meeting hours":-0.25,"Email hours":1e22,'
    b'"Chat hours":"1E5","After-hours collaboration hours":" 7 ","Multitasking hours":"0.10","Meetings":0,'
    b'"IsActive":1}',
    b'{"PersonId":"p-4","MetricDate":"2024-02-04T00:00:00.000Z","Collaboration hours":"3.0","Meeting hours":"4",'
    b'"Email hours":"5","Chat hours":"6","After-hours collaboration hours":"7","Multitasking hours":"8",'
    b'"Meetings":"9","IsActive":false}',
    b'{"PersonId":{"id":"x"},"MetricDate":"2024-02-04","Collaboration hours":"3","Meeting hours":"4",'
    b'"Email hours":"5","Chat hours":"6","After-hours collaboration hours":"7","Multitasking hours":"8",'
    b'"Meetings":"9","IsActive":"FALSE"}',
    # the v0 sample's shape: underscore names, bare numbers (most kept columns absent)
    b'{"PersonId":"v0-1","MetricDate":"2024-03-03","Collaboration_hours":4.5,"Email_hours":1,"IsActive":true}',
    b'{"PersonId":"v0-2","MetricDate":"2024-03-10","Meetings":3,"Organization":"\xe6\x97\xa5\xe6\x9c\xac",'
    b'"IsActive":"false"}',
    b'{"ObjectId":"OID-1","MetricDate":"2024-03-17","Meetings":"4","IsActive":"true"}',
]
#: The batches: the first two hold every kept column (a column at a time), the third does not (row by
#: row), then all rows again in one batch.
SPLITS = [(0, 2), (2, 7), (7, 10), (0, 10)]


def transformer(name: str) -> RowTransformer:
    settings = RowSettings(**SETTINGS[name])
    return RowTransformer(PERSON_REPORT, settings, Pseudonymiser(SECRET, "v1") if settings.pseudonymise else None)


def pinned(name: str) -> tuple[list[str], list[dict[str, Any]]]:
    lines, findings = json.loads(PINNED.read_text(encoding="utf-8"))[name]
    return lines, findings


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_the_transform_writes_the_pinned_bytes(name: str) -> None:
    stage = transformer(name)
    out = [line for a, b in SPLITS for line in stage.process(ROWS[a:b])]
    lines, findings = pinned(name)
    assert [line.decode("utf-8") for line in out] == lines
    assert stage.findings() == findings
    for line in out:
        json.loads(line)  # each is one valid JSON object


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_rows_handed_over_by_the_validator_give_the_pinned_bytes(name: str) -> None:
    """As stream_drop runs it: the checking validator parses each row once and hands the kept columns
    to the transform."""
    stage = transformer(name)
    validator = CheckingValidator(ContractCheck(metadata()), stages=[stage])
    out = [line for a, b in SPLITS for line in stage.process(validator.validate(ROWS[a:b]))]
    lines, findings = pinned(name)
    assert [line.decode("utf-8") for line in out] == lines
    assert stage.findings() == findings


def test_a_handed_over_batch_is_not_parsed_again() -> None:
    stage = transformer("all")

    class NoParser:
        def parse(self, line: bytes) -> Any:
            raise AssertionError("the transform parsed a row the validator had handed over")

    stage._parser = NoParser()  # type: ignore[assignment]
    validator = CheckingValidator(ContractCheck(metadata()), stages=[stage])
    out = stage.process(validator.validate(ROWS[:7]))
    assert [line.decode("utf-8") for line in out] == pinned("all")[0][:7]


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_the_rows_do_not_depend_on_the_batch_split(name: str) -> None:
    """A resume starts at another row, so its batches differ from the first attempt's."""
    one_by_one = transformer(name)
    out = [line for row in ROWS for line in one_by_one.process([row])]
    assert [line.decode("utf-8") for line in out] == pinned(name)[0][-len(ROWS) :]


def test_a_numeric_string_with_a_line_break_is_not_written_as_a_number() -> None:
    stage = transformer("all")
    rows = [row.replace(b'"Meetings":"15"', b'"Meetings":"1\\n5"') for row in ROWS[:2]]
    out = stage.process(rows)
    assert json.loads(out[0])["Meetings"] == "1\n5"
    assert [f["column"] for f in stage.findings()] == ["Meetings"]


def test_nested_kept_values_anywhere_in_a_batch_are_handed_over_intact() -> None:
    """The validator copies a picked nested value only when its parser is needed again (or at the end
    of the batch): first, middle and last rows, and two in a row, give what the transform alone gives."""
    rest = {name: "1" for name in COLUMNS[2:]}
    nested = json.dumps({"PersonId": {"id": ["x", 1]}, "MetricDate": [2024], **rest}).encode()
    plain = json.dumps({"PersonId": "p", "MetricDate": "2024-02-04", **rest}).encode()

    class NoParser:
        def parse(self, line: bytes) -> Any:
            raise AssertionError("the transform parsed a row the validator had handed over")

    for positions in ({0}, {2}, {4}, {1, 2}, {0, 1, 2, 3, 4}):
        rows = [nested if i in positions else plain for i in range(5)]
        fused = transformer("all")
        fused._parser = NoParser()  # type: ignore[assignment]
        validator = CheckingValidator(ContractCheck(metadata()), stages=[fused])
        handed = fused.process(validator.validate(rows))
        assert handed == transformer("all").process(rows)
        assert [json.loads(line)["MetricDate"] for line in handed] == [
            [2024] if i in positions else "2024-02-04T00:00:00Z" for i in range(5)
        ]
