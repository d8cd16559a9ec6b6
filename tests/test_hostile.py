"""Hostile input stays bounded: long lines, blank-line bombs, UTF-16 rows, deep nesting, packer caps, metadata."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

import pytest

from shared.bytepath import MAX_ROW_BYTES, LineSplitter, decode_rows
from shared.errors import BadRow, ImplausibleData, MetadataError, RowTooLarge, UnsafeDropFolder
from shared.jsondepth import json_depth
from shared.keyfolder import KeyFolder
from shared.messages import MAX_ROWS_PER_MESSAGE, Envelope, MessagePacker, decode_message
from shared.metadata import GUID_RE, MAX_FIELD_CHARS, MAX_METADATA_BYTES, parse_metadata
from shared.sources import FolderDropSource
from tests.test_bytepath import IV, KEY, chunked, encrypt
from tests.test_metadata import doc


def decode_all(plain: bytes, piece: int = 64 * 1024) -> list[bytes]:
    out: list[bytes] = []
    for batch in decode_rows(chunked(encrypt(gzip.compress(plain, 1)), piece), KEY, IV):
        out.extend(batch)
    return out


# -- Medium 3: the packer's caps ------------------------------------------------------------------


def test_rows_that_compress_500_to_1_still_make_messages_of_bounded_size() -> None:
    packer = MessagePacker(Envelope("t", "d", "tbl"), "gzip-base64")
    batch = [b"{}"] * 50_000
    most_pending = 0
    messages = []
    for _ in range(20):  # a million rows of {}
        messages += list(packer.add(batch))
        most_pending = max(most_pending, len(packer._pending))
    messages += list(packer.finish())
    bodies = [decode_message(m.payload) for m in messages]
    assert sum(len(b["rows"]) for b in bodies) == 1_000_000
    # Each message's uncompressed body (what a consumer inflates) is capped, whatever the ratio.
    assert max(m.row_count for m in messages) <= MAX_ROWS_PER_MESSAGE
    assert max(len(m.payload) for m in messages) <= 64 * 1024
    assert most_pending <= MAX_ROWS_PER_MESSAGE + len(batch)


# -- Medium 4: a line that never ends ----------------------------------------------------------------


def test_a_line_longer_than_any_deliverable_row_fails_as_soon_as_it_is_too_long() -> None:
    splitter = LineSplitter()
    piece = b"x" * 65536
    fed = 0
    with pytest.raises(RowTooLarge, match="line 1 is longer than"):
        for _ in range(1000):  # 64 MiB if nothing stopped it
            splitter.feed(piece)
            fed += 1
    assert fed * len(piece) <= MAX_ROW_BYTES + len(piece)


def test_a_long_line_is_assembled_in_linear_time() -> None:
    splitter = LineSplitter(max_line=8 * 1024 * 1024)
    for _ in range(4096):  # 8 MiB in 2 KiB pieces: quadratic concatenation would copy 16 GiB
        assert splitter.feed(b"y" * 2048) == []
    assert splitter._carried == 8 * 1024 * 1024 and len(splitter._pieces) == 4096
    [line] = splitter.feed(b"\n")
    assert len(line) == 8 * 1024 * 1024


def test_a_row_less_stretch_still_gives_the_caller_a_turn_for_its_lease() -> None:
    row = json.dumps({"a": "z" * 900_000}).encode()  # one row of 900 KB: many pieces without a row
    batches = list(decode_rows(chunked(encrypt(gzip.compress(row + b"\n{}\n", 1)), 64 * 1024), KEY, IV))
    assert [r for b in batches for r in b] == [row, b"{}"]
    assert sum(1 for b in batches if not b) >= 3  # turns taken while no row was complete


def test_an_overlong_line_in_a_data_file_fails_the_drop() -> None:
    with pytest.raises(RowTooLarge):
        decode_all(b'{"a":1}\n' + b"q" * (MAX_ROW_BYTES + 10))


# -- Medium 6: rows are UTF-8 -----------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"])
def test_utf16_and_utf32_rows_are_bad_rows(codec: str) -> None:
    line = '{"PersonId": "p1", "Name": "Zoë"}'.encode(codec)
    with pytest.raises(BadRow, match="row 1"):
        decode_all(line + b"\n")


# -- Medium 5: nesting ----------------------------------------------------------------------------


def test_a_row_nested_50000_deep_is_a_bad_row_not_a_crash() -> None:
    deep = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
    with pytest.raises(BadRow, match="row 2"):
        decode_all(b"{}\n" + deep + b"\n")


def test_json_depth_ignores_brackets_in_strings() -> None:
    assert json_depth(b'{"a":[1,{"b":"[[[["}]}') == 3
    assert json_depth(b'"{{{{"') == 0
    assert json_depth(b"[" * 100_000) == 100_000


def hostile_metadata() -> list[tuple[str, bytes]]:
    def with_(**changes: Any) -> bytes:
        return json.dumps(doc(**changes)).encode()

    return [
        ("nested 100,000 deep", b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
        ("count of 5,000 digits", with_(NumberOfRowsExtracted="9" * 5000)),
        ("count as a 400-digit number", with_(NumberOfRowsExtracted=10**400)),
        ("count past 2**63", with_(NumberOfRowsExtracted=2**64)),
        ("submission time 10**400", with_(JobSubmissionTime=10**400)),
        (".NET date past year 9999", with_(JobSubmissionTime="/Date(99999999999999999999)/")),
        ("huge date text", with_(JobSubmissionTime="2024-01-01" + "x" * 300_000)),
        ("200 KB TableName", with_(TableName="T" * 200_000)),
        ("200 KB ExtractionResultId", with_(ExtractionResultId="e" * 200_000)),
        (
            "infinite count",
            json.dumps(doc()).replace('"NumberOfRowsExtracted": 1234', '"NumberOfRowsExtracted": 1e999').encode(),
        ),
    ]


@pytest.mark.parametrize(("what", "raw"), hostile_metadata(), ids=[w for w, _ in hostile_metadata()])
def test_hostile_metadata_is_a_clear_metadata_error(what: str, raw: bytes) -> None:
    with pytest.raises(MetadataError) as caught:
        parse_metadata(raw)
    assert len(caught.value.reason) < 400  # the reason quotes no megabytes of input


def test_a_row_count_past_2_31_is_accepted() -> None:
    assert parse_metadata(json.dumps(doc(NumberOfRowsExtracted=2**31 + 5))).rows_expected == 2**31 + 5


def test_text_fields_have_a_length_limit() -> None:
    assert parse_metadata(json.dumps(doc(TableName="T" * MAX_FIELD_CHARS))).table_name == "T" * MAX_FIELD_CHARS
    with pytest.raises(MetadataError, match="TableName is 257 characters"):
        parse_metadata(json.dumps(doc(TableName="T" * (MAX_FIELD_CHARS + 1))))


# -- Low: blank-line bombs, tenant ids with a newline, symlinks, oversized Metadata.json ----------


def test_a_gzip_bomb_of_blank_lines_fails_with_a_clear_reason() -> None:
    with pytest.raises(ImplausibleData, match="blank lines"):
        decode_all(b"{}\n" + b"\n" * (16 * 1024 * 1024))


def test_a_few_blank_lines_are_still_fine() -> None:
    assert decode_all(b"{}\n\n\n   \n{}\n") == [b"{}", b"{}"]


def test_a_tenant_id_with_a_trailing_newline_is_not_a_tenant_id(tmp_path: Path) -> None:
    guid = "8b293ad4-8e1a-4c4a-b050-cea4dcdd5bd8"
    assert GUID_RE.match(guid) and not GUID_RE.match(guid + "\n")
    with pytest.raises(Exception, match="tenant"):
        KeyFolder(tmp_path / "keys").create(guid + "\n")
    assert not list(tmp_path.rglob("*.pem"))


def _folder_drop(tmp_path: Path) -> Path:
    root = tmp_path / "drop"
    (root / "metadata" / "JobMetadata").mkdir(parents=True)
    (root / "metadata" / "JobMetadata" / "Metadata.json").write_text(json.dumps(doc()))
    (root / "data").mkdir()
    (root / "data" / "part-00000.json.gz.enc").write_bytes(os.urandom(64))
    return root


def test_a_local_drop_folder_with_a_symlink_is_refused(tmp_path: Path) -> None:
    root = _folder_drop(tmp_path)
    secret = tmp_path / "outside.txt"
    secret.write_bytes(b"not the drop's")
    (root / "data" / "part-00001.json.gz.enc").symlink_to(secret)
    with pytest.raises(UnsafeDropFolder, match="symbolic link"):
        FolderDropSource(root).list_data_files()


def test_a_symlinked_metadata_json_is_refused(tmp_path: Path) -> None:
    root = _folder_drop(tmp_path)
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps(doc()))
    meta = root / "metadata" / "JobMetadata" / "Metadata.json"
    meta.unlink()
    meta.symlink_to(target)
    with pytest.raises(UnsafeDropFolder):
        FolderDropSource(root).read_metadata()


def test_an_oversized_metadata_json_is_refused_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _folder_drop(tmp_path)
    (root / "metadata" / "JobMetadata" / "Metadata.json").write_bytes(b" " * (MAX_METADATA_BYTES + 1))

    def no_reading(self: Path) -> bytes:
        raise AssertionError(f"{self} was read whole")

    monkeypatch.setattr(Path, "read_bytes", no_reading)
    with pytest.raises(MetadataError, match="bytes"):
        FolderDropSource(root).read_metadata()


def test_the_blank_line_limit_is_a_setting() -> None:
    from shared.bytepath import RowValidator
    from shared.config import input_limits
    from shared.errors import ConfigError

    assert input_limits({}).max_blank_line_bytes == 1024 * 1024
    limits = input_limits({"MAX_BLANK_LINE_BYTES": "10"})
    validator = RowValidator(limits.max_blank_line_bytes)
    assert validator.validate([b"{}", b"", b"   "]) == [b"{}"]
    with pytest.raises(ImplausibleData):
        validator.validate([b"      ", b"{}"])
    with pytest.raises(ConfigError):
        input_limits({"MAX_BLANK_LINE_BYTES": "lots"})
