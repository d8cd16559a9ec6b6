"""Downstream message encodings, registered by their ``DOWNSTREAM_MESSAGE_ENCODING`` name.

An encoding turns a message's JSON body into the text put on the queue, says how much JSON fits a stored
message, and whether its size must be measured after encoding (compression). The settings, the packer
(shared/messages.py) and consumers' decoding all take them from here: a new encoding is one entry in
:data:`ENCODINGS` (and its decoding in :func:`decode_payload`), with its tests in tests/test_messages.py.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass

from isal import isal_zlib

GZIP_WBITS = 31  # a gzip member (header + deflate + trailer), what consumers' gunzip expects
GZIP_LEVEL = 1  # fastest: the queue limit, not the ratio, decides the message size
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class MessageEncoding:
    """One encoding of a message body as queue text."""

    name: str
    #: body bytes -> the text stored in the queue
    encode: Callable[[bytes], str]
    #: the most body bytes whose encoded form can fit ``limit`` stored characters
    body_limit: Callable[[int], int]
    #: True when the encoded size depends on the content (the packer then measures each message)
    compressed: bool = False


def _gzip_base64(body: bytes) -> str:
    return base64.b64encode(isal_zlib.compress(body, GZIP_LEVEL, GZIP_WBITS)).decode("ascii")


def _base64(body: bytes) -> str:
    return base64.b64encode(body).decode("ascii")


def _json(body: bytes) -> str:
    return body.decode("utf-8")


def _base64_limit(limit: int) -> int:
    return (limit // 4) * 3  # base64 stores 4 characters per 3 bytes


#: In the order the settings list them (the first is the default).
ENCODINGS: dict[str, MessageEncoding] = {
    "gzip-base64": MessageEncoding("gzip-base64", _gzip_base64, _base64_limit, compressed=True),
    "base64": MessageEncoding("base64", _base64, _base64_limit),
    "json": MessageEncoding("json", _json, lambda limit: limit),
}


def message_encoding(name: str) -> MessageEncoding:
    """The registered encoding ``name``; ValueError for an unknown one."""
    try:
        return ENCODINGS[name]
    except KeyError:
        raise ValueError(f"unknown message encoding {name!r}") from None


def decode_payload(payload: bytes) -> bytes:
    """The JSON body of a stored message of any registered encoding (what a consumer does)."""
    if payload.lstrip().startswith(b"{"):
        return payload  # json
    data = base64.b64decode(payload)
    return isal_zlib.decompress(data, GZIP_WBITS) if data[:2] == GZIP_MAGIC else data
