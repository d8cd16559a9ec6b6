"""Where the tenant keys are, for every command that needs them: Key Vault or a local key folder.

``--vault-url URL`` or ``--key-folder DIR`` on the command line; otherwise the settings decide
(``KEY_SOURCE``, ``KEY_VAULT_URL``, ``KEY_FOLDER``, from the environment or ``--settings``); with
nothing configured at all, the local folder ``./keys``.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from shared.config import parse_key_source
from shared.errors import ConfigError
from shared.keycheck import TenantKeyStore
from shared.keys import KeyUnwrapper
from shared.keysources import KEY_SOURCES
from shared.keysources import KeySource as Source

from . import common


def add_key_source_options(parser: argparse.ArgumentParser) -> None:
    """``--vault-url`` | ``--key-folder`` (and ``--settings``)."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--vault-url",
        metavar="URL",
        help="the Key Vault holding the tenant keys, e.g. https://myvault.vault.azure.net"
        " (default: KEY_VAULT_URL when KEY_SOURCE=keyvault)",
    )
    where.add_argument(
        "--key-folder",
        metavar="DIR",
        type=Path,
        help="a local key folder instead of Key Vault (default: KEY_FOLDER, or ./keys when nothing is configured)",
    )
    common.add_settings_option(parser)


@dataclass(frozen=True)
class KeySource:
    """Either a Key Vault URL or a local folder, and the settings to reach it."""

    vault_url: str = ""
    folder: Path | None = None
    env: Mapping[str, str] | None = None

    def describe(self) -> str:
        """For messages."""
        return f"Key Vault {self.vault_url}" if self.vault_url else f"the key folder {self.folder}"

    @property
    def backend(self) -> Source:
        """The registered key source (shared/keysources.py) this names."""
        return KEY_SOURCES["keyvault" if self.vault_url else "folder"]

    @property
    def where(self) -> str:
        """The vault URL or the folder path."""
        return self.vault_url or str(self.folder or Path("keys"))

    def require_sign_in(self) -> None:
        """For a vault: NotSignedIn (exit 3, with how to sign in) before any call when nobody is signed in."""
        from shared.preflight import require_sign_in, vault_scope
        from shared.runtime import default_credential

        credential = default_credential(self.env, target=self.vault_url)
        require_sign_in(credential, vault_scope(self.vault_url), f"Key Vault {self.vault_url}")

    @contextlib.contextmanager
    def store(self) -> Iterator[TenantKeyStore]:
        """The key store (closed afterwards)."""
        if self.backend.needs_credential:
            self.require_sign_in()
        with self.backend.store(self.where, self.env) as store:
            yield store

    def unwrapper(self, algorithms: tuple[str, ...]) -> KeyUnwrapper:
        """The unwrapper for ``drop decrypt``: Key Vault's decrypt, or the folder's PEM files."""
        if not self.backend.needs_credential:
            return self.backend.unwrapper(self.where, algorithms, None, {})
        from shared.runtime import default_credential, keyvault_client_options

        self.require_sign_in()
        credential = default_credential(self.env, target=self.where)
        return self.backend.unwrapper(self.where, algorithms, credential, keyvault_client_options(self.env, self.where))


def key_source(args: argparse.Namespace) -> KeySource:
    """The key source the command line or the settings name."""
    from shared.keyvault_admin import check_vault_url

    env = common.load_env(args)
    if getattr(args, "vault_url", None):
        return KeySource(vault_url=check_vault_url(args.vault_url), env=env)
    if getattr(args, "key_folder", None):
        return KeySource(folder=Path(args.key_folder), env=env)
    source = parse_key_source(env.get("KEY_SOURCE", ""))
    vault = env.get("KEY_VAULT_URL", "").strip()
    if source == "folder" or (not source and not vault):
        return KeySource(folder=Path(env.get("KEY_FOLDER") or "keys"), env=env)
    if not vault:
        raise ConfigError(
            "KEY_SOURCE is keyvault but KEY_VAULT_URL is not set: give --vault-url URL or --key-folder DIR"
        )
    return KeySource(vault_url=check_vault_url(vault), env=env)
