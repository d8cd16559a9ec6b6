"""The byte path on its own: any chunking, multi-member gzip, and every integrity failure."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from shared.bytepath import decode_rows
from shared.errors import BadRow, IntegrityError

KEY = os.urandom(32)
IV = os.urandom(16)


def encrypt(plain: bytes, key: bytes = KEY, iv: bytes = IV) -> bytes:
    padder = padding.PKCS7(128).padder()
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return enc.update(padder.update(plain) + padder.finalize()) + enc.finalize()


def rows(n: int) -> list[bytes]:
    return [
        json.dumps({"PersonId": f"p{i}", "Collaboration hours": str(i * 1.5), "IsActive": True}).encode()
        for i in range(n)
    ]


def chunked(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def decode(data: bytes, size: int = 4096) -> list[bytes]:
    out: list[bytes] = []
    for batch in decode_rows(chunked(data, size), KEY, IV):
        out.extend(batch)
    return out


@pytest.mark.parametrize("size", [1, 7, 16, 17, 4096, 1 << 20])
def test_any_chunking_gives_the_same_rows(size: int) -> None:
    expected = rows(500)
    data = encrypt(gzip.compress(b"\n".join(expected) + b"\n"))
    assert decode(data, size) == expected


def test_concatenated_gzip_members_are_all_read() -> None:
    expected = rows(300)
    plain = b"".join(gzip.compress(b"\n".join(expected[i : i + 100]) + b"\n") for i in range(0, 300, 100))
    assert decode(encrypt(plain), 33) == expected


def test_member_boundary_inside_a_line() -> None:
    text = b"\n".join(rows(10)) + b"\n"
    cut = len(text) // 2 + 3
    plain = gzip.compress(text[:cut]) + gzip.compress(text[cut:])
    assert decode(encrypt(plain)) == rows(10)


def test_crlf_bom_and_no_final_newline() -> None:
    text = b"\xef\xbb\xbf" + b"\r\n".join(rows(20))
    assert decode(encrypt(gzip.compress(text)), 5) == rows(20)


def test_blank_lines_are_not_rows() -> None:
    text = b"\n".join(rows(3)).replace(b"}\n", b"}\n\n", 1) + b"\n\n"
    assert decode(encrypt(gzip.compress(text))) == rows(3)


def test_highly_compressible_data_stays_bounded() -> None:
    big = [json.dumps({"PersonId": "p", "x": "0" * 60_000}).encode()] * 200  # 12 MB -> tiny gzip
    data = encrypt(gzip.compress(b"\n".join(big) + b"\n"))
    assert len(data) < 200_000
    assert decode(data) == big


def test_truncated_mid_block() -> None:
    data = encrypt(gzip.compress(b"\n".join(rows(200))))
    with pytest.raises(IntegrityError, match="truncated"):
        decode(data[:-5])


def test_truncated_gzip_with_valid_padding() -> None:
    gz = gzip.compress(b"\n".join(rows(200)))
    with pytest.raises(IntegrityError, match="truncated"):
        decode(encrypt(gz[: len(gz) // 2]))


def test_crc_mismatch_is_caught() -> None:
    gz = bytearray(gzip.compress(b"\n".join(rows(50)) + b"\n"))
    gz[-6] ^= 0xFF  # the CRC-32 in the trailer
    with pytest.raises(IntegrityError, match="corrupt"):
        decode(encrypt(bytes(gz)))


def test_trailing_garbage_after_last_member() -> None:
    gz = gzip.compress(b"\n".join(rows(5)) + b"\n") + b"not gzip"
    with pytest.raises(IntegrityError):
        decode(encrypt(gz))


def test_wrong_key() -> None:
    data = encrypt(gzip.compress(b"\n".join(rows(50))), key=os.urandom(32))
    with pytest.raises(IntegrityError):
        decode(data)


def test_not_gzip_at_all() -> None:
    with pytest.raises(IntegrityError):
        decode(encrypt(b"\n".join(rows(5))))


def test_empty_file() -> None:
    with pytest.raises(IntegrityError, match="empty"):
        decode(b"")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"a": 1', "not valid JSON"),
        (b"[1, 2]", "not an object"),
        (b'"text"', "not an object"),
        (b'{"a": "\xff"}', "not valid UTF-8 JSON"),
        (b'{"a":1} {"b":2}', "not valid JSON"),
    ],
)
def test_bad_line_names_the_row(line: bytes, reason: str) -> None:
    body = rows(4)
    body.insert(2, line)
    with pytest.raises(BadRow, match=f"row 3 .*{reason}|row 3 is valid JSON but {reason}"):
        decode(encrypt(gzip.compress(b"\n".join(body) + b"\n")))


def test_rows_pass_through_byte_for_byte() -> None:
    odd = [
        b'{"Meeting hours with manager 1:1":"1.28627431633733", "IsActive": true }',
        '{"Name":"Zoë Ñandú","n":1e400}'.encode(),
        b'{ "nested": {"a": [1, {"b": null}]} }',
        b'{"big":123456789012345678901234567890}',
    ]
    assert decode(encrypt(gzip.compress(b"\n".join(odd)))) == odd


@pytest.mark.parametrize("crlf", [False, True])
def test_lines_long_and_short_split_alike_whatever_the_pieces(crlf: bool) -> None:
    """Long lines are split by ``find``, short ones by ``bytes.split``: the lines are the same either way."""
    from shared.bytepath import LONG_LINE_BYTES, LineSplitter

    rng = __import__("random").Random(7)
    lengths = [rng.choice([0, 3, 40, LONG_LINE_BYTES - 1, LONG_LINE_BYTES * 3, 9000]) for _ in range(400)]
    lines = [bytes([65 + i % 26]) * n for i, n in enumerate(lengths)]
    end = b"\r\n" if crlf else b"\n"
    data = end.join(lines) + end
    for piece_size in (1, 7, 1000, 4096, 65536, len(data)):
        splitter = LineSplitter()
        got: list[bytes] = []
        for at in range(0, len(data), piece_size):
            got += splitter.feed(data[at : at + piece_size])
        got += splitter.finish()
        assert got == lines, piece_size
