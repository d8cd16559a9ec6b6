"""The partner secret that pseudonyms are made with: a Key Vault secret, or a file in the key folder.

Key Vault (``KEY_SOURCE=keyvault``): the secret ``PSEUDONYM_SECRET_NAME``, read with the app's
identity (role Key Vault Secrets User); its version is recorded on each drop, and a resumed drop
reads that same version. Key folder (``KEY_SOURCE=folder``): ``<KEY_FOLDER>/<name>.secret``; its
"version" is a fingerprint of the content. The secret's text (UTF-8) is the HMAC key.
See docs/contract.md for rotation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from azure.core.credentials import TokenCredential
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError, ServiceRequestError

from .config import Settings
from .errors import ConfigError, DropError, TransientError
from .transforms import Pseudonymiser, secret_fingerprint


class SecretChanged(DropError):
    """The secret version recorded on a drop can no longer be read (a resume after rotation)."""

    code = "pseudonym_secret"


def _from_folder(settings: Settings, version: str) -> Pseudonymiser:
    path = Path(settings.key_folder) / f"{settings.pseudonym_secret_name}.secret"
    try:
        secret = path.read_text(encoding="utf-8").strip().encode("utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"PSEUDONYMISE=true but the key folder has no secret {path} (write at least 32 random bytes as text there)"
        ) from None
    found = secret_fingerprint(secret)
    if version and version != found:
        raise SecretChanged(
            f"this drop was first pseudonymised with secret version {version}, but {path} now holds {found};"
            " put the old secret back to resume it, or reprocess it from the start"
        )
    return _checked(secret, found)


def _checked(secret: bytes, version: str) -> Pseudonymiser:
    try:
        return Pseudonymiser(secret, version)
    except ValueError as exc:
        raise ConfigError(f"the pseudonymisation secret is unusable: {exc}") from None


def _from_key_vault(
    settings: Settings, credential: TokenCredential, version: str, options: dict[str, Any]
) -> Pseudonymiser:
    from azure.keyvault.secrets import SecretClient

    name = settings.pseudonym_secret_name
    client = SecretClient(settings.require_key_vault(), credential, **options)
    try:
        bundle = client.get_secret(name, version or None)
    except ResourceNotFoundError:
        if version:
            raise SecretChanged(
                f"this drop was first pseudonymised with version {version} of secret {name}, which is gone"
            ) from None
        raise ConfigError(f"PSEUDONYMISE=true but Key Vault has no secret {name!r}") from None
    except (HttpResponseError, ServiceRequestError) as exc:
        raise TransientError(f"reading secret {name} from Key Vault failed: {exc}") from exc
    finally:
        client.close()
    if not bundle.value:
        raise ConfigError(f"the Key Vault secret {name!r} is empty")
    return _checked(bundle.value.encode("utf-8"), bundle.properties.version or "")


def load_pseudonymiser(
    settings: Settings, credential: TokenCredential | None, *, version: str = "", options: dict[str, Any] | None = None
) -> Pseudonymiser:
    """The pseudonymiser for the current secret, or for ``version`` (a resumed drop's recorded one)."""
    if settings.key_source == "folder":
        return _from_folder(settings, version)
    if credential is None:
        raise ConfigError("reading the pseudonymisation secret from Key Vault needs a credential")
    return _from_key_vault(settings, credential, version, options or {})
