"""Where a drop is: a blob container (Storage SDK) or a local folder laid out as in storage.

A source lists the drop's data files relative to its Metadata.json (everything below the drop
root except the ``metadata/`` folder; never the whole container) and opens each as a stream of
chunks. Several part files are read in natural name order (``part-2`` before ``part-10``): that
rule lives in :func:`shared.location.natural_key` (the landing layout's module) and nowhere else.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, HttpResponseError, ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import ContainerClient

from .errors import DataReplaced, MetadataError, NoDataFiles, TransientError, UnsafeDropFolder
from .location import METADATA_SUFFIX, DropLocation

# The layout's rules (a drop's data files, their order) live in shared.location; both names stay importable here.
from .location import data_file_names as data_file_names  # noqa: PLC0414
from .location import natural_key as natural_key  # noqa: PLC0414
from .metadata import MAX_METADATA_BYTES

CHUNK_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class DataFile:
    """One encrypted data file of a drop."""

    name: str  # blob name or path relative to the source root
    size: int
    #: The blob's ETag when listed ('' for local files): it is read only while the ETag is unchanged.
    etag: str = ""


def _too_large(size: int) -> MetadataError:
    return MetadataError(f"Metadata.json is {size} bytes; more than {MAX_METADATA_BYTES} is not a metadata file")


class DropSource(ABC):
    """Reads a drop's Metadata.json and data files."""

    location: DropLocation
    #: The ETag of the Metadata.json version :meth:`read_metadata` returned ('' when unknown).
    metadata_etag: str = ""

    @abstractmethod
    def read_metadata(self) -> bytes:
        """The Metadata.json bytes (small)."""

    @abstractmethod
    def list_data_files(self) -> list[DataFile]:
        """The drop's data files in the order they are read."""

    @abstractmethod
    def open_chunks(self, data_file: DataFile) -> Iterator[bytes | memoryview]:
        """The file's bytes as a stream of chunks."""

    def data_files_or_fail(self, rows_expected: int | None) -> list[DataFile]:
        """The data files; NoDataFiles when there are none but rows are expected."""
        files = self.list_data_files()
        if not files and (rows_expected or 0) > 0:
            raise NoDataFiles(
                f"no data file beside {self.location.metadata_path} although NumberOfRowsExtracted is {rows_expected}"
            )
        return files


class BlobDropSource(DropSource):
    """A drop in a blob container, streamed in chunks with the Storage SDK."""

    def __init__(self, container: ContainerClient, location: DropLocation, chunk_bytes: int = CHUNK_BYTES):
        self.container = container
        self.location = location
        self.chunk_bytes = chunk_bytes

    def read_metadata(self) -> bytes:
        """Download Metadata.json (MetadataError without reading it when it is over the size limit)."""
        try:
            # Read one byte more than the limit at most: a huge file is refused without loading it.
            downloader = self.container.download_blob(
                self.location.metadata_path, offset=0, length=MAX_METADATA_BYTES + 1
            )
            total = int(downloader.properties.size or 0)
            if total > MAX_METADATA_BYTES:
                raise _too_large(total)
            data = downloader.readall()
            self.metadata_etag = str(downloader.properties.etag or "")
            return data
        except ResourceNotFoundError:
            return b""
        except HttpResponseError as exc:
            if exc.status_code == 416:
                return b""  # a range of an empty blob: the file is announced but not committed yet
            raise TransientError(f"could not read {self.location.metadata_path}: {exc}") from exc
        except AzureError as exc:
            raise TransientError(f"could not read {self.location.metadata_path}: {exc}") from exc

    def list_data_files(self) -> list[DataFile]:
        """Blobs below the drop root, except metadata/ and empty directory markers."""
        prefix = self.location.data_prefix
        try:
            blobs = list(self.container.list_blobs(name_starts_with=prefix or None))
        except (HttpResponseError, AzureError) as exc:
            raise TransientError(f"could not list the drop {self.location.url_path}: {exc}") from exc
        sizes = {b.name[len(prefix) :]: b.size or 0 for b in blobs}
        etags = {b.name[len(prefix) :]: str(b.etag or "") for b in blobs}
        return [
            DataFile(name=prefix + name, size=sizes[name], etag=etags[name])
            for name in data_file_names(list(sizes))
            if sizes[name] > 0
        ]

    def open_chunks(self, data_file: DataFile) -> Iterator[bytes | memoryview]:
        """Chunked download (one chunk in memory at a time), only while the blob keeps its listed ETag."""
        try:
            downloader = self.container.download_blob(
                data_file.name,
                max_concurrency=1,
                etag=data_file.etag or None,
                match_condition=MatchConditions.IfNotModified if data_file.etag else None,
            )
            yield from downloader.chunks()
        except ResourceModifiedError:
            raise DataReplaced(
                f"data file {data_file.name} was replaced while it was being read (another run wrote there)"
            ) from None
        except HttpResponseError as exc:
            if exc.status_code == 412:
                raise DataReplaced(
                    f"data file {data_file.name} was replaced while it was being read (another run wrote there)"
                ) from None
            raise TransientError(f"download of {data_file.name} failed: {exc}") from exc
        except AzureError as exc:
            raise TransientError(f"download of {data_file.name} failed: {exc}") from exc


class FolderDropSource(DropSource):
    """A drop in a local folder: ``PATH/metadata/JobMetadata/Metadata.json`` plus its data files."""

    def __init__(self, root: str | Path, chunk_bytes: int = 1024 * 1024) -> None:
        self.root = Path(root)
        self.chunk_bytes = chunk_bytes
        self.location = DropLocation(account="local", container="local", drop_root=str(self.root.resolve()))

    def read_metadata(self) -> bytes:
        """Read Metadata.json ('' when it does not exist); refuse a symbolic link or an oversized file."""
        path = self.root / METADATA_SUFFIX
        if path.is_symlink():
            raise UnsafeDropFolder(f"{METADATA_SUFFIX} is a symbolic link; refusing to follow it out of the drop")
        if not path.is_file():
            return b""
        size = path.stat().st_size
        if size > MAX_METADATA_BYTES:
            raise _too_large(size)
        return path.read_bytes()

    def list_data_files(self) -> list[DataFile]:
        """Files below the folder, except metadata/; a symbolic link anywhere in it is refused."""
        sizes: dict[str, int] = {}
        for folder, dirs, files in os.walk(self.root, followlinks=False):
            for entry in [*dirs, *files]:
                path = Path(folder) / entry
                if path.is_symlink():
                    where = path.relative_to(self.root).as_posix()
                    raise UnsafeDropFolder(f"the drop folder holds a symbolic link ({where}); refusing to follow it")
            for entry in files:
                path = Path(folder) / entry
                sizes[path.relative_to(self.root).as_posix()] = path.stat().st_size
        return [DataFile(name=name, size=sizes[name]) for name in data_file_names(list(sizes)) if sizes[name] > 0]

    def open_chunks(self, data_file: DataFile) -> Iterator[bytes | memoryview]:
        """Read the file in chunks into one reused buffer."""
        buf = bytearray(self.chunk_bytes)
        view = memoryview(buf)
        with open(self.root / data_file.name, "rb", buffering=0) as fh:
            while True:
                n = fh.readinto(buf)
                if not n:
                    break
                yield view[:n]
