"""The tenant registry: which customer tenants are onboarded and how to start their pipeline runs.

One row per tenant in Azure Table storage (``TENANT_TABLE``): PartitionKey ``tenant``, RowKey the
tenant id. A row names the Data Factory that runs the tenant's pipeline (empty fields fall back to
the ``DATA_FACTORY_*`` settings), the tenant's own pipeline parameters (stored as JSON text), whether
the directory dataset is copied too, whether the tenant is enabled and when it consented.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any, Final

from azure.core.exceptions import (
    ResourceExistsError,
)
from azure.data.tables import UpdateMode

from .config import Settings
from .errors import ConfigError, VivaRelayError
from .ids import is_guid
from .preflight import check_subscription_id
from .tables import TableStore, as_utc, utcnow

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


def _to_entity(tenant: Tenant) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "PartitionKey": PARTITION,
        "RowKey": tenant.tenant_id,
        "DisplayName": tenant.display_name,
        "FactorySubscriptionId": tenant.factory_subscription_id,
        "FactoryResourceGroup": tenant.factory_resource_group,
        "FactoryName": tenant.factory_name,
        "Pipeline": tenant.pipeline,
        "Parameters": json.dumps(tenant.parameters, sort_keys=True),
        "IncludeDirectory": tenant.include_directory,
        "Enabled": tenant.enabled,
        "ConsentDate": tenant.consent_date.isoformat() if tenant.consent_date else "",
        "DisabledReason": tenant.disabled_reason,
    }
    if tenant.added_at:
        entity["AddedAt"] = tenant.added_at
    if tenant.updated_at:
        entity["UpdatedAt"] = tenant.updated_at
    return entity


def _from_entity(entity: Mapping[str, Any]) -> Tenant:
    tenant_id = str(entity["RowKey"])
    try:
        parameters = json.loads(str(entity.get("Parameters") or "{}"))
    except ValueError:
        raise InvalidTenant(f"tenant {tenant_id}: the stored pipeline parameters are not JSON") from None
    if not isinstance(parameters, dict):
        raise InvalidTenant(f"tenant {tenant_id}: the stored pipeline parameters are not a JSON object")
    consent_text = str(entity.get("ConsentDate") or "")
    try:
        consent = date.fromisoformat(consent_text) if consent_text else None
    except ValueError:
        raise InvalidTenant(f"tenant {tenant_id}: stored consent date {consent_text!r} is not YYYY-MM-DD") from None
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
        added_at=as_utc(entity.get("AddedAt")),
        updated_at=as_utc(entity.get("UpdatedAt")),
    )


class TenantRegistry(TableStore):
    """Onboarded tenants in Azure Table storage (Azurite locally)."""

    label = "tenant registry"

    def add(self, tenant: Tenant, *, replace_existing: bool = False, now: datetime | None = None) -> Tenant:
        """Register ``tenant``; TenantExists if it is registered already and ``replace_existing`` is False.

        Replacing keeps the original ``added_at``.
        """
        self.ensure()
        now = now or utcnow()
        clean = tenant.validate()
        existing = self.get(clean.tenant_id)
        if existing is not None and not replace_existing:
            raise TenantExists(f"tenant {clean.tenant_id} is already registered (use --replace to overwrite it)")
        stored = replace(clean, added_at=existing.added_at if existing else now, updated_at=now)
        if existing is None:
            try:
                self.call("insert", lambda: self.table.create_entity(_to_entity(stored)))
            except ResourceExistsError:
                raise TenantExists(f"tenant {clean.tenant_id} was registered concurrently") from None
        else:
            self.call("update", lambda: self.table.upsert_entity(_to_entity(stored), mode=UpdateMode.REPLACE))
        return stored

    def get(self, tenant_id: str) -> Tenant | None:
        """One tenant, or None."""
        entity = self.read_entity(PARTITION, normalise_tenant_id(tenant_id))
        return None if entity is None else _from_entity(entity)

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
            tenant = _from_entity(entity)
            if tenant.enabled or not enabled_only:
                yield tenant

    def _set_enabled(self, tenant_id: str, enabled: bool, reason: str, now: datetime | None) -> Tenant:
        tenant = self.require(tenant_id)
        changed = replace(
            tenant, enabled=enabled, disabled_reason="" if enabled else reason, updated_at=now or utcnow()
        )
        self.call("update", lambda: self.table.upsert_entity(_to_entity(changed), mode=UpdateMode.REPLACE))
        return changed

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
