"""Delete drops once they are delivered, and never anything else.

The vendor's documentation asks that the landing storage be emptied after transfer. This module
deletes a drop's blobs when, and only when, the ledger says the drop is delivered (or, with the
optional ``FAILED_DROP_RETENTION_DAYS``, failed long enough ago). Rules that make it safe:

* The ledger row is marked first (``DropLedger.claim_deletion``: ETag-guarded ``DeletingOwner`` /
  ``DeletingUntil`` columns). Two cleanups, or a cleanup and an operator's reprocess, can never
  both act on one drop; a row that moved on (e.g. reprocessed) is left alone.
* Only blobs below the drop root are candidates, minus those of any other drop nested below it,
  minus any blob modified after the drop was delivered (or failed): a re-run may have written new
  data into the same folder. Those are kept and reported.
* A delivered drop loses exactly the blobs its delivery read: each is named, with its ETag, in the
  ledger's ``ReadBlobs`` column (``shared/manifest.py``) and deleted only while it still has that
  ETag. Anything else at the root (a later run's drop, a file rewritten since, a stray) is kept and
  reported. A delivered row without that list is refused: nothing is deleted.
* For failed drops past retention the data files about to go must not exceed, in number or bytes,
  what was recorded; otherwise nothing is deleted.
* Each blob is deleted with its listed ETag (a blob changed meanwhile is kept), snapshots
  included; a blob already gone counts as done, so every step can be repeated.
* The row ends ``deleted`` with ``DeletedAt`` and the counts.

Blobs the ledger does not know (a ``Metadata.json`` with no row, or one still present at a drop
the ledger records as deleted) are only reported; :func:`delete_orphans` removes them on an
operator's explicit request, once older than the grace period.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.blob import ContainerClient

from . import location as layout
from .errors import TransientError
from .ledger import DELETED, DELIVERED, FAILED, DropRecord, new_owner_id
from .location import DropLocation, is_metadata_blob, location_from_blob
from .manifest import ReadBlob, parse_manifest, same_etag
from .runtime import Runtime
from .status import Status
from .tables import as_utc, utcnow

log = logging.getLogger("viva_relay")

#: What a deletion result's ``status`` can be.
DELETED_STATUS = Status.DELETED
WOULD_DELETE = Status.WOULD_DELETE  # dry run
SKIPPED = Status.SKIPPED  # not ours to delete (state, another cleanup, not yet due)
REFUSED = Status.REFUSED  # deletable by state, but something does not add up: nothing deleted
ERROR = Status.ERROR  # storage or ledger failure; the next run retries

ORPHAN_UNKNOWN = "unknown"  # a Metadata.json whose drop has no ledger row
ORPHAN_LEFT_AFTER_DELETION = "left_after_deletion"  # the ledger says deleted, the Metadata.json is there


_when = as_utc  # a stored or listed timestamp as aware UTC (one home: shared.clock.to_utc)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass(frozen=True)
class BlobEntry:
    """One blob as listed: what deletion needs to act on exactly this version of it."""

    name: str
    size: int
    last_modified: datetime
    etag: str


@dataclass(frozen=True)
class KeptBlob:
    """A blob cleanup left in place, and why."""

    name: str
    why: str


@dataclass
class DeletionPlan:
    """What deleting one drop would do: blobs to delete (in order), blobs kept, or a refusal."""

    delete: list[BlobEntry] = field(default_factory=list)
    kept: list[KeptBlob] = field(default_factory=list)
    refusal: str = ""


@dataclass
class DropDeletion:
    """The outcome of deleting (or dry-running) one drop."""

    drop_id: str
    tenant: str
    status: str
    reason: str = ""
    location: str = ""
    deleted: list[str] = field(default_factory=list)
    already_gone: list[str] = field(default_factory=list)
    kept: list[KeptBlob] = field(default_factory=list)
    leased: list[str] = field(default_factory=list)  # leased by another client: not deleted yet

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (for logs and JSON output)."""
        return asdict(self)


@dataclass
class Orphan:
    """A drop in the landing container the ledger does not account for."""

    drop_id: str
    tenant: str
    kind: str  # ORPHAN_UNKNOWN | ORPHAN_LEFT_AFTER_DELETION
    container: str
    metadata_path: str
    last_modified: datetime
    blobs: int
    bytes: int

    def age_hours(self, now: datetime) -> float:
        """Hours since the Metadata.json was last written."""
        return (now - self.last_modified).total_seconds() / 3600

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (for logs and JSON output)."""
        return asdict(self) | {"last_modified": self.last_modified.isoformat()}


@dataclass
class CleanupReport:
    """What one cleanup run did (or, in a dry run, would do)."""

    dry_run: bool
    drops: list[DropDeletion] = field(default_factory=list)
    orphans: list[Orphan] = field(default_factory=list)
    strays: list[StrayFolder] = field(default_factory=list)
    orphan_error: str = ""

    def counts(self) -> dict[str, int]:
        """Drops per status, plus ``orphans`` and ``blobs_deleted`` (``blobs_to_delete`` in a dry run)."""
        out: dict[str, int] = {}
        for d in self.drops:
            out[d.status] = out.get(d.status, 0) + 1
        out["blobs_to_delete" if self.dry_run else "blobs_deleted"] = sum(len(d.deleted) for d in self.drops)
        out["orphans"] = len(self.orphans)
        out["stray_blobs"] = sum(len(f.blobs) for f in self.strays)
        return out

    @property
    def ok(self) -> bool:
        """False when a drop was refused or failed, or the orphan scan failed (monitoring should look)."""
        return not self.orphan_error and not any(d.status in (REFUSED, ERROR) for d in self.drops)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (for logs and JSON output)."""
        return {
            "dry_run": self.dry_run,
            "counts": self.counts(),
            "drops": [d.as_dict() for d in self.drops],
            "orphans": [o.as_dict() for o in self.orphans],
            "strays": [f.as_dict() for f in self.strays],
            "orphan_error": self.orphan_error,
        }


# -- what belongs to a drop ---------------------------------------------------------------------


def list_blobs(container: ContainerClient, prefix: str) -> list[BlobEntry]:
    """Every blob whose name starts with ``prefix`` ('' = the whole container); [] if no container."""
    try:
        return [
            BlobEntry(b.name, int(b.size or 0), _when(b.last_modified) or utcnow(), str(b.etag or ""))
            for b in container.list_blobs(name_starts_with=prefix or None)
        ]
    except ResourceNotFoundError:
        return []
    except (HttpResponseError, AzureError) as exc:
        raise TransientError(f"could not list {container.container_name}/{prefix}: {exc}") from exc


def nested_drop_roots(blobs: Iterable[BlobEntry], drop_root: str) -> list[str]:
    """Roots of other drops below ``drop_root`` (a Metadata.json deeper than the drop's own)."""
    return layout.nested_drop_roots((b.name for b in blobs), drop_root)


def plan_deletion(
    blobs: Iterable[BlobEntry],
    drop_root: str,
    *,
    newer_than: datetime,
    newer_why: str,
    recorded: tuple[int, int] | None,
    read: dict[str, ReadBlob] | None = None,
) -> DeletionPlan:
    """Decide which of ``blobs`` (listed below ``drop_root``) belong to the drop and may go.

    ``newer_than``: blobs modified after it are kept (``newer_why`` says what that moment was).
    ``recorded``: the data files and bytes the delivery read; deleting more than that is refused.
    ``read``: the exact blobs the delivery read; when given, only those (with their recorded ETag)
    and the empty folder markers above them may go, and everything else is kept. A blob whose ETag
    is the one the delivery read is unchanged since, whatever its timestamp says: the ETag decides,
    not ``newer_than`` (storage keeps whole seconds of Last-Modified, so a time cannot tell a write
    in the second of the delivery from one before it). ``newer_than`` still guards what no ETag
    vouches for: folder markers, and drops without a list (failed drops, orphans).
    Order: data files, then the metadata folder (Metadata.json last, so an interrupted run leaves
    the drop findable), then empty blobs deepest first (directories of a hierarchical namespace
    must be empty before they can go).
    """
    prefix = f"{drop_root}/" if drop_root else ""
    listed = [b for b in blobs if b.name.startswith(prefix)]
    nested = nested_drop_roots(listed, drop_root)
    plan = DeletionPlan()
    data: list[BlobEntry] = []
    metadata: list[BlobEntry] = []
    empty: list[BlobEntry] = []
    for b in listed:
        relative = b.name[len(prefix) :]
        other = next((r for r in nested if b.name == r or b.name.startswith(r + "/")), None)
        if other is not None:
            plan.kept.append(KeptBlob(b.name, f"belongs to the drop at {other}"))
            continue
        if any(r.startswith(b.name + "/") for r in nested):
            continue  # a folder that holds another drop
        in_metadata = layout.is_metadata_file(relative)  # the same rule as the ingest's listing
        if read is not None:
            why = _not_read(b, read)
            if why:
                plan.kept.append(KeptBlob(b.name, why))
                continue
        if not drop_root and not in_metadata and b.size == 0:
            continue  # at the container root an empty blob is a folder marker, not the drop's
        vouched = read is not None and b.name in read  # read, with the recorded ETag (_not_read above)
        if not vouched and b.last_modified > newer_than:
            plan.kept.append(KeptBlob(b.name, f"modified at {b.last_modified.isoformat()}, after {newer_why}"))
            continue
        if b.size == 0 and not is_metadata_blob(b.name):
            empty.append(b)
        elif in_metadata:
            metadata.append(b)
        else:
            data.append(b)
    if recorded is not None and read is None:
        files, size = len(data), sum(b.size for b in data)
        if files > recorded[0] or size > recorded[1]:
            plan.refusal = (
                f"the drop's folder holds {files} data file(s) of {size} bytes from before delivery, but the"
                f" delivery read {recorded[0]} of {recorded[1]} bytes; deleting nothing"
            )
            return plan
    metadata.sort(key=lambda b: (is_metadata_blob(b.name), b.name))
    empty.sort(key=lambda b: (-b.name.count("/"), b.name))
    plan.delete = sorted(data, key=lambda b: b.name) + metadata + empty
    return plan


def _not_read(blob: BlobEntry, read: dict[str, ReadBlob]) -> str:
    """Why ``blob`` is not one the delivery read ('' when it is, or is an empty folder marker above one)."""
    known = read.get(blob.name)
    if known is not None:
        if same_etag(known.etag, blob.etag):
            return ""
        return "rewritten since the delivery read it (another run's file?); not deleted"
    if blob.size == 0 and not is_metadata_blob(blob.name) and any(n.startswith(blob.name + "/") for n in read):
        return ""  # the folder marker of a folder holding the drop's files (hierarchical namespace)
    return "not read by the delivery: a later run's drop or a stray; not deleted"


# -- deleting -----------------------------------------------------------------------------------


def _delete_blobs(container: ContainerClient, plan: DeletionPlan, result: DropDeletion) -> None:
    """Delete the plan's blobs with their listed ETags; TransientError on a storage failure."""
    for b in plan.delete:
        try:
            container.delete_blob(
                b.name, delete_snapshots="include", etag=b.etag, match_condition=MatchConditions.IfNotModified
            )
            result.deleted.append(b.name)
        except ResourceNotFoundError:
            result.already_gone.append(b.name)
        except ResourceModifiedError:
            # 412: changed since listed, leased, or (with If-Match) already gone: tell them apart.
            try:
                container.get_blob_client(b.name).get_blob_properties()
            except ResourceNotFoundError:
                result.already_gone.append(b.name)
                continue
            except (HttpResponseError, AzureError) as exc:
                raise TransientError(f"could not read {b.name}: {exc}") from exc
            result.kept.append(KeptBlob(b.name, "changed or leased while cleanup ran"))
        except HttpResponseError as exc:
            code = str(getattr(exc, "error_code", "") or "").lower()
            if exc.status_code == 412 and "lease" in code:
                result.leased.append(b.name)  # still the drop's content: the next run retries it
                continue
            if exc.status_code == 409 and "directoryisnotempty" in code.replace("_", ""):
                result.kept.append(KeptBlob(b.name, "a folder that still holds other blobs"))
                continue
            # Anything else (an immutability policy, throttling, an outage): stop; the next run retries.
            raise TransientError(f"could not delete {b.name}: {exc}") from exc
        except AzureError as exc:
            raise TransientError(f"could not delete {b.name}: {exc}") from exc


def _kept_column(kept: list[KeptBlob]) -> str:
    return "; ".join(f"{k.name} ({k.why})" for k in kept)[:4000]


@dataclass(frozen=True)
class _Rule:
    """Why a ledger row may be deleted, and the limits on what may go."""

    why: str
    newer_than: datetime  # blobs modified after this are kept
    newer_why: str
    recorded: tuple[int, int] | None  # data files and bytes the delivery read (delivered drops)
    read: dict[str, ReadBlob] | None = None  # the exact blobs the delivery read (delivered drops)


def _rule(rt: Runtime, record: DropRecord, now: datetime) -> tuple[_Rule | None, str, str]:
    """The deletion rule for ``record``, or None with the status (skipped/refused) and the reason."""
    settings = rt.settings
    location = record.location
    if record.state == DELIVERED:
        delivered = record.delivered_at
        read = parse_manifest(record.read_blobs)
        if delivered is None or not read:
            return None, REFUSED, "the ledger row does not record when and which blobs the delivery read"
        rule = _Rule("delivered", delivered, f"the drop was delivered at {delivered.isoformat()}", None, read)
    elif record.state == FAILED:
        days = settings.failed_retention_days
        failed = record.failed_at
        if days <= 0:
            return None, SKIPPED, "failed drops are kept until an operator acts (FAILED_DROP_RETENTION_DAYS=0)"
        if failed is None or now - failed < timedelta(days=days):
            return None, SKIPPED, f"failed less than {days} day(s) ago (FAILED_DROP_RETENTION_DAYS)"
        rule = _Rule(
            f"failed; retention of {days} day(s) passed", failed, f"the drop failed at {failed.isoformat()}", None
        )
    else:
        return None, SKIPPED, f"the drop is {record.state or 'in no known state'}; only delivered drops are deleted"
    if location.account.lower() != rt.landing_account.lower():
        return None, REFUSED, f"the drop is in storage account {location.account}, not {rt.landing_account}"
    return rule, "", ""


def delete_drop(rt: Runtime, record: DropRecord, *, dry_run: bool = False, now: datetime | None = None) -> DropDeletion:
    """Delete every blob of one delivered drop (or failed drop past its retention), then record it.

    Anything else is skipped. A dry run lists what would go and changes nothing. Storage or
    ledger failures give the marker back and raise :class:`TransientError`; the next run resumes.
    """
    now = now or rt.clock()
    location = record.location
    result = DropDeletion(record.drop_id, record.tenant, SKIPPED, location=location.url_path)
    rule, status, reason = _rule(rt, record, now)
    if rule is None:
        result.status, result.reason = status, reason
        return result
    container = rt.landing_container(location.container)

    def plan(r: _Rule) -> DeletionPlan:
        blobs = list_blobs(container, location.data_prefix)
        return plan_deletion(
            blobs, location.drop_root, newer_than=r.newer_than, newer_why=r.newer_why, recorded=r.recorded, read=r.read
        )

    if dry_run:
        p = plan(rule)
        result.kept = p.kept
        if p.refusal:
            result.status, result.reason = REFUSED, p.refusal
        else:
            result.status, result.reason = WOULD_DELETE, rule.why
            result.deleted = [b.name for b in p.delete]
        return result

    owner = new_owner_id()
    claimed = rt.ledger.claim_deletion(record, owner, rt.settings.drop_lease_seconds, states=(record.state,), now=now)
    if claimed is None:
        fresh = rt.ledger.get(record.tenant, record.drop_id)
        if fresh is not None and fresh.deleting_owner:
            result.reason = f"another cleanup is deleting it (until {fresh.deleting_until})"
        else:
            result.reason = f"the drop is {fresh.state if fresh else 'gone from the ledger'} now"
        return result
    try:
        # Decide again on the row as claimed: it may have changed since it was listed.
        rule, status, reason = _rule(rt, claimed, now)
        if rule is None:
            rt.ledger.release_deletion(claimed, owner, reason)
            result.status, result.reason = status, reason
            return result
        p = plan(rule)
        if p.refusal:
            rt.ledger.release_deletion(claimed, owner, p.refusal)
            result.status, result.reason, result.kept = REFUSED, p.refusal, p.kept
            log.error("drop %s not deleted: %s", record.drop_id, p.refusal)
            return result
        result.kept = list(p.kept)
        _delete_blobs(container, p, result)
    except Exception as exc:
        rt.ledger.release_deletion(claimed, owner, f"cleanup interrupted: {exc}")
        raise
    if result.leased:
        note = f"{len(result.leased)} blob(s) leased by another client, not deleted yet: {', '.join(result.leased)}"
        rt.ledger.release_deletion(claimed, owner, note)
        result.status, result.reason = ERROR, note + "; the next run retries"
        log.error("drop %s: %s", record.drop_id, result.reason)
        return result
    details = {
        "delete_reason": rule.why,
        "state_before_delete": claimed.state,
        "blobs_deleted": len(result.deleted),
        "blobs_already_gone": len(result.already_gone),
        "blobs_kept": len(result.kept),
        "kept_blobs": _kept_column(result.kept) or None,
        "cleanup_note": None,
    }
    if rt.ledger.mark_deleted(claimed, owner, details) is None:
        result.status, result.reason = ERROR, "the deletion marker was taken over before the row could be updated"
        return result
    result.status, result.reason = DELETED_STATUS, rule.why
    log.info(
        "drop %s of tenant %s deleted (%s): %d blob(s), %d already gone, %d kept",
        record.drop_id,
        record.tenant,
        rule.why,
        len(result.deleted),
        len(result.already_gone),
        len(result.kept),
    )
    for k in result.kept:
        log.warning("drop %s: kept %s: %s", record.drop_id, k.name, k.why)
    return result


# -- orphans ------------------------------------------------------------------------------------


def _drop_blobs(blobs: list[BlobEntry], drop_root: str) -> list[BlobEntry]:
    """The blobs that belong to the drop at ``drop_root`` (no time limit), from a full listing."""
    far_future = datetime.max.replace(tzinfo=UTC)
    plan = plan_deletion(blobs, drop_root, newer_than=far_future, newer_why="", recorded=None)
    return plan.delete


@dataclass
class StrayFolder:
    """Blobs of one folder that no drop accounts for (no Metadata.json above them, or a deleted drop's leftovers)."""

    container: str
    folder: str  # '' = the container root
    blobs: list[BlobEntry]

    @property
    def bytes(self) -> int:
        """Their total size."""
        return sum(b.size for b in self.blobs)

    @property
    def newest(self) -> datetime:
        """When the most recently written of them was written."""
        return max(b.last_modified for b in self.blobs)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (for logs and JSON output)."""
        return {
            "container": self.container,
            "folder": self.folder,
            "blobs": [b.name for b in self.blobs],
            "bytes": self.bytes,
            "newest": self.newest.isoformat(),
        }


@dataclass
class LandingScan:
    """What the landing container holds that the ledger does not account for."""

    orphans: list[Orphan] = field(default_factory=list)
    strays: list[StrayFolder] = field(default_factory=list)


def _under_any(name: str, roots: set[str]) -> bool:
    """True when ``name`` lies below one of ``roots`` ('' = the container root)."""
    parts = name.split("/")
    return any("/".join(parts[:i]) in roots for i in range(len(parts)))


def scan_landing(rt: Runtime) -> LandingScan:
    """Orphan drops (a Metadata.json the ledger does not account for) and stray blobs (under no drop at all).

    A drop the ledger knows accounts for every blob below its root, unless it is deleted: what
    is left below a deleted drop is unknown content, reported like any other.
    """
    container = rt.landing_container()
    name = container.container_name
    blobs = list_blobs(container, "")
    rows = list(rt.ledger.list())
    known = {r.drop_id: r for r in rows}
    accounted = {
        r.location.drop_root
        for r in rows
        if r.state != DELETED
        and r.location.container == name
        and r.location.account.lower() == rt.landing_account.lower()
    }
    live_roots = set(accounted)  # a later run's drop at a reused root has its own (live) row
    scan = LandingScan()
    for b in blobs:
        if not is_metadata_blob(b.name):
            continue
        location = location_from_blob(rt.landing_account, name, b.name)
        record = known.get(location.drop_id)
        if location.drop_root in live_roots:
            continue
        if record is None:
            kind = ORPHAN_UNKNOWN
        elif record.state == DELETED:
            kind = ORPHAN_LEFT_AFTER_DELETION
        else:
            continue
        accounted.add(location.drop_root)
        own = _drop_blobs(blobs, location.drop_root)
        scan.orphans.append(
            Orphan(
                drop_id=location.drop_id,
                tenant=record.tenant if record else (location.tenant_from_location or "unknown"),
                kind=kind,
                container=name,
                metadata_path=b.name,
                last_modified=b.last_modified,
                blobs=len(own),
                bytes=sum(x.size for x in own),
            )
        )
    folders: dict[str, list[BlobEntry]] = {}
    for b in blobs:
        if b.size > 0 and not _under_any(b.name, accounted):  # empty blobs: folder markers
            folders.setdefault(b.name.rpartition("/")[0], []).append(b)
    scan.orphans.sort(key=lambda o: o.metadata_path)
    scan.strays = [StrayFolder(name, folder, entries) for folder, entries in sorted(folders.items())]
    return scan


def find_orphans(rt: Runtime) -> list[Orphan]:
    """Drops in the landing container whose Metadata.json the ledger does not account for."""
    return scan_landing(rt).orphans


def _metadata_above(container: ContainerClient, folder: str) -> str | None:
    """A Metadata.json that now makes ``folder`` part of a drop (it may have arrived since the scan)."""
    parts = folder.split("/") if folder else []
    for i in range(len(parts) + 1):
        root = "/".join(parts[:i])
        path = layout.metadata_path_of(root)
        try:
            container.get_blob_client(path).get_blob_properties()
            return path
        except ResourceNotFoundError:
            continue
        except (HttpResponseError, AzureError) as exc:
            raise TransientError(f"could not check {path}: {exc}") from exc
    return None


def delete_strays(
    container: ContainerClient, stray: StrayFolder, cutoff: datetime, hours: int, dry_run: bool
) -> DropDeletion:
    """Delete (or, dry, list) a stray folder's blobs older than ``cutoff``, ETag-guarded.

    Nothing goes if a Metadata.json has since appeared at or above the folder: the blobs are a
    drop's now.
    """
    where = f"{stray.container}/{stray.folder}".rstrip("/")
    result = DropDeletion("", "", SKIPPED, location=where)
    plan = DeletionPlan()
    for b in stray.blobs:
        if b.last_modified > cutoff:
            plan.kept.append(KeptBlob(b.name, f"younger than {hours} h"))
        else:
            plan.delete.append(b)
    result.kept = list(plan.kept)
    why = f"stray blobs in {where or 'the container root'}, older than {hours} h, deleted by an operator"
    if not plan.delete:
        result.reason = f"stray blobs in {where} are younger than {hours} h"
        return result
    if dry_run:
        result.status, result.reason, result.deleted = WOULD_DELETE, why, [b.name for b in plan.delete]
        return result
    metadata = _metadata_above(container, stray.folder)
    if metadata is not None:
        result.reason = f"{metadata} arrived meanwhile: these blobs belong to a drop now; left alone"
        return result
    _delete_blobs(container, plan, result)
    result.status, result.reason = DELETED_STATUS, why
    log.warning("stray blobs in %s deleted by an operator: %d blob(s)", where, len(result.deleted))
    return result


def delete_orphans(
    rt: Runtime, older_than_hours: int, *, dry_run: bool = False, now: datetime | None = None
) -> list[DropDeletion]:
    """An operator's explicit deletion of what the ledger does not know, older than ``older_than_hours``.

    Orphan drops whose Metadata.json is older than that, and stray blobs (under no drop); within
    them only blobs older than that go. Refuses (ValueError) a limit below ``ORPHAN_GRACE_HOURS``.
    An orphan's deletion is recorded in the ledger first (a row inserted as deleted, or the
    deletion marker on the deleted row), so an ingest of the same drop at that moment wins.
    """
    grace = rt.settings.orphan_grace_hours
    if older_than_hours < grace:
        raise ValueError(f"--older-than-hours {older_than_hours} is below the grace period ORPHAN_GRACE_HOURS={grace}")
    now = now or rt.clock()
    cutoff = now - timedelta(hours=older_than_hours)
    container = rt.landing_container()
    results = []
    scan = scan_landing(rt)
    for orphan in scan.orphans:
        location = location_from_blob(rt.landing_account, orphan.container, orphan.metadata_path)
        result = DropDeletion(orphan.drop_id, orphan.tenant, SKIPPED, location=location.url_path)
        results.append(result)
        if orphan.last_modified > cutoff:
            result.reason = f"its Metadata.json is younger than {older_than_hours} h"
            continue

        def plan(loc: DropLocation = location) -> DeletionPlan:
            return plan_deletion(
                list_blobs(container, loc.data_prefix),
                loc.drop_root,
                newer_than=cutoff,
                newer_why=f"the {older_than_hours} h limit ({cutoff.isoformat()})",
                recorded=None,
            )

        why = f"orphan ({orphan.kind}) deleted by an operator, older than {older_than_hours} h"
        if dry_run:
            p = plan()
            result.status, result.reason = WOULD_DELETE, why
            result.deleted, result.kept = [b.name for b in p.delete], p.kept
            continue
        owner = new_owner_id()
        lease = rt.settings.drop_lease_seconds
        claimed: DropRecord | None
        if orphan.kind == ORPHAN_UNKNOWN:
            claimed = rt.ledger.record_orphan_deletion(
                location, orphan.tenant, owner, lease, {"delete_reason": why, "state_before_delete": "unknown"}
            )
        else:
            record = rt.ledger.get(orphan.tenant, orphan.drop_id)
            claimed = None if record is None else rt.ledger.claim_deletion(record, owner, lease, states=(DELETED,))
        if claimed is None:
            result.reason = "the ledger's record of this drop changed meanwhile; left alone"
            continue
        try:
            p = plan()
            result.kept = list(p.kept)
            _delete_blobs(container, p, result)
        except Exception as exc:
            rt.ledger.release_deletion(claimed, owner, f"orphan deletion interrupted: {exc}")
            raise
        details = {
            "orphan_deleted_at": rt.clock(),
            "orphan_delete_reason": why,
            "orphan_blobs_deleted": len(result.deleted),
            "orphan_blobs_kept": len(result.kept),
            "orphan_blobs_leased": len(result.leased),
        }
        if rt.ledger.mark_deleted(claimed, owner, details) is None:
            result.status, result.reason = ERROR, "the deletion marker was taken over before the row could be updated"
            continue
        result.status, result.reason = DELETED_STATUS, why
        log.warning("orphan drop %s deleted by an operator: %d blob(s)", orphan.drop_id, len(result.deleted))
    results += [delete_strays(container, stray, cutoff, older_than_hours, dry_run) for stray in scan.strays]
    return results


# -- the daily run ------------------------------------------------------------------------------


def cleanup_drops(rt: Runtime, *, dry_run: bool = False, now: datetime | None = None) -> CleanupReport:
    """Delete every delivered drop (and failed ones past retention) and report orphans.

    One drop's failure never stops the rest; it is in the report with status ``error``.
    """
    now = now or rt.clock()
    report = CleanupReport(dry_run=dry_run)
    candidates = list(rt.ledger.list(state=DELIVERED))
    if rt.settings.failed_retention_days > 0:
        candidates += list(rt.ledger.list(state=FAILED))
    for record in candidates:
        try:
            result = delete_drop(rt, record, dry_run=dry_run, now=now)
        except Exception as exc:
            log.exception("cleanup of drop %s failed", record.drop_id)
            result = DropDeletion(
                record.drop_id, record.tenant, ERROR, f"{type(exc).__name__}: {exc}", location=record.location.url_path
            )
        if result.status != SKIPPED or record.state == DELIVERED:
            report.drops.append(result)
    try:
        scan = scan_landing(rt)
        report.orphans, report.strays = scan.orphans, scan.strays
    except Exception as exc:
        log.exception("orphan scan failed")
        report.orphan_error = f"{type(exc).__name__}: {exc}"
    return report
