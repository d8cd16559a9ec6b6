"""The clients one worker needs, built lazily from :class:`Settings` (never at import time).

Triggers call :func:`get_runtime` (one per process); tests and the CLI build their own
:class:`Runtime` with the same settings names and, for local stand-ins, extra client options.
"""

from __future__ import annotations

import contextlib
import threading
from functools import cached_property
from typing import Any

from azure.core.credentials import TokenCredential
from azure.core.exceptions import ResourceExistsError
from azure.data.tables import TableClient
from azure.storage.blob import BlobServiceClient, ContainerClient
from azure.storage.queue import QueueClient

from . import storage
from .config import LANDING_CONNECTION, RELAY_CONNECTION, Settings
from .keyfolder import KeyFolderUnwrapper
from .keys import KeyUnwrapper
from .ledger import TableDropLedger


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
        self._queue_ready = False

    @property
    def credential(self) -> TokenCredential:
        """DefaultAzureCredential (managed identity in Azure), created on first use."""
        with self._lock:
            if self._credential is None:
                from azure.identity import DefaultAzureCredential

                self._credential = DefaultAzureCredential()
            return self._credential

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

    @cached_property
    def queue(self) -> QueueClient:
        """The downstream queue (created on first use if missing)."""
        service = storage.queue_service(
            self.settings.env,
            RELAY_CONNECTION,
            self._maybe_credential(RELAY_CONNECTION, "queue"),
            **self.storage_kwargs,
        )
        client = service.get_queue_client(self.settings.downstream_queue)
        with contextlib.suppress(ResourceExistsError):
            client.create_queue()
        return client

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

        return KeyVaultUnwrapper(s.key_vault_url, self.credential, s.unwrap_algorithms, **self.keyvault_kwargs)


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def get_runtime() -> Runtime:
    """The process-wide runtime, built from the environment on first use."""
    global _runtime  # noqa: PLW0603 - one runtime per worker process, built lazily
    with _runtime_lock:
        if _runtime is None:
            _runtime = Runtime(Settings.from_env())
        return _runtime
