"""The landing layout's one home: where a drop lives and which blobs are its parts.

A drop is one ``Metadata.json`` under ``<drop root>/metadata/JobMetadata/`` plus the data files
below the same drop root. Two layouts are served (SPEC.md):

* Microsoft's sample pipeline: one container (``datasets``) with
  ``<RunId>/VivaInsights/<tenant id>/...`` (``AADUser`` for the directory dataset);
* the documented recommendation: one container per tenant, named by the tenant id.

Everything that depends on the layout asks this module: a blob path to a drop location
(:func:`location_from_blob`), a drop root to its metadata and data paths
(:func:`metadata_path_of`, :func:`data_file_names`), the blob trigger's path (:data:`TRIGGER_PATH`),
the Event Grid subscription's subject filter (:func:`event_grid_filter`, checked against
infra/eventgrid.json by a test), cleanup's grouping (:func:`nested_drop_roots`,
:func:`is_metadata_file`) and the simulator's sample layout (:func:`sample_drop_root`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .ids import is_guid

METADATA_SUFFIX = "metadata/JobMetadata/Metadata.json"
#: The folder below a drop root that holds the drop's metadata (any case); everything else is data.
METADATA_FOLDER = "metadata"
#: Microsoft's sample layout: the dataset folders that sit between the run id and the tenant id.
PERSON_DATASET_FOLDER = "VivaInsights"
DIRECTORY_DATASET_FOLDER = "AADUser"
#: Folders of Microsoft's sample layout that are followed by the tenant id (compared in lower case).
DATASET_FOLDERS = (PERSON_DATASET_FOLDER.lower(), DIRECTORY_DATASET_FOLDER.lower())
#: The Event Grid subscription's ``subjectEndsWith``: a BlobCreated event for a drop's Metadata.json.
EVENT_GRID_SUBJECT_SUFFIX = "/" + METADATA_SUFFIX
#: The ingest blob trigger's path: a Metadata.json below any drop root of the landing container (the
#: container comes from the LANDING_CONTAINER app setting). A plain constant, so tests/test_infra.py
#: can read it from the source without importing the app.
TRIGGER_PATH = "%LANDING_CONTAINER%/{droproot}/" + METADATA_SUFFIX


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
        return metadata_path_of(self.drop_root)

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
    return DropLocation(account=account, container=container, drop_root=drop_root_of(name), metadata_name=name)


def metadata_path_of(drop_root: str) -> str:
    """The name of the Metadata.json of the drop at ``drop_root`` ('' = the container root)."""
    return f"{drop_root}/{METADATA_SUFFIX}" if drop_root else METADATA_SUFFIX


def drop_root_of(metadata_blob: str) -> str:
    """The drop root of a Metadata.json blob; ValueError when the name is not a Metadata.json."""
    if not is_metadata_blob(metadata_blob):
        raise ValueError(f"{metadata_blob!r} is not a drop's {METADATA_SUFFIX}")
    return metadata_blob[: len(metadata_blob) - len(METADATA_SUFFIX)].rstrip("/")


def drop_root_named_by(path: str) -> str:
    """The drop root a path names: the root itself, or its Metadata.json."""
    path = path.strip("/")
    return drop_root_of(path) if is_metadata_blob(path) else path


def is_metadata_file(relative: str) -> bool:
    """True for a name (relative to its drop root) in the drop's own ``metadata/`` folder, any case."""
    return relative.split("/", 1)[0].lower() == METADATA_FOLDER


def nested_drop_roots(names: Iterable[str], drop_root: str = "") -> list[str]:
    """Roots of other drops below ``drop_root``: each Metadata.json deeper than the drop's own."""
    prefix = f"{drop_root}/" if drop_root else ""
    roots = []
    for name in names:
        if name.startswith(prefix) and is_metadata_blob(name):
            root = drop_root_of(name)
            if root != drop_root:
                roots.append(root)
    return roots


_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> list[object]:
    """Sort key for natural name order: digit runs compare as numbers (the order of a drop's files)."""
    return [int(part) if part.isdigit() else part.lower() for part in _DIGITS.split(name)]


def data_file_names(relative_names: list[str]) -> list[str]:
    """Which of the names below a drop root (relative to it) are the drop's data files.

    Everything except the drop's own ``metadata/`` folder and the subtree of any other drop nested
    below it (a folder with its own ``metadata/JobMetadata/Metadata.json``), in natural order.
    """
    nested = nested_drop_roots(relative_names)
    kept = [n for n in relative_names if not is_metadata_file(n) and not any(n.startswith(r + "/") for r in nested)]
    return sorted(kept, key=natural_key)


def sample_drop_root(run_id: str, tenant_id: str, dataset_folder: str = PERSON_DATASET_FOLDER) -> str:
    """Microsoft's sample layout: the drop root ``<run id>/VivaInsights/<tenant id>`` of one run's copy."""
    return f"{run_id}/{dataset_folder}/{tenant_id}"


def event_grid_subject_prefix(container: str) -> str:
    """The Event Grid subscription's ``subjectBeginsWith`` for blobs created in ``container``."""
    return f"/blobServices/default/containers/{container}/blobs/"


def event_grid_filter(container: str) -> dict[str, object]:
    """The subject filter of the Event Grid subscription that feeds the trigger (infra/eventgrid.json).

    Case-insensitive, because :func:`is_metadata_blob` matches the suffix in any case.
    """
    return {
        "subjectBeginsWith": event_grid_subject_prefix(container),
        "subjectEndsWith": EVENT_GRID_SUBJECT_SUFFIX,
        "isSubjectCaseSensitive": False,
    }


def generation_of(discriminator: str) -> str:
    """The generation tag of a drop that reuses a settled drop's root (8 hex digits of its run's id)."""
    return hashlib.sha256(discriminator.encode()).hexdigest()[:8]


def split_trigger_path(path: str) -> tuple[str, str]:
    """Split a blob trigger's ``InputStream.name`` (``container/blob/path``) into its parts."""
    container, _, blob = path.lstrip("/").partition("/")
    if not container or not blob:
        raise ValueError(f"{path!r} is not container/blob")
    return container, blob
