"""Unwrapping a drop's file key: one interface, the tolerances of SPEC.md in one place.

The file key is RSA-encrypted with the tenant's public key. Which RSA padding MGDC uses and how the
AES key is encoded before wrapping are unconfirmed, so :class:`KeyUnwrapper` tries the configured
paddings in order and accepts exactly three encodings of the key (raw 32 bytes, the UTF-8 text of
its Base64, or of its hex), recording which padding worked. Backends only implement the RSA step.
"""

from __future__ import annotations

import base64
import binascii
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import KeyNotFound, KeyUnwrapError

AES_KEY_BYTES = 32
IV_BYTES = 16
_B64_RE = re.compile(rb"^[A-Za-z0-9+/_-]+={0,2}$")
_HEX_RE = re.compile(rb"^[0-9a-fA-F]+$")


@dataclass(frozen=True)
class FileKey:
    """An unwrapped AES-256 file key with its IV and the RSA padding that unwrapped it."""

    key: bytes
    iv: bytes
    algorithm: str
    key_version: str = ""

    def __repr__(self) -> str:  # never let key material reach a log
        return f"FileKey(algorithm={self.algorithm!r}, key_version={self.key_version!r})"


def _decode_text(raw: bytes, size: int) -> bytes | None:
    """``raw`` as ``size`` raw bytes, or the UTF-8 text of their Base64 or hex; else None."""
    if len(raw) == size:
        return raw
    text = raw.strip()
    if len(text) == 2 * size and _HEX_RE.match(text):
        return bytes.fromhex(text.decode("ascii"))
    if _B64_RE.match(text):
        padded = text.replace(b"-", b"+").replace(b"_", b"/")
        padded += b"=" * (-len(padded) % 4)
        try:
            decoded = base64.b64decode(padded, validate=True)
        except (binascii.Error, ValueError):
            return None
        if len(decoded) == size:
            return decoded
    return None


def decode_file_key(plaintext: bytes) -> bytes:
    """The 32-byte AES key from the RSA plaintext: raw, Base64 text or hex text; else an error."""
    key = _decode_text(plaintext, AES_KEY_BYTES)
    if key is None:
        raise KeyUnwrapError(
            f"the unwrapped file key is {len(plaintext)} bytes and neither a raw 32-byte AES-256 key"
            " nor its Base64 or hex text"
        )
    return key


def decode_iv(iv: bytes) -> bytes:
    """The 16-byte IV: raw (after the metadata's Base64), or the text of its Base64 or hex."""
    out = _decode_text(iv, IV_BYTES)
    if out is None:
        raise KeyUnwrapError(f"the IV is {len(iv)} bytes; expected 16 (or their Base64/hex text)")
    return out


class KeyUnwrapper(ABC):
    """Turns (tenant, key version, wrapped key, iv) into a :class:`FileKey`."""

    def __init__(self, algorithms: Sequence[str] = ("RSA-OAEP-256", "RSA-OAEP")) -> None:
        if not algorithms:
            raise ValueError("at least one RSA padding must be configured")
        self.algorithms = tuple(algorithms)

    @abstractmethod
    def rsa_decrypt(self, tenant_id: str, key_version: str, algorithm: str, wrapped: bytes) -> bytes | None:
        """RSA-decrypt ``wrapped`` with the tenant's private key.

        Return None when this padding does not decrypt it (so the next one is tried); raise
        :class:`KeyNotFound` when the tenant (or version) has no key, and a transient error for
        availability problems.
        """

    def resolved_version(self, tenant_id: str, key_version: str) -> str:
        """The key version actually used (backends that resolve 'latest' override this)."""
        return key_version

    def unwrap(self, tenant_id: str, key_version: str, wrapped: bytes, iv: bytes) -> FileKey:
        """Unwrap the file key of a drop of ``tenant_id`` (the key's name) at ``key_version``."""
        iv_bytes = decode_iv(iv)
        tried: list[str] = []
        for algorithm in self.algorithms:
            plaintext = self.rsa_decrypt(tenant_id, key_version, algorithm, wrapped)
            if plaintext is None:
                tried.append(f"{algorithm}: does not decrypt")
                continue
            try:
                key = decode_file_key(plaintext)
            except KeyUnwrapError as exc:
                # RSA1_5 can "succeed" with a wrong key and return garbage; try the next padding.
                tried.append(f"{algorithm}: {exc.reason}")
                continue
            return FileKey(
                key=key,
                iv=iv_bytes,
                algorithm=algorithm,
                key_version=self.resolved_version(tenant_id, key_version),
            )
        raise KeyUnwrapError(
            f"the file key of tenant {tenant_id} could not be unwrapped with its key"
            f" (version {key_version or 'latest'}): wrong key, or padding not enabled (" + "; ".join(tried) + ")"
        )


__all__ = [
    "FileKey",
    "KeyNotFound",
    "KeyUnwrapError",
    "KeyUnwrapper",
    "decode_file_key",
    "decode_iv",
]
