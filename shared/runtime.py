"""The clients one worker needs, built lazily from :class:`Settings` (never at import time).

Triggers call :func:`get_runtime` (one per process); tests and the CLI build their own
:class:`Runtime` with the same settings names and, for local stand-ins, extra client options.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from azure.core.credentials import TokenCredential
from azure.core.exceptions import ResourceExistsError
from azure.data.tables import TableClient
from azure.storage.blob import BlobServiceClient, ContainerClient
from azure.storage.queue import QueueClient

from . import storage
from .config import LANDING_CONNECTION, RELAY_CONNECTION, Settings
from .errors import ConfigError
from .keyfolder import KeyFolderUnwrapper
from .keys import KeyUnwrapper
from .ledger import TableDropLedger

if TYPE_CHECKING:
    from azure.mgmt.datafactory import DataFactoryManagementClient

    from .transforms import Pseudonymiser


#: Test-only setting: when set, :func:`default_credential` hands out this fixed bearer token instead of
#: signing in, so the CLI can reach the local HTTPS stand-ins in devtools/ from a subprocess.
TEST_TOKEN_SETTING = "VIVA_RELAY_TEST_TOKEN"  # noqa: S105 - the setting's name, not a token
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def default_credential(env: Mapping[str, str] | None = None, target: str | None = None) -> TokenCredential:
    """``DefaultAzureCredential`` (managed identity in Azure, ``az login`` on a laptop).

    Only when ``VIVA_RELAY_TEST_TOKEN`` is set (tests against the local stand-ins) is it a static
    test token instead, and then ``target`` (the URL it is for, when known) must be a loopback
    address, so the test hook can never stand in for a real sign-in. No other code chooses a
    credential.
    """
    token = (os.environ if env is None else env).get(TEST_TOKEN_SETTING, "").strip()
    if token:
        host = urlsplit(target).hostname if target else None
        if target is not None and host not in _LOOPBACK:
            raise ConfigError(
                f"{TEST_TOKEN_SETTING} is for local stand-ins only, not for {target}: unset it to sign in to Azure"
            )
        from devtools.tls import StaticTokenCredential

        return StaticTokenCredential(token)
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


#: Azure Resource Manager (public cloud); DATA_FACTORY_BASE_URL replaces it for local stand-ins.
ARM_ENDPOINT = "https://management.azure.com"


def check_test_token(env: Mapping[str, str], target: str) -> None:
    """ConfigError when the test token is set and ``target`` is not a loopback stand-in."""
    if env.get(TEST_TOKEN_SETTING, "").strip():
        default_credential(env, target)


def keyvault_client_options(env: Mapping[str, str] | None, vault_url: str) -> dict[str, Any]:
    """Extra Key Vault client options: none in production.

    Only with the test token and a loopback vault (the local stand-in) is the SDK's check that the
    401 challenge names the vault's own domain turned off; the CA bundle comes from
    ``REQUESTS_CA_BUNDLE``.
    """
    e = os.environ if env is None else env
    if e.get(TEST_TOKEN_SETTING, "").strip() and urlsplit(vault_url).hostname in _LOOPBACK:
        return {"verify_challenge_resource": False}
    return {}


class Runtime:
    """Lazily built clients and backends for one process."""

    def __init__(
        self,
        settings: Settings,
        *,
        credential: TokenCredential | None = None,
        keyvault_kwargs: dict[str, Any] | None = None,
        datafactory_kwargs: dict[str, Any] | None = None,
        storage_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self._credential = credential
        self.keyvault_kwargs = keyvault_kwargs or {}
        self.datafactory_kwargs = datafactory_kwargs or {}
        self.storage_kwargs = storage_kwargs or {}
        self._lock = threading.Lock()
        #: First backoff of the in-process retry of a drop (seconds); tests shorten it.
        self.retry_delay_seconds = 1.0
        self._datafactory: dict[str, DataFactoryManagementClient] = {}
        self._queues: dict[str, QueueClient] = {}

    @property
    def credential(self) -> TokenCredential:
        """DefaultAzureCredential (managed identity in Azure), created on first use."""
        with self._lock:
            if self._credential is None:
                if self.settings.env.get(TEST_TOKEN_SETTING, "").strip():
                    # The test hook may only ever reach loopback stand-ins: check every endpoint
                    # this runtime could send the token to, not just the one asked for first.
                    for target in self._token_targets():
                        check_test_token(self.settings.env, target)
                self._credential = default_credential(self.settings.env)
            return self._credential

    def _token_targets(self) -> list[str]:
        """Every endpoint configured for identity-based access."""
        s = self.settings
        targets = [s.key_vault_url, s.data_factory_base_url]  # datafactory() checks the ARM default itself
        for name in (LANDING_CONNECTION, RELAY_CONNECTION):
            for service in ("blob", "queue", "table"):
                uri = storage.service_uri(s.env, name, service)
                targets.append(uri or "")
        return [t for t in targets if t]

    def _maybe_credential(self, name: str, service: storage.Service) -> TokenCredential | None:
        if storage.connection_string(self.settings.env, name):
            return None
        return self.credential

    @cached_property
    def landing(self) -> BlobServiceClient:
        """The landing storage (where drops arrive)."""
        return storage.blob_service(
            self.settings.env,
            LANDING_CONNECTION,
            self._maybe_credential(LANDING_CONNECTION, "blob"),
            **self.storage_kwargs,
        )

    def landing_container(self, name: str | None = None) -> ContainerClient:
        """A landing container client (default: the watched container)."""
        return self.landing.get_container_client(name or self.settings.landing_container)

    @property
    def landing_account(self) -> str:
        """The landing account's name (part of every drop id)."""
        return str(self.landing.account_name or "landing")

    @property
    def queue(self) -> QueueClient:
        """The downstream queue (created on first use if missing)."""
        return self.queue_named(self.settings.downstream_queue)

    def queue_named(self, name: str) -> QueueClient:
        """A queue of the relay storage by name, created on first use (one client per name)."""
        with self._lock:
            client = self._queues.get(name)
        if client is not None:
            return client
        service = storage.queue_service(
            self.settings.env,
            RELAY_CONNECTION,
            self._maybe_credential(RELAY_CONNECTION, "queue"),
            **self.storage_kwargs,
        )
        client = service.get_queue_client(name)
        with contextlib.suppress(ResourceExistsError):
            client.create_queue()
        with self._lock:
            return self._queues.setdefault(name, client)

    def table(self, name: str) -> TableClient:
        """A table client in the relay storage."""
        service = storage.table_service(
            self.settings.env,
            RELAY_CONNECTION,
            self._maybe_credential(RELAY_CONNECTION, "table"),
            **self.storage_kwargs,
        )
        return service.get_table_client(name)

    @cached_property
    def ledger(self) -> TableDropLedger:
        """The drop ledger."""
        return TableDropLedger(self.table(self.settings.ledger_table))

    @cached_property
    def unwrapper(self) -> KeyUnwrapper:
        """Key Vault in Azure; the local key folder when KEY_SOURCE=folder."""
        s = self.settings
        if s.key_source == "folder":
            return KeyFolderUnwrapper(s.key_folder, s.unwrap_algorithms)
        from .keyvault import KeyVaultUnwrapper

        options = keyvault_client_options(s.env, s.key_vault_url) | self.keyvault_kwargs
        return KeyVaultUnwrapper(s.require_key_vault(), self.credential, s.unwrap_algorithms, **options)

    def pseudonymiser(self, version: str = "") -> Pseudonymiser:
        """The pseudonymiser of the partner secret (its current version, or ``version``), cached."""
        from .partner_secret import load_pseudonymiser

        with self._lock:
            cache: dict[str, Pseudonymiser] = self.__dict__.setdefault("_pseudonymisers", {})
            if version in cache:
                return cache[version]
        s = self.settings
        folder = s.key_source == "folder"
        options = {} if folder else keyvault_client_options(s.env, s.key_vault_url) | self.keyvault_kwargs
        credential = None if folder else self.credential
        found = load_pseudonymiser(s, credential, version=version, options=options)
        with self._lock:
            cache[version] = cache[found.version] = found
        return found

    def datafactory(self, subscription_id: str) -> DataFactoryManagementClient:
        """A Data Factory (ARM) client for ``subscription_id``, built once per subscription.

        ``DATA_FACTORY_BASE_URL`` replaces the Resource Manager endpoint (local stand-ins only);
        ``datafactory_kwargs`` are extra client options (tests: ``connection_verify``, retries).
        """
        from azure.mgmt.datafactory import DataFactoryManagementClient

        if self._credential is None:
            check_test_token(self.settings.env, self.settings.data_factory_base_url or ARM_ENDPOINT)
        credential = self.credential  # outside the lock: the property takes it too
        with self._lock:
            client = self._datafactory.get(subscription_id)
            if client is None:
                client = DataFactoryManagementClient(
                    credential,
                    subscription_id,
                    base_url=self.settings.data_factory_base_url or None,
                    **self.datafactory_kwargs,
                )
                self._datafactory[subscription_id] = client
            return client


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def get_runtime() -> Runtime:
    """The process-wide runtime, built from the environment on first use."""
    global _runtime  # noqa: PLW0603 - one runtime per worker process, built lazily
    with _runtime_lock:
        if _runtime is None:
            _runtime = Runtime(Settings.from_env())
        return _runtime
