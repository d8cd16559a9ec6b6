"""The tenant registry: which customer tenants are onboarded and how to start their pipeline runs.

One row per tenant in Azure Table storage (``TENANT_TABLE``): PartitionKey ``tenant``, RowKey the
tenant id. A row names the Data Factory that runs the tenant's pipeline (empty fields fall back to
the ``DATA_FACTORY_*`` settings), the tenant's own pipeline parameters (stored as JSON text), whether
the directory dataset is copied too, whether the tenant is enabled and when it consented.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any, Final

from azure.core.exceptions import (
    ResourceExistsError,
)

from .config import Settings
from .errors import ConfigError, VivaRelayError
from .ids import is_guid
from .preflight import check_subscription_id
from .tables import TableStore, as_utc, entity_props, with_etag_retries

PARTITION: Final = "tenant"
#: How long an admin's approval of the MGDC app lasts (SPEC.md: 180 days).
CONSENT_VALID_DAYS: Final = 180
#: Parameters the relay sets itself; a tenant row may not override them.
RESERVED_PARAMETERS: Final = frozenset({"TenantId"})

_PARAM_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_ARM_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._()-]{0,259}$")


class TenantNotFound(VivaRelayError):
    """No tenant with that id is registered."""


class TenantExists(VivaRelayError):
    """The tenant is already registered (and replacing it was not asked for)."""


class InvalidTenant(VivaRelayError):
    """A tenant's registration has a value Viva Relay cannot use."""


def normalise_tenant_id(text: str) -> str:
    """The tenant id in its canonical (lower-case GUID) form; InvalidTenant if it is not a GUID."""
    value = (text or "").strip()
    if not is_guid(value):
        raise InvalidTenant(f"{text!r} is not a tenant id (a GUID)")
    return value.lower()


@dataclass(frozen=True)
class FactoryRef:
    """Where a tenant's pipeline runs: subscription, resource group, factory and pipeline."""

    subscription_id: str
    resource_group: str
    factory_name: str
    pipeline: str

    def __str__(self) -> str:
        return f"{self.subscription_id}/{self.resource_group}/{self.factory_name}/{self.pipeline}"


@dataclass(frozen=True)
class Tenant:
    """One onboarded customer tenant. Empty factory fields mean "use the DATA_FACTORY_* setting"."""

    tenant_id: str
    display_name: str = ""
    factory_subscription_id: str = ""
    factory_resource_group: str = ""
    factory_name: str = ""
    pipeline: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    include_directory: bool = False
    enabled: bool = True
    consent_date: date | None = None
    disabled_reason: str = ""
    added_at: datetime | None = None
    updated_at: datetime | None = None
    #: The row's ETag when read (the registry's updates are guarded by it), and columns this version
    #: does not know, kept when the row is rewritten.
    etag: str = field(default="", compare=False)
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def validate(self) -> Tenant:
        """Check every field; return the tenant with its id normalised, or raise InvalidTenant."""
        tenant_id = normalise_tenant_id(self.tenant_id)
        if not isinstance(self.parameters, dict):
            raise InvalidTenant("pipeline parameters must be a JSON object")
        for name in self.parameters:
            if not isinstance(name, str) or not _PARAM_NAME_RE.match(name):
                raise InvalidTenant(f"{name!r} is not a valid pipeline parameter name")
            if name in RESERVED_PARAMETERS:
                raise InvalidTenant(f"pipeline parameter {name} is set by Viva Relay from the tenant id")
        for label, value in (
            ("factory resource group", self.factory_resource_group),
            ("factory name", self.factory_name),
            ("pipeline", self.pipeline),
        ):
            if value and not _ARM_NAME_RE.match(value):
                raise InvalidTenant(f"{value!r} is not a valid {label}")
        if self.factory_subscription_id and not is_guid(self.factory_subscription_id):
            raise InvalidTenant(f"{self.factory_subscription_id!r} is not a subscription id (a GUID)")
        return replace(self, tenant_id=tenant_id)

    def factory(self, settings: Settings) -> FactoryRef:
        """The tenant's Data Factory pipeline, its own fields over the DATA_FACTORY_* settings."""
        ref = FactoryRef(
            subscription_id=self.factory_subscription_id or settings.data_factory_subscription_id,
            resource_group=self.factory_resource_group or settings.data_factory_resource_group,
            factory_name=self.factory_name or settings.data_factory_name,
            pipeline=self.pipeline or settings.data_factory_pipeline,
        )
        missing = [
            f"{setting} (or tenants add {option})"
            for value, setting, option in (
                (ref.subscription_id, "DATA_FACTORY_SUBSCRIPTION_ID", "--factory-subscription"),
                (ref.resource_group, "DATA_FACTORY_RESOURCE_GROUP", "--factory-resource-group"),
                (ref.factory_name, "DATA_FACTORY_NAME", "--factory-name"),
                (ref.pipeline, "DATA_FACTORY_PIPELINE", "--pipeline"),
            )
            if not value
        ]
        if missing:
            raise ConfigError(f"tenant {self.tenant_id} has no Data Factory to run in: set {', '.join(missing)}")
        source = "--factory-subscription" if self.factory_subscription_id else "DATA_FACTORY_SUBSCRIPTION_ID"
        check_subscription_id(ref.subscription_id, source)
        return ref

    def consent_expires(self) -> date | None:
        """When the admin's approval runs out (consent date + 180 days), if the date is known."""
        return self.consent_date + timedelta(days=CONSENT_VALID_DAYS) if self.consent_date else None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly view (for the CLI)."""
        expires = self.consent_expires()
        return {
            "tenant_id": self.tenant_id,
            "display_name": self.display_name,
            "enabled": self.enabled,
            "disabled_reason": self.disabled_reason,
            "factory_subscription_id": self.factory_subscription_id,
            "factory_resource_group": self.factory_resource_group,
            "factory_name": self.factory_name,
            "pipeline": self.pipeline,
            "parameters": self.parameters,
            "include_directory": self.include_directory,
            "consent_date": self.consent_date.isoformat() if self.consent_date else None,
            "consent_expires": expires.isoformat() if expires else None,
            "added_at": self.added_at.isoformat() if self.added_at else None,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
        }


class TenantCodec:
    """Tenant <-> registry entity: the one place that knows the registry's columns and their types.

    Pipeline parameters are stored as JSON text, the consent date as ``YYYY-MM-DD`` text ('' when
    unknown), the timestamps as Table datetimes (only when set).
    """

    #: Record field -> column, for the plain columns (strings and booleans).
    PLAIN: Final = {
        "display_name": "DisplayName",
        "factory_subscription_id": "FactorySubscriptionId",
        "factory_resource_group": "FactoryResourceGroup",
        "factory_name": "FactoryName",
        "pipeline": "Pipeline",
        "include_directory": "IncludeDirectory",
        "enabled": "Enabled",
        "disabled_reason": "DisabledReason",
    }
    PARAMETERS: Final = "Parameters"
    CONSENT_DATE: Final = "ConsentDate"
    ADDED_AT: Final = "AddedAt"
    UPDATED_AT: Final = "UpdatedAt"
    KNOWN: Final = frozenset(
        {"PartitionKey", "RowKey", *PLAIN.values(), PARAMETERS, CONSENT_DATE, ADDED_AT, UPDATED_AT}
    )

    @classmethod
    def encode(cls, tenant: Tenant) -> dict[str, Any]:
        """The entity to write for ``tenant`` (unknown columns it was read with included)."""
        entity: dict[str, Any] = {k: v for k, v in tenant.extra.items() if v is not None and k not in cls.KNOWN}
        entity |= {"PartitionKey": PARTITION, "RowKey": tenant.tenant_id}
        entity |= {column: getattr(tenant, attr) for attr, column in cls.PLAIN.items()}
        entity[cls.PARAMETERS] = json.dumps(tenant.parameters, sort_keys=True)
        entity[cls.CONSENT_DATE] = tenant.consent_date.isoformat() if tenant.consent_date else ""
        if tenant.added_at:
            entity[cls.ADDED_AT] = tenant.added_at
        if tenant.updated_at:
            entity[cls.UPDATED_AT] = tenant.updated_at
        return entity

    @classmethod
    def decode(cls, entity: Mapping[str, Any]) -> Tenant:
        """The tenant of a stored entity; InvalidTenant when a stored value cannot be read."""
        tenant_id = str(entity["RowKey"])
        try:
            parameters = json.loads(str(entity.get(cls.PARAMETERS) or "{}"))
        except ValueError:
            raise InvalidTenant(f"tenant {tenant_id}: the stored pipeline parameters are not JSON") from None
        if not isinstance(parameters, dict):
            raise InvalidTenant(f"tenant {tenant_id}: the stored pipeline parameters are not a JSON object")
        consent_text = str(entity.get(cls.CONSENT_DATE) or "")
        try:
            consent = date.fromisoformat(consent_text) if consent_text else None
        except ValueError:
            raise InvalidTenant(f"tenant {tenant_id}: stored consent date {consent_text!r} is not YYYY-MM-DD") from None
        metadata = getattr(entity, "metadata", None) or {}
        return Tenant(
            tenant_id=tenant_id,
            display_name=str(entity.get("DisplayName") or ""),
            factory_subscription_id=str(entity.get("FactorySubscriptionId") or ""),
            factory_resource_group=str(entity.get("FactoryResourceGroup") or ""),
            factory_name=str(entity.get("FactoryName") or ""),
            pipeline=str(entity.get("Pipeline") or ""),
            parameters=parameters,
            include_directory=bool(entity.get("IncludeDirectory", False)),
            enabled=bool(entity.get("Enabled", True)),
            consent_date=consent,
            disabled_reason=str(entity.get("DisabledReason") or ""),
            added_at=as_utc(entity.get(cls.ADDED_AT)),
            updated_at=as_utc(entity.get(cls.UPDATED_AT)),
            etag=str(metadata.get("etag", "")),
            extra={k: v for k, v in entity_props(entity).items() if k not in cls.KNOWN},
        )


class TenantRegistry(TableStore):
    """Onboarded tenants in Azure Table storage (Azurite locally)."""

    label = "tenant registry"

    def _insert(self, tenant: Tenant) -> Tenant:
        return replace(tenant, etag=self.insert_entity(TenantCodec.encode(tenant)))

    def _replace(self, tenant: Tenant) -> Tenant:
        """Write ``tenant`` over its row if the row is unchanged since it was read (its ETag)."""
        return replace(tenant, etag=self.replace_entity(TenantCodec.encode(tenant), tenant.etag))

    def _update(self, tenant_id: str, change: Callable[[Tenant], Tenant]) -> Tenant:
        """Read the tenant, apply ``change``, write it back ETag-guarded (again on a lost race)."""
        return with_etag_retries(
            lambda: self._replace(change(self.require(tenant_id))),
            f"could not update tenant {tenant_id}: too much contention",
        )

    def add(self, tenant: Tenant, *, replace_existing: bool = False, now: datetime | None = None) -> Tenant:
        """Register ``tenant``; TenantExists if it is registered already and ``replace_existing`` is False.

        Replacing keeps the original ``added_at``.
        """
        self.ensure()
        moment = now or self.clock()
        clean = tenant.validate()

        def step() -> Tenant:
            existing = self.get(clean.tenant_id)
            if existing is not None and not replace_existing:
                raise TenantExists(f"tenant {clean.tenant_id} is already registered (use --replace to overwrite it)")
            if existing is None:
                try:
                    return self._insert(replace(clean, added_at=moment, updated_at=moment, etag="", extra={}))
                except ResourceExistsError:
                    if not replace_existing:
                        raise TenantExists(f"tenant {clean.tenant_id} was registered concurrently") from None
                    raise  # read it again and replace it
            kept = replace(clean, added_at=existing.added_at, etag=existing.etag, extra=existing.extra)
            return self._replace(replace(kept, updated_at=moment))

        return with_etag_retries(step, f"could not register tenant {clean.tenant_id}: too much contention")

    def get(self, tenant_id: str) -> Tenant | None:
        """One tenant, or None."""
        entity = self.read_entity(PARTITION, normalise_tenant_id(tenant_id))
        return None if entity is None else TenantCodec.decode(entity)

    def require(self, tenant_id: str) -> Tenant:
        """One tenant; TenantNotFound when it is not registered."""
        tenant = self.get(tenant_id)
        if tenant is None:
            raise TenantNotFound(f"tenant {normalise_tenant_id(tenant_id)} is not registered (tenants add)")
        return tenant

    def list(self, *, enabled_only: bool = False) -> Iterator[Tenant]:
        """Every registered tenant, ordered by tenant id (optionally only the enabled ones)."""
        entities = self.select_entities({"PartitionKey": PARTITION})
        for entity in sorted(entities, key=lambda e: str(e["RowKey"])):
            tenant = TenantCodec.decode(entity)
            if tenant.enabled or not enabled_only:
                yield tenant

    def _set_enabled(self, tenant_id: str, enabled: bool, reason: str, now: datetime | None) -> Tenant:
        moment = now or self.clock()

        def change(tenant: Tenant) -> Tenant:
            return replace(tenant, enabled=enabled, disabled_reason="" if enabled else reason, updated_at=moment)

        return self._update(tenant_id, change)

    def disable(self, tenant_id: str, reason: str = "", *, now: datetime | None = None) -> Tenant:
        """Stop starting runs for the tenant (its row and run history are kept)."""
        return self._set_enabled(tenant_id, False, reason, now)

    def enable(self, tenant_id: str, *, now: datetime | None = None) -> Tenant:
        """Start runs for the tenant again."""
        return self._set_enabled(tenant_id, True, "", now)

    def remove(self, tenant_id: str) -> Tenant:
        """Delete the tenant's registration (its run history stays in the run ledger)."""
        tenant = self.require(tenant_id)
        self.call("delete", lambda: self.table.delete_entity(PARTITION, tenant.tenant_id))
        return tenant
