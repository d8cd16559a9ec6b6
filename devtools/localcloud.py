"""The Azure parts Viva Relay needs besides storage, run locally: Key Vault, Data Factory, Event Grid.

:class:`LocalCloud` starts the Key Vault stand-in and the MGDC-like Data Factory stand-in
(:mod:`devtools.mgdc_pipeline`) against an Azurite connection string and gives the app settings
that point Viva Relay at them (:meth:`LocalCloud.settings`). :class:`EventDelivery` stands in for
Event Grid plus the Functions host: it watches the landing container and hands each new
Metadata.json to the blob trigger's own code, as the host does in Azure.

Used in-process by ``make demo`` and the tests, and by ``make dev`` through :mod:`devtools.devservices`.
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
import tempfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from azure.storage.blob import BlobServiceClient
from cryptography.hazmat.primitives.asymmetric import rsa

from shared.location import is_metadata_blob
from shared.runtime import TEST_CA_BUNDLE_SETTING, TEST_TOKEN_SETTING

from .keyvault_standin import KeyVaultStandIn
from .mgdc_pipeline import MgdcPipelineStandIn

__all__ = ["EventDelivery", "LocalCloud", "app_function", "ingest_function", "settings_for"]

log = logging.getLogger("viva_relay.devtools")

EXAMPLE = Path(__file__).resolve().parent.parent / "local.settings.json.example"


def settings_for(
    connection_string: str, *, vault_url: str, factory_url: str, ca_bundle: str, subscription_id: str, token: str
) -> dict[str, str]:
    """The example settings, pointed at Azurite and the local stand-ins (a complete Values block)."""
    values: dict[str, str] = json.loads(EXAMPLE.read_text(encoding="utf-8"))["Values"]
    return values | {
        "AzureWebJobsStorage": connection_string,
        "LandingStorage": connection_string,
        "RelayStorage": connection_string,
        "KEY_SOURCE": "keyvault",
        "KEY_VAULT_URL": vault_url,
        "DATA_FACTORY_SUBSCRIPTION_ID": subscription_id,
        "DATA_FACTORY_RESOURCE_GROUP": "viva-relay-local",
        "DATA_FACTORY_NAME": "viva-relay-local-adf",
        "DATA_FACTORY_BASE_URL": factory_url,
        TEST_TOKEN_SETTING: token,
        TEST_CA_BUNDLE_SETTING: ca_bundle,
    }


class LocalCloud:
    """Key Vault and Data Factory stand-ins wired to one Azurite; a context manager.

    :param connection_string: Azurite's connection string (landing and relay storage).
    :param landing_container: where the pipeline writes its drops.
    :param rows: rows per pipeline drop.
    :param step_seconds: the longest a run stays Queued, and InProgress after its copy, when no one reads it
        (a read of the run moves it on: see :class:`~devtools.mgdc_pipeline.MgdcPipelineStandIn`).
    :param state_dir: where the CA bundle is written (default: a temporary folder removed on close).
    """

    def __init__(
        self,
        connection_string: str,
        *,
        landing_container: str = "datasets",
        rows: int = 1000,
        step_seconds: float = 1.0,
        state_dir: Path | None = None,
    ) -> None:
        self.connection_string = connection_string
        self.landing_container = landing_container
        self.subscription_id = str(uuid.uuid4())
        # One token for both stand-ins (each refuses any other), so one setting reaches both.
        token = secrets.token_urlsafe(16)
        self.vault = KeyVaultStandIn(token=token)
        landing = BlobServiceClient.from_connection_string(connection_string).get_container_client(landing_container)
        self.factory = MgdcPipelineStandIn(
            landing=landing, public_key_of=self.public_key_of, rows=rows, step_seconds=step_seconds, token=token
        )
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if state_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="viva-relay-local-")
            state_dir = Path(self._tmp.name)
        self.state_dir = state_dir
        self.ca_bundle = str((state_dir / "standin-ca.pem").resolve())

    def public_key_of(self, tenant_id: str) -> tuple[rsa.RSAPublicKey, str]:
        """The tenant's current public key from the local vault, through the real Key Vault client."""
        from shared.keyvault_admin import public_key_from_vault

        return public_key_from_vault(
            self.vault.url,
            tenant_id,
            credential=self.vault.credential,
            connection_verify=self.vault.cert_path,
            verify_challenge_resource=False,
        )

    def start(self) -> Self:
        """Start both stand-ins, write the CA bundle that trusts them, and let this process reach them.

        The app code run in this process (the demo's functions, make dev's event delivery) gets the
        stand-ins' token from the development credential factory, never from the app itself.
        """
        from devtools.testtoken import test_token_factory
        from shared.runtime import use_credential_factory

        use_credential_factory(test_token_factory)
        self.vault.start()
        self.factory.start()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        bundle = Path(self.vault.cert_path).read_text() + Path(self.factory.cert_path).read_text()
        Path(self.ca_bundle).write_text(bundle)
        return self

    def settings(self) -> dict[str, str]:
        """App settings (the Values of a local.settings.json) for Viva Relay against this local cloud."""
        return settings_for(
            self.connection_string,
            vault_url=self.vault.url,
            factory_url=self.factory.url,
            ca_bundle=self.ca_bundle,
            subscription_id=self.subscription_id,
            token=self.vault.credential.token,
        ) | {"LANDING_CONTAINER": self.landing_container}

    def close(self) -> None:
        """Stop both stand-ins."""
        self.factory.close()
        self.vault.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class EventDelivery:
    """Event Grid + the Functions host, locally: each new Metadata.json goes to the ingest function.

    Polls the landing container every ``interval`` seconds (a blob re-written with a new ETag is a
    new event, as in Azure) and calls the blob trigger's code with the blob's content. Like the
    host, it reads the app settings from the process environment (``get_runtime``).
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.delivered: list[str] = []
        self._seen: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="event-delivery", daemon=True)

    def start(self) -> Self:
        """Start watching in a daemon thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching (after the delivery under way, if any)."""
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll_once()
            except Exception:
                log.exception("event delivery: could not read the landing container; trying again")

    def poll_once(self) -> None:
        """Deliver every Metadata.json not delivered before."""
        from azure.functions.blob import InputStream

        from shared.runtime import get_runtime

        container = get_runtime().landing_container()
        if not container.exists():
            return
        for blob in container.list_blobs():
            key = (blob.name, str(blob.etag))
            if key in self._seen or not is_metadata_blob(blob.name):
                continue
            self._seen.add(key)
            try:
                body = container.download_blob(blob.name).readall()
                ingest_function()(InputStream(data=body, name=f"{container.container_name}/{blob.name}"))
            except Exception:
                log.exception("event delivery: the ingest function raised for %s", blob.name)
            else:
                self.delivered.append(blob.name)


@functools.cache
def _app_functions() -> dict[str, Callable[..., None]]:
    # The app indexes its blueprints once: a second get_functions() would register them twice.
    import function_app

    return {str(f.get_function_name()): f.get_user_function() for f in function_app.app.get_functions()}


def app_function(name: str) -> Callable[..., None]:
    """A function of the app by name (its own code, as the Functions host indexes and calls it)."""
    return _app_functions()[name]


def ingest_function() -> Callable[..., None]:
    """The blob-triggered ``ingest_drop`` function's own code."""
    return app_function("ingest_drop")
