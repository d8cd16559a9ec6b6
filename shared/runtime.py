"""The clients one worker needs, built lazily from :class:`Settings` (never at import time).

Triggers call :func:`get_runtime` (one per process); tests and the CLI build their own
:class:`Runtime` with the same settings names and, for local stand-ins, extra client options.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from azure.core.credentials import TokenCredential
from azure.core.exceptions import ResourceExistsError
from azure.data.tables import TableClient
from azure.storage.blob import BlobServiceClient, ContainerClient
from azure.storage.queue import QueueClient

from . import storage
from .clock import Clock, utc_now
from .config import LANDING_CONNECTION, RELAY_CONNECTION, Settings
from .errors import ConfigError
from .keys import KeyUnwrapper
from .keysources import key_source
from .ledger import TableDropLedger

if TYPE_CHECKING:
    from azure.mgmt.datafactory import DataFactoryManagementClient

    from .transforms import Pseudonymiser


#: Development setting: a fixed bearer token for the local HTTPS stand-ins. The app never honours it itself:
#: only a development credential factory (devtools/testtoken.py, installed by the CLI and the tests) does.
TEST_TOKEN_SETTING = "VIVA_RELAY_TEST_TOKEN"  # noqa: S105 - the setting's name, not a token
#: Test-only setting beside it: the local stand-ins' certificates (PEM), trusted for loopback URLs only.
TEST_CA_BUNDLE_SETTING = "VIVA_RELAY_TEST_CA_BUNDLE"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")

#: Makes a credential: ``factory(env, target)``, ``target`` being the URL the token is for when known.
CredentialFactory = Callable[[Mapping[str, str], str | None], TokenCredential]


def azure_credential(env: Mapping[str, str], target: str | None = None) -> TokenCredential:
    """``DefaultAzureCredential`` (managed identity in Azure, ``az login`` on a laptop): the production factory."""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


_credential_factory: CredentialFactory = azure_credential


def use_credential_factory(factory: CredentialFactory | None) -> None:
    """Install the process's credential factory (None: back to :func:`azure_credential`).

    Development tools install the stand-ins' test-token factory here; the deployed app never calls this.
    """
    global _credential_factory  # noqa: PLW0603 - one factory per process, chosen by its entry point
    _credential_factory = factory or azure_credential


def default_credential(
    env: Mapping[str, str] | None = None, target: str | None = None, *, factory: CredentialFactory | None = None
) -> TokenCredential:
    """The credential from ``factory`` (default: the process's, see :func:`use_credential_factory`).

    ``VIVA_RELAY_TEST_TOKEN`` set without a development factory is a ConfigError: the app never turns a
    development setting into a silent fallback.
    """
    e = os.environ if env is None else env
    chosen = factory or _credential_factory
    if e.get(TEST_TOKEN_SETTING, "").strip() and chosen is azure_credential:
        raise ConfigError(
            f"{TEST_TOKEN_SETTING} is for local stand-ins only (development tools), not for this process:"
            " unset it to sign in to Azure"
        )
    return chosen(e, target)


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
        return {"verify_challenge_resource": False} | standin_tls_options(e, vault_url)
    return {}


def standin_tls_options(env: Mapping[str, str], url: str) -> dict[str, Any]:
    """``connection_verify`` for a loopback stand-in when VIVA_RELAY_TEST_CA_BUNDLE is set (else nothing)."""
    bundle = env.get(TEST_CA_BUNDLE_SETTING, "").strip()
    if bundle and env.get(TEST_TOKEN_SETTING, "").strip() and urlsplit(url).hostname in _LOOPBACK:
        return {"connection_verify": bundle}
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
        credential_factory: CredentialFactory | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self.settings = settings
        #: Where ingest, the ledger and cleanup get "now" (tests set a ManualClock instead of sleeping).
        self.clock = clock
        self._credential = credential
        #: Builds the credential on first use when none was given (default: the process's factory).
        self.credential_factory = credential_factory
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
                self._credential = default_credential(self.settings.env, factory=self.credential_factory)
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
        # Late-bound: a test may set rt.clock after the ledger was built.
        return TableDropLedger(self.table(self.settings.ledger_table), clock=lambda: self.clock())  # noqa: PLW0108

    @cached_property
    def unwrapper(self) -> KeyUnwrapper:
        """The ``KEY_SOURCE`` backend's unwrapper (shared/keysources.py): Key Vault in Azure, a folder locally."""
        s = self.settings
        source = key_source(s.key_source)
        where = source.where(s)
        if not source.needs_credential:
            return source.unwrapper(where, s.unwrap_algorithms, None, {})
        options = keyvault_client_options(s.env, where) | self.keyvault_kwargs
        return source.unwrapper(where, s.unwrap_algorithms, self.credential, options)

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
                base_url = self.settings.data_factory_base_url
                options = standin_tls_options(self.settings.env, base_url) if base_url else {}
                client = DataFactoryManagementClient(
                    credential,
                    subscription_id,
                    base_url=base_url or None,
                    **(options | self.datafactory_kwargs),
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
