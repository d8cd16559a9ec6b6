"""Key sources: where the tenant keys live, registered by their ``KEY_SOURCE`` name.

A key source is its unwrapper (ingest, ``drop decrypt``: unwrap a drop's file key) and its admin store
(``keys create/import/check/export-public``) together, so the function (``Runtime.unwrapper``) and the CLI
(``viva_relay/cli/keysource.py``) choose a backend in this one place. A new key backend is one module with
its unwrapper and store, plus one entry in :data:`KEY_SOURCES` (and its name in ``config.KEY_SOURCES``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .keycheck import TenantKeyStore
from .keyfolder import KeyFolder, KeyFolderUnwrapper
from .keys import KeyUnwrapper

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from .config import Settings

#: unwrapper(where, algorithms, credential, client options) -> KeyUnwrapper
UnwrapperFactory = Callable[[str, tuple[str, ...], "TokenCredential | None", Mapping[str, Any]], KeyUnwrapper]
#: store(where, settings env) -> a context manager yielding the admin store (closed afterwards)
StoreFactory = Callable[[str, Mapping[str, str] | None], contextlib.AbstractContextManager[TenantKeyStore]]


@dataclass(frozen=True)
class KeySource:
    """One key backend: how to find it in the settings, its unwrapper and its admin store."""

    name: str
    #: Whether it signs in (Key Vault: the process's credential) or reads local files.
    needs_credential: bool
    #: Where it is according to the function's settings (a folder path, a vault URL).
    where: Callable[[Settings], str]
    unwrapper: UnwrapperFactory
    store: StoreFactory


def _folder_unwrapper(
    where: str, algorithms: tuple[str, ...], credential: TokenCredential | None, options: Mapping[str, Any]
) -> KeyUnwrapper:
    return KeyFolderUnwrapper(Path(where), algorithms)


@contextlib.contextmanager
def _folder_store(where: str, env: Mapping[str, str] | None) -> Iterator[TenantKeyStore]:
    yield KeyFolder(Path(where))


def _vault_unwrapper(
    where: str, algorithms: tuple[str, ...], credential: TokenCredential | None, options: Mapping[str, Any]
) -> KeyUnwrapper:
    from .keyvault import KeyVaultUnwrapper

    if credential is None:
        raise ConfigError("Key Vault needs a credential")
    return KeyVaultUnwrapper(where, credential, algorithms, **options)


@contextlib.contextmanager
def _vault_store(where: str, env: Mapping[str, str] | None) -> Iterator[TenantKeyStore]:
    from .keyvault_admin import VaultKeys

    with VaultKeys.from_env(where, env) as vault:
        yield vault


KEY_SOURCES: dict[str, KeySource] = {
    "folder": KeySource("folder", False, lambda s: str(s.key_folder), _folder_unwrapper, _folder_store),
    "keyvault": KeySource("keyvault", True, lambda s: s.require_key_vault(), _vault_unwrapper, _vault_store),
}


def key_source(name: str) -> KeySource:
    """The registered key source called ``name``; ConfigError for an unknown one."""
    try:
        return KEY_SOURCES[name]
    except KeyError:
        raise ConfigError(f"KEY_SOURCE must be one of {', '.join(KEY_SOURCES)}, not {name!r}") from None
