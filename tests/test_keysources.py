"""One registry of key sources: the function and the CLI choose a backend in the same place."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import KEY_SOURCES as SETTING_VALUES
from shared.config import Settings
from shared.errors import ConfigError
from shared.keyfolder import KeyFolder, KeyFolderUnwrapper
from shared.keysources import KEY_SOURCES, key_source
from shared.keyvault import KeyVaultUnwrapper
from shared.runtime import Runtime
from viva_relay.cli.keysource import KeySource as CliKeySource

TENANT = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"


def test_every_key_source_setting_has_a_backend() -> None:
    assert set(KEY_SOURCES) == set(SETTING_VALUES)
    with pytest.raises(ConfigError, match="KEY_SOURCE must be one of"):
        key_source("hsm")


def test_the_function_and_the_cli_get_the_same_folder_backend(tmp_path: Path) -> None:
    KeyFolder(tmp_path).create(TENANT)
    rt = Runtime(Settings.from_env({"KEY_SOURCE": "folder", "KEY_FOLDER": str(tmp_path)}))
    cli = CliKeySource(folder=tmp_path)
    assert isinstance(rt.unwrapper, KeyFolderUnwrapper)
    assert isinstance(cli.unwrapper(("RSA-OAEP-256",)), KeyFolderUnwrapper)
    assert cli.backend is KEY_SOURCES["folder"]
    with cli.store() as store:
        assert isinstance(store, KeyFolder)


def test_key_vault_is_chosen_by_the_same_entry() -> None:
    rt = Runtime(
        Settings.from_env({"KEY_SOURCE": "keyvault", "KEY_VAULT_URL": "https://relay-vault.vault.azure.net"}),
        credential_factory=lambda env, target: pytest.fail("no sign-in needed to build the unwrapper"),
        credential=object(),  # type: ignore[arg-type]
    )
    assert isinstance(rt.unwrapper, KeyVaultUnwrapper)
    assert CliKeySource(vault_url="https://relay-vault.vault.azure.net").backend is KEY_SOURCES["keyvault"]
