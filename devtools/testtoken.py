"""The development credential hook: a fixed bearer token for the local HTTPS stand-ins (never in the app).

With ``VIVA_RELAY_TEST_TOKEN`` set, the CLI (and the test suite) install :func:`test_token_factory` as the
process's credential factory (``shared.runtime.use_credential_factory``), so a CLI subprocess can reach the
Key Vault / Data Factory stand-ins in devtools/. The token only ever goes to a loopback address, so the hook
can never stand in for a real sign-in. Without the setting, the production factory is used unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from azure.core.credentials import TokenCredential

from devtools.tls import StaticTokenCredential
from shared.errors import ConfigError
from shared.runtime import TEST_TOKEN_SETTING, azure_credential, use_credential_factory

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def test_token_factory(env: Mapping[str, str], target: str | None = None) -> TokenCredential:
    """The static test token when ``VIVA_RELAY_TEST_TOKEN`` is set (``target`` must be loopback), else Azure's."""
    token = env.get(TEST_TOKEN_SETTING, "").strip()
    if not token:
        return azure_credential(env, target)
    host = urlsplit(target).hostname if target else None
    if target is not None and host not in LOOPBACK:
        raise ConfigError(
            f"{TEST_TOKEN_SETTING} is for local stand-ins only, not for {target}: unset it to sign in to Azure"
        )
    return StaticTokenCredential(token)


def install_if_requested(env: Mapping[str, str] | None = None) -> bool:
    """Install :func:`test_token_factory` when ``VIVA_RELAY_TEST_TOKEN`` is set; True if it was installed."""
    if not (os.environ if env is None else env).get(TEST_TOKEN_SETTING, "").strip():
        return False
    use_credential_factory(test_token_factory)
    return True
