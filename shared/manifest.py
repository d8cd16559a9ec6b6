"""The list of exact blobs a drop's delivery read: what cleanup may delete, and nothing else.

An attempt records, before its first put, every blob it reads (Metadata.json and each data file)
with its ETag and size, in the ledger column ``ReadBlobs``. A resumed attempt must find the same
data files with the same ETags (or it would re-pack other rows than the checkpoint covers), and
cleanup deletes a blob only when its name and ETag are in the list. Anything else at the drop's
root is a later run's drop or a stray: it is reported, never deleted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from .sources import DataFile

#: The drop record's field holding the list (column ReadBlobs; see shared/droprecord.py).
COLUMN = "read_blobs"
#: A Table string property holds at most 32 Ki UTF-16 characters; a longer list is not recorded
#: (about 150 data files with long names), and cleanup then refuses to delete that drop.
MAX_MANIFEST_CHARS = 30_000


@dataclass(frozen=True)
class ReadBlob:
    """One blob as the delivery read it."""

    name: str
    etag: str
    size: int


def same_etag(a: str, b: str) -> bool:
    """ETags compare without their quotes (a listing gives them bare, a download quoted)."""
    return a.strip('"') == b.strip('"')


def manifest_text(metadata_path: str, metadata_etag: str, files: Iterable[DataFile]) -> str:
    """The column value for a drop's Metadata.json and data files ('' when too long to record)."""
    entries = [[metadata_path, metadata_etag, -1]] if metadata_etag else []
    entries += [[f.name, f.etag, f.size] for f in files if f.etag]
    text = json.dumps(entries, separators=(",", ":"))
    return text if len(text) <= MAX_MANIFEST_CHARS else ""


def parse_manifest(text: object) -> dict[str, ReadBlob]:
    """The recorded blobs by name ({} when nothing usable is recorded)."""
    if not isinstance(text, str) or not text:
        return {}
    try:
        entries = json.loads(text)
    except ValueError:
        return {}
    out: dict[str, ReadBlob] = {}
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str) and isinstance(entry[1], str):
            out[entry[0]] = ReadBlob(entry[0], entry[1], int(entry[2]))
    return out


def changed_files(recorded: dict[str, ReadBlob], files: Iterable[DataFile]) -> list[str]:
    """Data files that differ from the recorded ones (added, removed or rewritten), by name."""
    recorded_data = {name: b.etag for name, b in recorded.items() if b.size >= 0}
    current = {f.name: f.etag for f in files}
    names = sorted(set(recorded_data) | set(current))
    return [n for n in names if not same_etag(recorded_data.get(n, "?"), current.get(n, "!"))]
