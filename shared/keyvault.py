"""Key Vault backend of :class:`~shared.keys.KeyUnwrapper`: the private key never leaves the vault.

Each tenant's key is named by its tenant id; ``PublicKeyVersion`` selects the version (empty means
the current one). The RSA step is Key Vault's ``decrypt`` operation (role "Key Vault Crypto User").
"""

from __future__ import annotations

import threading
from typing import Any

from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.keyvault.keys.crypto import CryptographyClient, EncryptionAlgorithm

from .errors import KeyNotFound, KeyUnwrapError, TransientError
from .keys import KeyUnwrapper


def _error_text(exc: HttpResponseError) -> str:
    err = getattr(exc, "error", None)
    code = getattr(err, "code", None) or ""
    message = getattr(err, "message", None) or str(exc).splitlines()[0]
    return f"{code}: {message}" if code else message


class KeyVaultUnwrapper(KeyUnwrapper):
    """Unwraps file keys with Key Vault's RSA ``decrypt`` operation."""

    def __init__(
        self,
        vault_url: str,
        credential: TokenCredential,
        algorithms: tuple[str, ...] = ("RSA-OAEP-256", "RSA-OAEP"),
        **client_kwargs: Any,
    ) -> None:
        super().__init__(algorithms)
        self.vault_url = vault_url.rstrip("/")
        self.credential = credential
        self.client_kwargs = client_kwargs
        self._clients: dict[str, CryptographyClient] = {}
        self._lock = threading.Lock()

    def key_id(self, tenant_id: str, key_version: str) -> str:
        """The Key Vault key identifier for a tenant's key (and version, if given)."""
        kid = f"{self.vault_url}/keys/{tenant_id}"
        return f"{kid}/{key_version}" if key_version else kid

    def _client(self, tenant_id: str, key_version: str) -> CryptographyClient:
        kid = self.key_id(tenant_id, key_version)
        with self._lock:
            client = self._clients.get(kid)
            if client is None:
                client = CryptographyClient(kid, self.credential, **self.client_kwargs)
                self._clients[kid] = client
            return client

    def rsa_decrypt(self, tenant_id: str, key_version: str, algorithm: str, wrapped: bytes) -> bytes | None:
        """Key Vault ``decrypt``; a 400 (wrong padding for this ciphertext) means 'try the next'."""
        client = self._client(tenant_id, key_version)
        try:
            result = client.decrypt(EncryptionAlgorithm(algorithm), wrapped)
        except ResourceNotFoundError:
            raise KeyNotFound(
                f"Key Vault {self.vault_url} has no key {tenant_id}"
                + (f" version {key_version}" if key_version else "")
            ) from None
        except ClientAuthenticationError as exc:
            raise TransientError(f"Key Vault authentication failed: {exc.message}") from None
        except HttpResponseError as exc:
            status = exc.status_code or 0
            if status == 400:
                return None
            if status in (401, 403):
                raise KeyUnwrapError(
                    f"Key Vault refused to decrypt with key {tenant_id} ({_error_text(exc)}); check that"
                    " the key is enabled and the app has the 'Key Vault Crypto User' role"
                ) from None
            raise TransientError(f"Key Vault decrypt failed with HTTP {status}: {_error_text(exc)}") from None
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise TransientError(f"Key Vault unreachable: {exc}") from None
        return bytes(result.plaintext)

    def resolved_version(self, tenant_id: str, key_version: str) -> str:
        """The version Key Vault used (the current one when the metadata names none)."""
        client = self._clients.get(self.key_id(tenant_id, key_version))
        if client is not None and client.key_id:
            return client.key_id.rstrip("/").rsplit("/", 1)[-1]
        return key_version
