"""The rules for tenant keys, shared by both key stores (Key Vault and the local key folder).

SPEC.md: one RSA-2048 key per customer tenant, named by the tenant id, with an expiration date
(a key without one makes the pipeline fail), never the same key for two tenants. This module holds
those rules once: reading an externally generated PEM, the size check, the expiry arithmetic, the
health report of ``keys check`` (expired, soon expiring, disabled, wrong size, duplicate moduli
across tenants) and the public-key exports (PEM and JWK). It never prints or returns private
key material.
"""

from __future__ import annotations

import base64
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .errors import VivaRelayError
from .ids import is_guid

#: The only key size Microsoft accepts for the partner keys.
KEY_SIZE = 2048
#: Days a new key is valid when ``--expires-in`` is not given.
DEFAULT_EXPIRY_DAYS = 365
#: The longest validity ``--expires-in`` accepts (keys are meant to be rotated).
MAX_EXPIRY_DAYS = 3650
#: ``keys check`` flags a current key that expires within this many days.
DEFAULT_SOON_DAYS = 30


class KeyRuleError(VivaRelayError):
    """A key (or a request about keys) breaks one of the rules above."""


class PassphraseNeeded(KeyRuleError):
    """The PEM is encrypted and no passphrase was given."""


def tenant_key_name(tenant_id: str) -> str:
    """The key's name: the tenant id, lower case; a clear error when it is not a GUID."""
    if not is_guid(tenant_id or ""):
        raise KeyRuleError(f"tenant id {tenant_id!r} is not a GUID")
    return tenant_id.lower()


def expiry_after(days: int, now: datetime | None = None) -> datetime:
    """The expiry ``days`` from ``now`` (whole seconds, UTC); days must be 1..MAX_EXPIRY_DAYS."""
    if not 1 <= days <= MAX_EXPIRY_DAYS:
        raise KeyRuleError(f"the key's validity must be 1 to {MAX_EXPIRY_DAYS} days, not {days}")
    start = (now or datetime.now(UTC)).replace(microsecond=0)
    return start + timedelta(days=days)


def load_private_pem(data: bytes, password: bytes | None = None, *, source: str = "the PEM") -> rsa.RSAPrivateKey:
    """An RSA private key from PEM (PKCS#1 or PKCS#8, with or without a passphrase).

    Raises :class:`PassphraseNeeded` when the PEM is encrypted and no passphrase was given, and
    :class:`KeyRuleError` for anything else that is not a usable RSA private key.
    """
    if b"-----BEGIN" not in data:
        raise KeyRuleError(f"{source} is not PEM (no -----BEGIN line)")
    if b"PRIVATE KEY-----" not in data:
        raise KeyRuleError(f"{source} holds no private key (a public key or a certificate cannot be imported)")
    try:
        key = serialization.load_pem_private_key(data, password=password or None)
    except TypeError:
        if not password:
            raise PassphraseNeeded(f"{source} is encrypted: a passphrase is needed") from None
        # A passphrase for a key that is not encrypted: the key is readable without it.
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError:
        if password:
            raise KeyRuleError(f"{source} could not be read: wrong passphrase, or a damaged PEM") from None
        raise KeyRuleError(f"{source} could not be read as a private key (damaged PEM?)") from None
    except UnsupportedAlgorithm as exc:
        raise KeyRuleError(f"{source} uses an unsupported algorithm or encryption: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyRuleError(f"{source} is a {type(key).__name__.lstrip('_')}, not an RSA private key")
    return key


def require_key_size(key: rsa.RSAPrivateKey | rsa.RSAPublicKey, what: str = "the key") -> None:
    """Refuse anything but RSA-2048."""
    if key.key_size != KEY_SIZE:
        raise KeyRuleError(f"{what} is RSA-{key.key_size}; Viva Insights partner keys must be RSA-{KEY_SIZE}")


def b64url(value: int) -> str:
    """An unsigned big-endian integer as Base64url without padding (JWK encoding)."""
    raw = value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def public_pem(public_key: rsa.RSAPublicKey) -> str:
    """The public key as PEM (SubjectPublicKeyInfo)."""
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode(
        "ascii"
    )


def public_jwk(public_key: rsa.RSAPublicKey, kid: str | None = None) -> dict[str, Any]:
    """The public key as a JSON Web Key (``kty``, ``n``, ``e`` and ``kid`` when known)."""
    numbers = public_key.public_numbers()
    jwk: dict[str, Any] = {"kty": "RSA", "n": b64url(numbers.n), "e": b64url(numbers.e)}
    if kid:
        jwk["kid"] = kid
    return jwk


@dataclass(frozen=True)
class CreatedKey:
    """What ``keys create`` / ``keys import`` made: where, which version, valid until when."""

    tenant: str
    version: str
    expires_on: datetime
    where: str  # the Key Vault key id, or the PEM file's path

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON output."""
        return {
            "tenant": self.tenant,
            "version": self.version,
            "expires_on": self.expires_on.isoformat(),
            "where": self.where,
        }


@dataclass(frozen=True)
class KeyVersionInfo:
    """One version of one tenant's key, as ``keys check`` sees it. Holds the public modulus only."""

    tenant: str
    version: str
    current: bool
    size: int  # bits; 0 when the store could not read the public key
    modulus: int | None = field(repr=False)
    created_on: datetime | None
    expires_on: datetime | None
    enabled: bool = True
    key_type: str = "RSA"
    problems: tuple[str, ...] = ()

    def days_left(self, now: datetime) -> int | None:
        """Calendar days (UTC) until the expiry date (negative once past), None without an expiry."""
        if self.expires_on is None:
            return None
        return (self.expires_on.astimezone(UTC).date() - now.astimezone(UTC).date()).days

    def as_dict(self, now: datetime) -> dict[str, Any]:
        """Plain dict for JSON output (no key material)."""
        return {
            "tenant": self.tenant,
            "version": self.version,
            "current": self.current,
            "size": self.size,
            "enabled": self.enabled,
            "key_type": self.key_type,
            "created_on": self.created_on.isoformat() if self.created_on else None,
            "expires_on": self.expires_on.isoformat() if self.expires_on else None,
            "days_left": self.days_left(now),
            "problems": list(self.problems),
        }


@dataclass(frozen=True)
class KeyReport:
    """The result of ``keys check``: every tenant key version and what is wrong with it."""

    keys: tuple[KeyVersionInfo, ...]
    checked_at: datetime
    soon_days: int
    store: str
    ignored: tuple[str, ...] = ()  # keys in the store whose names are not tenant ids

    @property
    def problems(self) -> list[str]:
        """Every problem, prefixed by its tenant and version."""
        return [f"{k.tenant} {k.version}: {p}" for k in self.keys for p in k.problems]

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not any(k.problems for k in self.keys)

    @property
    def tenants(self) -> list[str]:
        """The tenants that have a key."""
        return sorted({k.tenant for k in self.keys})

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON output."""
        return {
            "store": self.store,
            "checked_at": self.checked_at.isoformat(),
            "soon_days": self.soon_days,
            "ok": self.ok,
            "tenants": len(self.tenants),
            "keys": [k.as_dict(self.checked_at) for k in self.keys],
            "problems": self.problems,
            "ignored": list(self.ignored),
        }


def assess(
    keys: Iterable[KeyVersionInfo],
    *,
    store: str,
    soon_days: int = DEFAULT_SOON_DAYS,
    now: datetime | None = None,
    ignored: Iterable[str] = (),
) -> KeyReport:
    """Attach the problems to each key version (the rules of ``keys check``).

    The current version of each tenant must be enabled, RSA-2048 and have an expiry date at
    least ``soon_days`` calendar days away. Older versions stay usable for older drops (Key Vault decrypts with
    expired keys), so only their size is checked, and only while they are enabled. No two tenants
    may share a modulus, in any version: that is one private key serving two customers.
    """
    if soon_days < 0:
        raise KeyRuleError("the warning period must be 0 days or more")
    moment = now or datetime.now(UTC)
    items = list(keys)
    owners: dict[int, list[KeyVersionInfo]] = defaultdict(list)
    for item in items:
        if item.modulus is not None:
            owners[item.modulus].append(item)
    out: list[KeyVersionInfo] = []
    for item in items:
        found = findings(item, owners[item.modulus] if item.modulus is not None else [], soon_days, moment)
        out.append(replace(item, problems=tuple(text for _, text in found)))
    out.sort(key=lambda k: (k.tenant, not k.current, -(k.created_on or moment).timestamp()))
    return KeyReport(keys=tuple(out), checked_at=moment, soon_days=soon_days, store=store, ignored=tuple(ignored))


#: The codes of :func:`findings` (the health rules name their problems by them).
KEY_DISABLED, KEY_NO_EXPIRY, KEY_EXPIRED, KEY_EXPIRING = "key_disabled", "key_no_expiry", "key_expired", "key_expiring"
KEY_SIZE_WRONG, KEY_UNREADABLE, KEY_SHARED = "key_size", "key_unreadable", "key_shared"


def findings(
    item: KeyVersionInfo, same_modulus: Iterable[KeyVersionInfo], soon_days: int, moment: datetime
) -> list[tuple[str, str]]:
    """What is wrong with one key version, as (code, text) pairs: the rules of :func:`assess`.

    ``same_modulus`` are the versions (of any tenant) that have this version's modulus.
    """
    out: list[tuple[str, str]] = []
    if item.current:
        if not item.enabled:
            out.append((KEY_DISABLED, "current version is disabled"))
        if item.expires_on is None:
            out.append((KEY_NO_EXPIRY, "no expiry date (the MGDC pipeline rejects keys without one)"))
        else:
            left = item.days_left(moment)
            if item.expires_on <= moment:
                out.append((KEY_EXPIRED, f"expired on {item.expires_on.date().isoformat()}: rotate it"))
            elif left is not None and left < soon_days:
                out.append((KEY_EXPIRING, f"expires in {left} days ({item.expires_on.date().isoformat()}): rotate it"))
    if item.size and item.size != KEY_SIZE and (item.current or item.enabled):
        out.append((KEY_SIZE_WRONG, f"RSA-{item.size}, must be RSA-{KEY_SIZE}"))
    if item.key_type not in ("RSA", "RSA-HSM"):
        if item.current or item.enabled:
            out.append((KEY_SIZE_WRONG, f"a {item.key_type} key, must be RSA-{KEY_SIZE}"))
    elif item.current and item.modulus is None:
        out.append((KEY_UNREADABLE, "the public key could not be read"))
    others = [o for o in same_modulus if o.tenant != item.tenant]
    if others:
        named = ", ".join(sorted({f"{o.tenant} ({o.version})" for o in others}))
        out.append((KEY_SHARED, f"same key as tenant {named}: one key must never serve two tenants"))
    return out


def duplicate_owner(modulus: int, tenant: str, keys: Iterable[KeyVersionInfo]) -> KeyVersionInfo | None:
    """A version of another tenant (or of ``tenant`` itself) that has this modulus, if any."""
    same_tenant: KeyVersionInfo | None = None
    for item in keys:
        if item.modulus != modulus:
            continue
        if item.tenant != tenant:
            return item
        same_tenant = same_tenant or item
    return same_tenant


def refuse_reuse(private_key: rsa.RSAPrivateKey, tenant: str, keys: Iterable[KeyVersionInfo], store: str) -> None:
    """Refuse a key whose modulus already belongs to any key version in the store."""
    owner = duplicate_owner(private_key.public_key().public_numbers().n, tenant, keys)
    if owner is None:
        return
    if owner.tenant != tenant:
        raise KeyRuleError(
            f"this key is already tenant {owner.tenant}'s key (version {owner.version}) in {store}:"
            " one key must never serve two tenants; generate a new key for this tenant"
        )
    raise KeyRuleError(f"this key is already tenant {tenant}'s key (version {owner.version}) in {store}")


class TenantKeyStore(Protocol):
    """What the ``keys`` commands need from a key store (Key Vault or a local key folder)."""

    def describe(self) -> str:
        """Where the keys are, for messages."""

    def create_key(self, tenant_id: str, *, expires_in_days: int = ..., rotate: bool = ...) -> CreatedKey:
        """Create an RSA-2048 key named by the tenant id (a new version with ``rotate``)."""

    def import_pem(
        self,
        tenant_id: str,
        pem: bytes,
        password: bytes | None = ...,
        *,
        expires_in_days: int = ...,
        rotate: bool = ...,
    ) -> CreatedKey:
        """Import an externally generated private key as the tenant's key."""

    def check(self, soon_days: int = ..., now: datetime | None = ...) -> KeyReport:
        """Every tenant key version with its problems."""

    def export_public(self, tenant_id: str) -> tuple[str, dict[str, Any]]:
        """The tenant's current public key as (PEM, JWK)."""

    def inventory(self) -> list[KeyVersionInfo]:
        """Every version of every tenant key (public facts only)."""

    def set_enabled(self, tenant_id: str, version: str, enabled: bool) -> None:
        """Enable or disable one version of the tenant's key."""


def read_pem_file(path: str | Path) -> bytes:
    """A PEM file's bytes, with a clear error when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise KeyRuleError(f"cannot read {path}: {exc.strerror or exc}") from None
