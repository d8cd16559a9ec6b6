"""One registry of message encodings: the settings, the packer and decoding take them from one place."""

from __future__ import annotations

import json

import pytest

from shared.config import MESSAGE_ENCODINGS, Settings
from shared.encodings import ENCODINGS, decode_payload, message_encoding
from shared.messages import encode_body

BODY = json.dumps({"type": "rows", "rows": [{"PersonId": "p1", "Value": "1.5"}] * 50}).encode()


def test_the_settings_accept_exactly_the_registered_encodings() -> None:
    assert tuple(ENCODINGS) == MESSAGE_ENCODINGS
    for name in ENCODINGS:
        assert Settings.from_env({"KEY_SOURCE": "folder", "DOWNSTREAM_MESSAGE_ENCODING": name}).message_encoding == name


@pytest.mark.parametrize("name", list(ENCODINGS))
def test_every_encoding_round_trips(name: str) -> None:
    text = encode_body(BODY, name)
    assert text == message_encoding(name).encode(BODY)
    assert decode_payload(text.encode()) == BODY


@pytest.mark.parametrize("name", [n for n, e in ENCODINGS.items() if not e.compressed])
def test_a_body_at_the_limit_fits_once_encoded(name: str) -> None:
    limit = 1000
    body = b"x" * message_encoding(name).body_limit(limit)
    assert len(encode_body(body, name)) <= limit
    assert len(encode_body(body + b"xxxx", name)) > limit


def test_an_unknown_encoding_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown message encoding 'zstd'"):
        message_encoding("zstd")
    with pytest.raises(ValueError, match="unknown message encoding"):
        encode_body(BODY, "zstd")
