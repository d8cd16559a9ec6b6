"""Managing the tenant keys in Key Vault: create, import, check, export the public key.

The partner keeps one RSA-2048 key per customer tenant in its Key Vault, named by the tenant id,
with an expiration date (SPEC.md). :class:`VaultKeys` does what the vendor documentation has
partners do by hand, with the rules of :mod:`shared.keycheck`; the local key folder
(:class:`shared.keyfolder.KeyFolder`) offers the same methods. Private keys are generated inside
Key Vault and never leave it; the only private key that ever crosses this module is one the
operator imports on purpose (``keys import``), and it is neither logged nor kept.

Roles: creating and importing keys needs "Key Vault Crypto Officer"; reading them (``keys check``,
``keys export-public``, ``drop simulate --vault-url``) needs "Key Vault Crypto User" or "Reader".
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.keyvault.keys import JsonWebKey, KeyClient, KeyOperation, KeyType, KeyVaultKey
from cryptography.hazmat.primitives.asymmetric import rsa

from . import preflight
from .errors import ConfigError, KeyNotFound, TransientError, VivaRelayError
from .ids import is_guid
from .keycheck import (
    DEFAULT_EXPIRY_DAYS,
    DEFAULT_SOON_DAYS,
    CreatedKey,
    KeyReport,
    KeyRuleError,
    KeyVersionInfo,
    assess,
    expiry_after,
    load_private_pem,
    public_jwk,
    public_pem,
    refuse_reuse,
    require_key_size,
    tenant_key_name,
)
from .runtime import default_credential, keyvault_client_options

#: What tenant keys may do: Microsoft encrypts with the public key, the relay decrypts in the vault.
KEY_OPERATIONS = [KeyOperation.encrypt, KeyOperation.decrypt, KeyOperation.wrap_key, KeyOperation.unwrap_key]
_RSA_TYPES = ("RSA", "RSA-HSM")
_OFFICER = "Key Vault Crypto Officer"
_READER = "Key Vault Crypto User"


def _first_line(exc: Exception) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return str(text).strip().splitlines()[0] if str(text).strip() else type(exc).__name__


def _error_text(exc: HttpResponseError) -> str:
    err = getattr(exc, "error", None)
    code = getattr(err, "code", None) or ""
    message = getattr(err, "message", None) or _first_line(exc)
    return f"{code}: {message}" if code else str(message)


@contextlib.contextmanager
def vault_errors(vault_url: str, action: str, role: str = _READER) -> Iterator[None]:
    """Turn Azure SDK errors into Viva Relay errors with a reason an operator can act on."""
    try:
        yield
    except ClientAuthenticationError as exc:
        if preflight.is_signin_failure(exc):
            raise preflight.signin_error(f"Key Vault {vault_url}", exc) from None
        raise ConfigError(
            f"Key Vault {vault_url} did not accept the sign-in to {action}: {_first_line(exc)}"
            f" ({preflight.SIGN_IN_HINT})"
        ) from None
    except HttpResponseError as exc:
        status = exc.status_code or 0
        detail = _error_text(exc)
        if status == 403:
            full = str(getattr(getattr(exc, "error", None), "message", None) or exc)
            raise VivaRelayError(
                f"Key Vault {vault_url} refused to {action} ({detail});"
                f" {preflight.missing_role(full, role, 'the vault')}"
            ) from None
        if status == 409:
            raise VivaRelayError(
                f"Key Vault {vault_url} could not {action} ({detail}); a deleted key of this name must be"
                " recovered (az keyvault key recover) or purged first"
            ) from None
        if status == 429 or status >= 500:
            raise TransientError(f"Key Vault {vault_url} could not {action}: HTTP {status} {detail}") from None
        raise VivaRelayError(f"Key Vault {vault_url} could not {action}: HTTP {status} {detail}") from None
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise TransientError(
            f"Key Vault {vault_url} is unreachable ({_first_line(exc)}); check the vault URL and the network"
        ) from None


def _as_int(value: Any) -> int | None:
    return int.from_bytes(value, "big") if isinstance(value, bytes | bytearray) and value else None


def key_type_of(key: KeyVaultKey) -> str:
    """The key's type as Key Vault names it (``RSA``, ``RSA-HSM``, ``EC``...)."""
    kty = key.key_type
    return str(getattr(kty, "value", kty) or "")


def public_key_of(key: KeyVaultKey) -> rsa.RSAPublicKey:
    """The RSA public key of a Key Vault key (its JWK ``n`` and ``e``)."""
    jwk = key.key
    n, e = _as_int(getattr(jwk, "n", None)), _as_int(getattr(jwk, "e", None))
    if key_type_of(key) not in _RSA_TYPES or n is None or e is None:
        raise KeyRuleError(f"Key Vault key {key.name} is a {key_type_of(key)} key, not an RSA key")
    return rsa.RSAPublicNumbers(e, n).public_key()


def private_jwk(private_key: rsa.RSAPrivateKey) -> JsonWebKey:
    """The JSON Web Key Key Vault's import expects: n, e, d, p, q, dp, dq, qi as big-endian bytes."""

    def raw(value: int) -> bytes:
        return value.to_bytes((value.bit_length() + 7) // 8, "big")

    numbers = private_key.private_numbers()
    public = numbers.public_numbers
    return JsonWebKey(
        kty=KeyType.rsa,
        key_ops=list(KEY_OPERATIONS),
        n=raw(public.n),
        e=raw(public.e),
        d=raw(numbers.d),
        p=raw(numbers.p),
        q=raw(numbers.q),
        dp=raw(numbers.dmp1),
        dq=raw(numbers.dmq1),
        qi=raw(numbers.iqmp),
    )


def check_vault_url(vault_url: str) -> str:
    """The vault URL without a trailing slash; ConfigError unless it is a vault's https:// URI."""
    return preflight.check_vault_url(vault_url)


class VaultKeys:
    """The tenant keys in one Key Vault, through the real ``KeyClient``."""

    def __init__(self, vault_url: str, credential: TokenCredential, **client_kwargs: Any) -> None:
        self.vault_url = check_vault_url(vault_url)
        self.client = KeyClient(self.vault_url, credential, **client_kwargs)
        #: names of keys in the vault that are not tenant ids (seen by the last inventory)
        self.ignored: list[str] = []

    @classmethod
    def from_env(cls, vault_url: str, env: Mapping[str, str] | None = None, **client_kwargs: Any) -> VaultKeys:
        """With the process's credential (``DefaultAzureCredential``; a test token only in tests)."""
        options = keyvault_client_options(env, vault_url) | client_kwargs
        return cls(vault_url, default_credential(env, target=check_vault_url(vault_url)), **options)

    def close(self) -> None:
        """Close the HTTP session."""
        self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def describe(self) -> str:
        """Where the keys are, for messages."""
        return f"Key Vault {self.vault_url}"

    def _current(self, name: str) -> KeyVaultKey | None:
        with vault_errors(self.vault_url, f"read key {name}"):
            try:
                return self.client.get_key(name)
            except ResourceNotFoundError:
                return None

    def _refuse_second_key(self, tenant: str, rotate: bool) -> None:
        existing = self._current(tenant)
        if existing is not None and not rotate:
            expires = existing.properties.expires_on
            raise KeyRuleError(
                f"tenant {tenant} already has a key in {self.describe()} (version {existing.properties.version},"
                f" expires {expires.date().isoformat() if expires else 'never'}); use --rotate for a new version"
            )

    def create_key(
        self, tenant_id: str, *, expires_in_days: int = DEFAULT_EXPIRY_DAYS, rotate: bool = False
    ) -> CreatedKey:
        """Create an RSA-2048 key named by the tenant id, generated inside Key Vault."""
        tenant = tenant_key_name(tenant_id)
        expires_on = expiry_after(expires_in_days)
        self._refuse_second_key(tenant, rotate)
        with vault_errors(self.vault_url, f"create key {tenant}", _OFFICER):
            key = self.client.create_rsa_key(
                tenant, size=2048, expires_on=expires_on, key_operations=list(KEY_OPERATIONS)
            )
        return CreatedKey(tenant=tenant, version=key.properties.version or "", expires_on=expires_on, where=key.id)

    def import_pem(
        self,
        tenant_id: str,
        pem: bytes,
        password: bytes | None = None,
        *,
        expires_in_days: int = DEFAULT_EXPIRY_DAYS,
        rotate: bool = False,
    ) -> CreatedKey:
        """Import an externally generated private key (PEM, optionally encrypted) as the tenant's key.

        Refused before anything is sent when the key is not RSA-2048, when the tenant already has
        a key (unless ``rotate``), or when any tenant key in the vault, any version, has the same
        modulus. After the import the vault's public key is compared with the file's.
        """
        tenant = tenant_key_name(tenant_id)
        expires_on = expiry_after(expires_in_days)
        private_key = load_private_pem(pem, password)
        require_key_size(private_key)
        self._refuse_second_key(tenant, rotate)
        refuse_reuse(private_key, tenant, self.inventory(), self.describe())
        with vault_errors(self.vault_url, f"import key {tenant}", _OFFICER):
            key = self.client.import_key(tenant, private_jwk(private_key), expires_on=expires_on)
        if public_key_of(key).public_numbers() != private_key.public_key().public_numbers():
            raise VivaRelayError(f"Key Vault stored a different public key for {tenant} than the imported one")
        return CreatedKey(tenant=tenant, version=key.properties.version or "", expires_on=expires_on, where=key.id)

    def _version_info(self, tenant: str, key: KeyVaultKey | None, props: Any, current: bool) -> KeyVersionInfo:
        size, modulus, key_type = 0, None, "RSA"
        if key is not None:
            key_type = key_type_of(key)
            if key_type in _RSA_TYPES:
                numbers = public_key_of(key).public_numbers()
                modulus, size = numbers.n, numbers.n.bit_length()
        return KeyVersionInfo(
            tenant=tenant,
            version=props.version or "",
            current=current,
            size=size,
            modulus=modulus,
            created_on=props.created_on,
            expires_on=props.expires_on,
            enabled=bool(props.enabled),
            key_type=key_type,
        )

    def inventory(self) -> list[KeyVersionInfo]:
        """Every version of every key named by a tenant id (public facts only)."""
        out: list[KeyVersionInfo] = []
        self.ignored = []
        with vault_errors(self.vault_url, "list its keys"):
            names = [p.name for p in self.client.list_properties_of_keys() if p.name]
        for name in sorted(names):
            if not is_guid(name):
                self.ignored.append(name)
                continue
            tenant = name.lower()
            current = self._current(name)
            with vault_errors(self.vault_url, f"list the versions of key {name}"):
                versions = list(self.client.list_properties_of_key_versions(name))
            current_version = current.properties.version if current else None
            for props in versions:
                if props.version == current_version:
                    out.append(self._version_info(tenant, current, props, True))
                    continue
                key: KeyVaultKey | None = None
                with vault_errors(self.vault_url, f"read key {name} version {props.version}"):
                    try:
                        key = self.client.get_key(name, props.version)
                    except HttpResponseError as exc:
                        # An older version the identity may not read (or that is gone) is listed
                        # without its public key rather than failing the whole check.
                        if exc.status_code not in (403, 404):
                            raise
                out.append(self._version_info(tenant, key, props, False))
        return out

    def check(self, soon_days: int = DEFAULT_SOON_DAYS, now: datetime | None = None) -> KeyReport:
        """Every tenant key version with its problems (see :func:`shared.keycheck.assess`)."""
        keys = self.inventory()
        return assess(keys, store=self.describe(), soon_days=soon_days, now=now, ignored=self.ignored)

    def set_enabled(self, tenant_id: str, version: str, enabled: bool) -> None:
        """Enable or disable one version of the tenant's key (``keys retire``; nothing is deleted)."""
        tenant = tenant_key_name(tenant_id)
        with vault_errors(self.vault_url, f"update key {tenant} version {version}", _OFFICER):
            self.client.update_key_properties(tenant, version, enabled=enabled)

    def public_key(self, tenant_id: str) -> tuple[rsa.RSAPublicKey, str]:
        """The tenant's current public key and its version."""
        tenant = tenant_key_name(tenant_id)
        key = self._current(tenant)
        if key is None:
            raise KeyNotFound(f"{self.describe()} has no key for tenant {tenant}")
        public = public_key_of(key)
        return public, key.properties.version or ""

    def export_public(self, tenant_id: str) -> tuple[str, dict[str, Any]]:
        """The tenant's current public key as (PEM, JWK with the versioned ``kid``)."""
        tenant = tenant_key_name(tenant_id)
        key = self._current(tenant)
        if key is None:
            raise KeyNotFound(f"{self.describe()} has no key for tenant {tenant}")
        public = public_key_of(key)
        return public_pem(public), public_jwk(public, key.id)


def public_key_from_vault(
    vault_url: str,
    tenant_id: str,
    *,
    credential: TokenCredential | None = None,
    env: Mapping[str, str] | None = None,
    **client_kwargs: Any,
) -> tuple[rsa.RSAPublicKey, str]:
    """The tenant's current public key in ``vault_url`` and its version (for ``drop simulate``).

    Without ``credential`` the process's credential is used (see :func:`default_credential`).
    """
    if credential is None:
        store = VaultKeys.from_env(vault_url, env, **client_kwargs)
    else:
        store = VaultKeys(vault_url, credential, **client_kwargs)
    with store:
        return store.public_key(tenant_id)
