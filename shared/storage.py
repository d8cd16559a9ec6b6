"""Storage clients from a Functions-style connection name.

``<name>`` holding a connection string (``UseDevelopmentStorage=true`` included) selects key/SAS
auth; otherwise ``<name>__blobServiceUri`` / ``__queueServiceUri`` / ``__tableServiceUri`` (or
``<name>__serviceUri`` for blob, ``<name>__accountName``) select managed identity through
``DefaultAzureCredential``, exactly as the Functions host resolves trigger connections.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from azure.core.credentials import TokenCredential
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient

from .errors import ConfigError

Service = Literal["blob", "queue", "table"]
_DEV = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;"
    "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"
)


def connection_string(env: Mapping[str, str], name: str) -> str | None:
    """The connection string stored under ``name``, if any (dev storage expanded)."""
    value = (env.get(name) or "").strip()
    if not value:
        return None
    if value.lower().startswith("usedevelopmentstorage=true"):
        return _DEV
    if "=" not in value:
        raise ConfigError(f"setting {name} is not a storage connection string")
    return value


def service_uri(env: Mapping[str, str], name: str, service: Service) -> str | None:
    """The identity-based endpoint of ``service`` for connection ``name``."""
    uri = env.get(f"{name}__{service}ServiceUri") or (env.get(f"{name}__serviceUri") if service == "blob" else None)
    if uri:
        return uri.rstrip("/")
    account = env.get(f"{name}__accountName")
    if account:
        suffix = {"blob": "blob", "queue": "queue", "table": "table"}[service]
        return f"https://{account}.{suffix}.core.windows.net"
    return None


def _describe(name: str, service: Service) -> str:
    return (
        f"connection {name} is not configured for {service}: set {name} to a connection string or"
        f" {name}__{service}ServiceUri for managed identity"
    )


def blob_service(env: Mapping[str, str], name: str, credential: TokenCredential | None, **kw: Any) -> BlobServiceClient:
    """A BlobServiceClient for connection ``name``."""
    cs = connection_string(env, name)
    if cs:
        return BlobServiceClient.from_connection_string(cs, **kw)
    uri = service_uri(env, name, "blob")
    if not uri or credential is None:
        raise ConfigError(_describe(name, "blob"))
    return BlobServiceClient(uri, credential=credential, **kw)


def queue_service(
    env: Mapping[str, str], name: str, credential: TokenCredential | None, **kw: Any
) -> QueueServiceClient:
    """A QueueServiceClient for connection ``name``."""
    cs = connection_string(env, name)
    if cs:
        return QueueServiceClient.from_connection_string(cs, **kw)
    uri = service_uri(env, name, "queue")
    if not uri or credential is None:
        raise ConfigError(_describe(name, "queue"))
    return QueueServiceClient(uri, credential=credential, **kw)


def table_service(
    env: Mapping[str, str], name: str, credential: TokenCredential | None, **kw: Any
) -> TableServiceClient:
    """A TableServiceClient for connection ``name``."""
    cs = connection_string(env, name)
    if cs:
        return TableServiceClient.from_connection_string(cs, **kw)
    uri = service_uri(env, name, "table")
    if not uri or credential is None:
        raise ConfigError(_describe(name, "table"))
    return TableServiceClient(uri, credential=credential, **kw)


def is_configured(env: Mapping[str, str], name: str, service: Service) -> bool:
    """True when connection ``name`` can reach ``service``."""
    return bool(connection_string(env, name) or service_uri(env, name, service))
