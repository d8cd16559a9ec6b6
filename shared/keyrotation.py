"""Rotation with overlap: which older key versions drops still need, and retiring the ones they do not.

A drop names the key version Microsoft encrypted it with (``PublicKeyVersion``, recorded on its
ledger row). After ``keys rotate`` the old versions stay enabled while a drop that names them is
not settled; ``keys retire`` disables the versions no such drop needs, and the ``key_retirable``
health rule points them out. A drop counts as unsettled while it is waiting, in progress or failed:
a failed drop can still be reprocessed, and reprocessing needs its key. A waiting drop whose
Metadata.json has not been read has no version yet and may need any of its tenant's versions.
Both key stores (Key Vault and the key folder) are used through the same methods.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import VivaRelayError
from .keycheck import KeyVersionInfo, TenantKeyStore, tenant_key_name
from .ledger import FAILED, IN_PROGRESS, WAITING, DropRecord

#: Drop states in which a drop may still need its key.
NEEDS_KEY_STATES = (WAITING, IN_PROGRESS, FAILED)


class RetireRefused(VivaRelayError):
    """A version asked to be retired is still needed (or is the current one)."""


@dataclass(frozen=True)
class KeyNeeds:
    """Which unsettled drops need which key versions, per tenant."""

    by_version: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    unknown: dict[str, list[str]] = field(default_factory=dict)  # tenant -> drops without a version yet

    def drops_needing(self, tenant: str, version: str) -> list[str]:
        """The unsettled drops that name this version, or that have no version yet (may need any)."""
        return self.by_version.get((tenant, version), []) + self.unknown.get(tenant, [])


def key_needs(drops: Iterable[DropRecord]) -> KeyNeeds:
    """Collect the key versions named by unsettled drops."""
    by_version: dict[tuple[str, str], list[str]] = defaultdict(list)
    unknown: dict[str, list[str]] = defaultdict(list)
    for drop in drops:
        if drop.state not in NEEDS_KEY_STATES:
            continue
        tenant = drop.tenant.lower()
        version = drop.public_key_version or ""
        if version:
            by_version[(tenant, version)].append(drop.drop_id)
        else:
            unknown[tenant].append(drop.drop_id)
    return KeyNeeds(dict(by_version), dict(unknown))


def retirable(keys: Iterable[KeyVersionInfo], needs: KeyNeeds) -> list[KeyVersionInfo]:
    """Older versions that are still enabled although no unsettled drop needs them."""
    return [k for k in keys if not k.current and k.enabled and not needs.drops_needing(k.tenant, k.version)]


@dataclass(frozen=True)
class RetirePlan:
    """What ``keys retire`` does for one tenant: versions to disable and versions kept (with why)."""

    tenant: str
    retire: tuple[str, ...]
    kept: dict[str, str]
    forced: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON output."""
        return {"tenant": self.tenant, "retired": list(self.retire), "kept": self.kept, "forced": list(self.forced)}


def plan_retirement(
    tenant_id: str,
    keys: Iterable[KeyVersionInfo],
    needs: KeyNeeds,
    *,
    versions: Iterable[str] = (),
    force: bool = False,
) -> RetirePlan:
    """Decide which of the tenant's older versions to disable.

    Without ``versions``: every enabled older version no unsettled drop needs (the others are
    kept and reported). With ``versions``: exactly those; one that a drop still needs is refused
    (RetireRefused) unless ``force``. The current version is never retired.
    """
    tenant = tenant_key_name(tenant_id)
    mine = {k.version: k for k in keys if k.tenant == tenant}
    if not mine:
        raise RetireRefused(f"tenant {tenant} has no key")
    wanted = list(versions)
    for version in wanted:
        if version not in mine:
            raise RetireRefused(f"tenant {tenant} has no key version {version}")
        if mine[version].current:
            raise RetireRefused(f"version {version} is tenant {tenant}'s current key: rotate first (keys rotate)")
    candidates = wanted or [v for v, k in mine.items() if not k.current and k.enabled]
    retire: list[str] = []
    kept: dict[str, str] = {}
    forced: list[str] = []
    for version in candidates:
        needed = needs.drops_needing(tenant, version)
        if not needed:
            retire.append(version)
            continue
        why = f"needed by unsettled drop(s) {', '.join(sorted(needed)[:5])}" + (" ..." if len(needed) > 5 else "")
        if wanted and force:
            forced.append(version)
            retire.append(version)
        elif wanted:
            raise RetireRefused(f"version {version} of tenant {tenant} is {why}; use --force to retire it anyway")
        else:
            kept[version] = why
    return RetirePlan(tenant, tuple(retire), kept, tuple(forced))


def retire(store: TenantKeyStore, plan: RetirePlan) -> None:
    """Disable the planned versions (the keys themselves are kept)."""
    for version in plan.retire:
        store.set_enabled(plan.tenant, version, False)
