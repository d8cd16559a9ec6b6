"""A local key folder: one PEM private key per tenant, for local runs, the demo and the CLI.

Layout::

    <folder>/<tenant id>.pem              the tenant's current key
    <folder>/<tenant id>.<version>.pem    older versions kept after ``keys create --rotate``
    <folder>/<tenant id>.<version>.json   when that version was made and when it expires

A key's version is the first 32 hex digits of the SHA-256 of its public key (SubjectPublicKeyInfo,
DER): the same shape as a Key Vault key version, and computable from the public key alone, so the
simulator can write it into ``PublicKeyVersion``. PEM files hold no dates, so each version's
expiry lives in the JSON file beside it; the rules (RSA-2048, an expiry, no key shared between
tenants) are those of :mod:`shared.keycheck`, the same as for Key Vault.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .clock import to_utc
from .errors import KeyNotFound, VivaRelayError
from .ids import is_guid
from .keycheck import (
    DEFAULT_EXPIRY_DAYS,
    DEFAULT_SOON_DAYS,
    KEY_SIZE,
    CreatedKey,
    KeyReport,
    KeyVersionInfo,
    assess,
    expiry_after,
    load_private_pem,
    public_jwk,
    public_pem,
    refuse_reuse,
    require_key_size,
)
from .keys import KeyUnwrapper

__all__ = ["KEY_SIZE", "KeyFolder", "KeyFolderUnwrapper", "key_version", "padding_for"]


def padding_for(algorithm: str) -> padding.AsymmetricPadding:
    """The ``cryptography`` padding object for a Key Vault algorithm name."""
    if algorithm == "RSA-OAEP-256":
        return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    if algorithm == "RSA-OAEP":
        # RSA-OAEP is OAEP with SHA-1 by definition (Key Vault name); it is not used as a hash here.
        return padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)  # noqa: S303
    if algorithm == "RSA1_5":
        return padding.PKCS1v15()
    raise ValueError(f"unknown RSA padding {algorithm!r}")


def key_version(public_key: rsa.RSAPublicKey) -> str:
    """The version id of a public key (32 hex digits)."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:32]


def _check_tenant(tenant_id: str) -> str:
    if not is_guid(tenant_id):
        raise VivaRelayError(f"tenant id {tenant_id!r} is not a GUID")
    return tenant_id.lower()


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return to_utc(parsed)


class KeyFolder:
    """The PEM files of a local key folder."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.path = Path(folder)
        self._loaded: dict[Path, tuple[tuple[int, int], rsa.RSAPrivateKey]] = {}
        self._public: dict[Path, tuple[tuple[int, int], rsa.RSAPublicKey]] = {}

    def current_path(self, tenant_id: str) -> Path:
        """Path of the tenant's current key."""
        return self.path / f"{_check_tenant(tenant_id)}.pem"

    def load(self, path: Path) -> rsa.RSAPrivateKey:
        """Load one PEM private key (unencrypted); cached while the file is unchanged.

        Loading checks the key's primes, about 0.1 s each time: a worker would otherwise pay it for
        every version of the tenant's key, for every padding it tries, for every drop.
        """
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        cached = self._loaded.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        key = load_private_pem(path.read_bytes(), None, source=str(path))
        self._loaded[path] = (stamp, key)
        return key

    def load_public(self, path: Path) -> rsa.RSAPublicKey:
        """The public half of one PEM private key, for inventories (``keys check``, ``status``).

        The prime checks of :meth:`load` protect decryption; listing moduli and sizes needs none
        of them, and skipping them makes an inventory of hundreds of tenants take milliseconds.
        """
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        cached = self._public.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        data = path.read_bytes()
        try:
            key = serialization.load_pem_private_key(data, password=None, unsafe_skip_rsa_key_validation=True)
        except (TypeError, ValueError, UnsupportedAlgorithm):
            key = self.load(path)  # the full load gives the clear error
        if not isinstance(key, rsa.RSAPrivateKey):
            raise VivaRelayError(f"{path} is not an RSA private key")
        public = key.public_key()
        self._public[path] = (stamp, public)
        return public

    def versions(self, tenant_id: str) -> dict[str, Path]:
        """Every key of the tenant by version, the current one first."""
        tenant = _check_tenant(tenant_id)
        out: dict[str, Path] = {}
        current = self.path / f"{tenant}.pem"
        if current.is_file():
            out[key_version(self.load_public(current))] = current
        for p in sorted(self.path.glob(f"{tenant}.*.pem")):
            out.setdefault(p.name[len(tenant) + 1 : -len(".pem")], p)
        return out

    def tenants(self) -> list[str]:
        """Tenant ids that have a current key."""
        return sorted(p.stem for p in self.path.glob("*.pem") if is_guid(p.stem))

    def create(
        self, tenant_id: str, *, rotate: bool = False, expires_in_days: int = DEFAULT_EXPIRY_DAYS
    ) -> tuple[str, Path]:
        """Create an RSA-2048 key for the tenant; with ``rotate`` keep the old one as a version."""
        created = self.create_key(tenant_id, expires_in_days=expires_in_days, rotate=rotate)
        return created.version, Path(created.where)

    def create_key(
        self, tenant_id: str, *, expires_in_days: int = DEFAULT_EXPIRY_DAYS, rotate: bool = False
    ) -> CreatedKey:
        """Create an RSA-2048 key valid for ``expires_in_days``; a second one only with ``rotate``."""
        tenant = _check_tenant(tenant_id)
        expires_on = expiry_after(expires_in_days)
        self._refuse_second_key(tenant, rotate)
        key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)
        return self._install(tenant, key, expires_on, origin="created")

    def import_pem(
        self,
        tenant_id: str,
        pem: bytes,
        password: bytes | None = None,
        *,
        expires_in_days: int = DEFAULT_EXPIRY_DAYS,
        rotate: bool = False,
    ) -> CreatedKey:
        """Import an externally generated RSA-2048 private key (PEM) as the tenant's key.

        Refused when it is not RSA-2048 or when any key in the folder (any tenant, any version)
        already has its modulus. Stored unencrypted with mode 0600, like keys made by ``create``.
        """
        tenant = _check_tenant(tenant_id)
        expires_on = expiry_after(expires_in_days)
        key = load_private_pem(pem, password)
        require_key_size(key)
        self._refuse_second_key(tenant, rotate)
        refuse_reuse(key, tenant, self.inventory(), self.describe())
        return self._install(tenant, key, expires_on, origin="imported")

    def _refuse_second_key(self, tenant: str, rotate: bool) -> None:
        current = self.path / f"{tenant}.pem"
        if current.exists() and not rotate:
            raise VivaRelayError(f"tenant {tenant} already has a key ({current}); use --rotate for a new version")

    def _install(self, tenant: str, key: rsa.RSAPrivateKey, expires_on: datetime, *, origin: str) -> CreatedKey:
        """Write ``key`` as the tenant's current key; the previous current key becomes a version."""
        self.path.mkdir(parents=True, exist_ok=True)
        current = self.path / f"{tenant}.pem"
        version = key_version(key.public_key())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        # Written beside the target first, so a failure never leaves the tenant without a key.
        staging = self.path / f".{tenant}.{version}.pem.new"
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
            self._write_dates(tenant, version, expires_on, origin)
            if current.exists():
                old_version = key_version(self.load_public(current))
                current.rename(self.path / f"{tenant}.{old_version}.pem")
            os.replace(staging, current)
        finally:
            with contextlib.suppress(FileNotFoundError):
                staging.unlink()
        return CreatedKey(tenant=tenant, version=version, expires_on=expires_on, where=str(current))

    def _dates_path(self, tenant: str, version: str) -> Path:
        return self.path / f"{tenant}.{version}.json"

    def _write_dates(self, tenant: str, version: str, expires_on: datetime, origin: str) -> None:
        doc = {
            "tenant": tenant,
            "version": version,
            "created_on": datetime.now(UTC).replace(microsecond=0).isoformat(),
            "expires_on": expires_on.isoformat(),
            "origin": origin,
        }
        self._dates_path(tenant, version).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")

    def _read_doc(self, tenant: str, version: str) -> dict[str, Any]:
        try:
            doc: Any = json.loads(self._dates_path(tenant, version).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def _read_dates(self, tenant: str, version: str, pem_path: Path) -> tuple[datetime | None, datetime | None]:
        """(created, expires) of a version; keys made before expiry was recorded have no expiry."""
        created: datetime | None = datetime.fromtimestamp(pem_path.stat().st_mtime, UTC).replace(microsecond=0)
        doc = self._read_doc(tenant, version)
        return _parse_time(doc.get("created_on")) or created, _parse_time(doc.get("expires_on"))

    def is_enabled(self, tenant_id: str, version: str) -> bool:
        """False once ``keys retire`` disabled the version (recorded in its JSON file)."""
        return self._read_doc(_check_tenant(tenant_id), version).get("enabled", True) is not False

    def set_enabled(self, tenant_id: str, version: str, enabled: bool) -> None:
        """Enable or disable one older version (the PEM file is kept: nothing is deleted)."""
        tenant = _check_tenant(tenant_id)
        if version not in self.versions(tenant):
            raise KeyNotFound(f"tenant {tenant} has no key version {version} in {self.path}")
        doc = self._read_doc(tenant, version) or {"tenant": tenant, "version": version}
        doc["enabled"] = enabled
        self._dates_path(tenant, version).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")

    def all_tenants(self) -> list[str]:
        """Tenant ids with any key file, current or older version."""
        found = set(self.tenants())
        for p in self.path.glob("*.*.pem"):
            head = p.name.split(".", 1)[0]
            if is_guid(head):
                found.add(head.lower())
        return sorted(found)

    def _pem_files(self) -> dict[str, list[tuple[Path, bool]]]:
        """Tenant -> its PEM files (the current one first, then older versions), from one listing.

        One directory listing instead of a glob per tenant keeps an inventory of hundreds of tenants fast.
        """
        found: dict[str, list[tuple[Path, bool]]] = {}
        for name in sorted(p.name for p in self.path.iterdir() if p.name.endswith(".pem")):
            head, _, rest = name.partition(".")
            if is_guid(head) and rest:
                found.setdefault(head.lower(), []).append((self.path / name, rest == "pem"))
        return {t: sorted(files, key=lambda f: not f[1]) for t, files in sorted(found.items())}

    def inventory(self) -> list[KeyVersionInfo]:
        """Every version of every tenant's key (public facts only; problems not yet assessed)."""
        out: list[KeyVersionInfo] = []
        if not self.path.is_dir():
            return out
        for tenant, paths in self._pem_files().items():
            for path, is_current in paths:
                version = path.name[len(tenant) + 1 : -len(".pem")]
                modulus: int | None = None
                size = 0
                try:
                    public = self.load_public(path)
                except (OSError, ValueError, TypeError, VivaRelayError):
                    public = None
                if public is not None:
                    modulus, size = public.public_numbers().n, public.key_size
                    if is_current:
                        version = key_version(public)
                created, expires = self._read_dates(tenant, version, path)
                out.append(
                    KeyVersionInfo(
                        tenant=tenant,
                        version=version,
                        current=is_current,
                        size=size,
                        modulus=modulus,
                        created_on=created,
                        expires_on=expires,
                        enabled=self.is_enabled(tenant, version),
                    )
                )
        return out

    def check(self, soon_days: int = DEFAULT_SOON_DAYS, now: datetime | None = None) -> KeyReport:
        """Every key in the folder with its problems (see :func:`shared.keycheck.assess`)."""
        return assess(self.inventory(), store=self.describe(), soon_days=soon_days, now=now)

    def export_public(self, tenant_id: str) -> tuple[str, dict[str, Any]]:
        """The tenant's current public key as (PEM, JWK); ``kid`` is the version."""
        public = self.public_key(tenant_id)
        return public_pem(public), public_jwk(public, key_version(public))

    def describe(self) -> str:
        """Where the keys are, for messages."""
        return f"the key folder {self.path}"

    def public_key(self, tenant_id: str) -> rsa.RSAPublicKey:
        """The tenant's current public key."""
        path = self.current_path(tenant_id)
        if not path.is_file():
            raise KeyNotFound(f"no key for tenant {tenant_id} in {self.path}")
        return self.load(path).public_key()


class KeyFolderUnwrapper(KeyUnwrapper):
    """Unwraps with the tenant's PEM key from a local folder (tries older versions too)."""

    def __init__(self, folder: str | os.PathLike[str], algorithms: tuple[str, ...] = ("RSA-OAEP-256", "RSA-OAEP")):
        super().__init__(algorithms)
        self.folder = KeyFolder(folder)
        self._used_version: dict[tuple[str, str], str] = {}

    def _candidates(self, tenant_id: str, version: str) -> list[tuple[str, rsa.RSAPrivateKey]]:
        versions = self.folder.versions(tenant_id)
        if not versions:
            raise KeyNotFound(f"no key for tenant {tenant_id} in the key folder {self.folder.path}")
        # The named version first; then every other version of this tenant's key (never another
        # tenant's), because PublicKeyVersion may name a version this folder calls differently.
        # A version ``keys retire`` disabled is never used, as Key Vault refuses a disabled version.
        enabled = {v: p for v, p in versions.items() if self.folder.is_enabled(tenant_id, v)}
        ordered = sorted(enabled.items(), key=lambda kv: kv[0] != version)
        return [(v, self.folder.load(p)) for v, p in ordered]

    def rsa_decrypt(self, tenant_id: str, key_version: str, algorithm: str, wrapped: bytes) -> bytes | None:
        """Try each of the tenant's keys with ``algorithm``."""
        pad = padding_for(algorithm)
        for version, key in self._candidates(tenant_id, key_version):
            try:
                plain = key.decrypt(wrapped, pad)
            except ValueError:
                continue
            self._used_version[(tenant_id, key_version)] = version
            return plain
        return None

    def resolved_version(self, tenant_id: str, key_version: str) -> str:
        """The folder version that decrypted the key."""
        return self._used_version.get((tenant_id, key_version), key_version)
