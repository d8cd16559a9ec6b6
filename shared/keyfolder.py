"""A local key folder: one PEM private key per tenant, for local runs, the demo and the CLI.

Layout::

    <folder>/<tenant id>.pem              the tenant's current key
    <folder>/<tenant id>.<version>.pem    older versions kept after ``keys create --rotate``

A key's version is the first 32 hex digits of the SHA-256 of its public key (SubjectPublicKeyInfo,
DER): the same shape as a Key Vault key version, and computable from the public key alone, so the
simulator can write it into ``PublicKeyVersion``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .errors import KeyNotFound, VivaRelayError
from .keys import KeyUnwrapper
from .metadata import GUID_RE

KEY_SIZE = 2048


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
    if not GUID_RE.match(tenant_id):
        raise VivaRelayError(f"tenant id {tenant_id!r} is not a GUID")
    return tenant_id.lower()


class KeyFolder:
    """The PEM files of a local key folder."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.path = Path(folder)

    def current_path(self, tenant_id: str) -> Path:
        """Path of the tenant's current key."""
        return self.path / f"{_check_tenant(tenant_id)}.pem"

    def load(self, path: Path) -> rsa.RSAPrivateKey:
        """Load one PEM private key (unencrypted)."""
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise VivaRelayError(f"{path} is not an RSA private key")
        return key

    def versions(self, tenant_id: str) -> dict[str, Path]:
        """Every key of the tenant by version, the current one first."""
        tenant = _check_tenant(tenant_id)
        out: dict[str, Path] = {}
        current = self.path / f"{tenant}.pem"
        if current.is_file():
            out[key_version(self.load(current).public_key())] = current
        for p in sorted(self.path.glob(f"{tenant}.*.pem")):
            out.setdefault(p.name[len(tenant) + 1 : -len(".pem")], p)
        return out

    def tenants(self) -> list[str]:
        """Tenant ids that have a current key."""
        return sorted(p.stem for p in self.path.glob("*.pem") if GUID_RE.match(p.stem))

    def create(self, tenant_id: str, *, rotate: bool = False) -> tuple[str, Path]:
        """Create an RSA-2048 key for the tenant; with ``rotate`` keep the old one as a version."""
        current = self.current_path(tenant_id)
        self.path.mkdir(parents=True, exist_ok=True)
        if current.exists():
            if not rotate:
                raise VivaRelayError(
                    f"tenant {tenant_id} already has a key ({current}); use --rotate for a new version"
                )
            old_version = key_version(self.load(current).public_key())
            current.rename(self.path / f"{current.stem}.{old_version}.pem")
        key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(current, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        return key_version(key.public_key()), current

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
        ordered = sorted(versions.items(), key=lambda kv: kv[0] != version)
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
