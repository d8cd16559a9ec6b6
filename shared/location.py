"""Where a drop lives: its container, its drop root, the tenant its location names, and its id.

A drop is one ``Metadata.json`` under ``<drop root>/metadata/JobMetadata/`` plus the data files
below the same drop root. Two layouts are served (SPEC.md):

* Microsoft's sample pipeline: one container (``datasets``) with
  ``<RunId>/VivaInsights/<tenant id>/...`` (``AADUser`` for the directory dataset);
* the documented recommendation: one container per tenant, named by the tenant id.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .ids import is_guid

METADATA_SUFFIX = "metadata/JobMetadata/Metadata.json"
#: Folders of Microsoft's sample layout that are followed by the tenant id.
DATASET_FOLDERS = ("vivainsights", "aaduser")


@dataclass(frozen=True)
class DropLocation:
    """A drop's address in the landing storage (or a local folder, with ``account`` = ``local``)."""

    account: str
    container: str
    drop_root: str  # "" when Metadata.json sits at the container root
    #: Set when a later drop reuses a root whose earlier drop is settled (see :func:`generation_of`).
    generation: str = ""
    #: The Metadata.json's name exactly as stored (its suffix may differ in case from the usual one).
    metadata_name: str = ""

    @property
    def metadata_path(self) -> str:
        """The blob name of the drop's Metadata.json."""
        if self.metadata_name:
            return self.metadata_name
        return f"{self.drop_root}/{METADATA_SUFFIX}" if self.drop_root else METADATA_SUFFIX

    @property
    def data_prefix(self) -> str:
        """The prefix under which the drop's files live ('' for the container root)."""
        return f"{self.drop_root}/" if self.drop_root else ""

    @property
    def drop_id(self) -> str:
        """A stable, URL- and Table-key-safe id for the drop."""
        ident = f"{self.account.lower()}/{self.container}/{self.drop_root}".encode()
        base = "d" + hashlib.sha256(ident).hexdigest()[:31]
        return f"{base}-{self.generation}" if self.generation else base

    @property
    def tenant_from_location(self) -> str | None:
        """The tenant the location names: a GUID container, else the folder after VivaInsights/."""
        if is_guid(self.container):
            return self.container.lower()
        parts = [p for p in self.drop_root.split("/") if p]
        for i, part in enumerate(parts[:-1]):
            if part.lower() in DATASET_FOLDERS and is_guid(parts[i + 1]):
                return parts[i + 1].lower()
        # Neither layout: the last GUID in the path (the run id comes first in every known layout).
        guids = [p for p in parts if is_guid(p)]
        return guids[-1].lower() if guids else None

    @property
    def run_id(self) -> str:
        """The pipeline run id: the folder before VivaInsights/ (or AADUser/), if any."""
        parts = [p for p in self.drop_root.split("/") if p]
        for i, part in enumerate(parts):
            if part.lower() in DATASET_FOLDERS and i > 0:
                return parts[i - 1]
        return ""

    @property
    def url_path(self) -> str:
        """container/drop_root, for messages and logs."""
        return f"{self.container}/{self.drop_root}".rstrip("/")


def is_metadata_blob(blob_name: str) -> bool:
    """True when ``blob_name`` is a drop's Metadata.json (the suffix is matched case-insensitively)."""
    lowered = blob_name.lower()
    suffix = METADATA_SUFFIX.lower()
    return lowered == suffix or lowered.endswith("/" + suffix)


def location_from_blob(account: str, container: str, blob_name: str) -> DropLocation:
    """The drop a Metadata.json blob belongs to; ValueError when the name is not a Metadata.json."""
    name = blob_name.lstrip("/")
    if not is_metadata_blob(name):
        raise ValueError(f"{blob_name!r} is not a drop's {METADATA_SUFFIX}")
    root = name[: len(name) - len(METADATA_SUFFIX)].rstrip("/")
    return DropLocation(account=account, container=container, drop_root=root, metadata_name=name)


def generation_of(discriminator: str) -> str:
    """The generation tag of a drop that reuses a settled drop's root (8 hex digits of its run's id)."""
    return hashlib.sha256(discriminator.encode()).hexdigest()[:8]


def split_trigger_path(path: str) -> tuple[str, str]:
    """Split a blob trigger's ``InputStream.name`` (``container/blob/path``) into its parts."""
    container, _, blob = path.lstrip("/").partition("/")
    if not container or not blob:
        raise ValueError(f"{path!r} is not container/blob")
    return container, blob
