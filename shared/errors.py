"""One place for every error Viva Relay raises.

Two families matter to the caller:

* :class:`DropError` (permanent): the drop itself is bad (malformed metadata, wrong key, tampered
  data, row-count mismatch). It is recorded as failed with the reason and never retried
  automatically.
* :class:`TransientError`: a network, throttling or availability problem. It is retried with
  backoff, then surfaced.

:class:`MetadataNotReady` is neither: the ``Metadata.json`` is still empty or incomplete (ADLS Gen2
raises ``BlobCreated`` for the empty file first), so the drop is recorded as waiting and re-checked.
"""

from __future__ import annotations


class VivaRelayError(Exception):
    """Base class of every error raised on purpose by Viva Relay."""


class ConfigError(VivaRelayError):
    """A setting is missing or has a value Viva Relay cannot use."""


class MetadataNotReady(VivaRelayError):
    """The Metadata.json is empty or not yet parseable; look again later."""


class DropError(VivaRelayError):
    """A permanent problem with one drop. ``code`` is a short, stable machine-readable reason."""

    code = "drop_error"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MetadataError(DropError):
    """The Metadata.json is malformed or fails validation."""

    code = "bad_metadata"


class ExtractionFailed(DropError):
    """The metadata reports extraction errors (``Errors`` non-empty): there is no data file."""

    code = "extraction_errors"


class TenantMismatch(DropError):
    """The metadata's TenantId is not the tenant the drop's location names."""

    code = "tenant_mismatch"


class KeyUnwrapError(DropError):
    """The wrapped file key could not be unwrapped with the tenant's key (wrong or missing key)."""

    code = "key_unwrap_failed"


class KeyNotFound(KeyUnwrapError):
    """There is no key for the tenant (or for the requested version)."""

    code = "key_not_found"


class IntegrityError(DropError):
    """The encrypted data is truncated, tampered with, or was encrypted with another key."""

    code = "integrity"


class BadRow(DropError):
    """A line of the data file is not one JSON object."""

    code = "bad_row"


class RowTooLarge(DropError):
    """A single row does not fit in one queue message."""

    code = "row_too_large"


class RowCountMismatch(DropError):
    """The number of rows read differs from the metadata's NumberOfRowsExtracted."""

    code = "row_count_mismatch"


class NoDataFiles(DropError):
    """The drop has rows to deliver but no data file beside its Metadata.json."""

    code = "no_data_files"


class ReplayMismatch(DropError):
    """A resumed drop no longer packs as the checkpointed attempt did (skipping would lose rows)."""

    code = "replay_mismatch"


class DataReplaced(DropError):
    """A file of the drop changed while (or since) an attempt read it: another run wrote there."""

    code = "data_replaced"


class ImplausibleData(DropError):
    """The data expands or holds blank lines far beyond what any real drop does (a decompression bomb)."""

    code = "implausible_data"


class UnsafeDropFolder(DropError):
    """A local drop folder holds a symbolic link (it could lead outside the drop)."""

    code = "unsafe_folder"


class StoreRejected(DropError):
    """A store refused a request for good (an HTTP 4xx such as 400 or 413): retrying cannot help."""

    code = "store_rejected"


#: HTTP statuses that say a request will never succeed as it is (anything else is retried).
PERMANENT_HTTP_STATUSES = frozenset({400, 405, 411, 413, 414, 416, 431})


def is_permanent_status(status: int | None) -> bool:
    """True when an HTTP status means the request itself is wrong (not an outage or throttling)."""
    return status in PERMANENT_HTTP_STATUSES


class TransientError(VivaRelayError):
    """A failure that may go away on retry (network, throttling, service unavailable)."""


class LeaseLost(VivaRelayError):
    """Another worker took over the drop (our lease expired); stop without sending more."""


class SchemaViolation(DropError):
    """The rows do not fit the dataset's contract and ``SCHEMA_POLICY=fail`` (the report says how)."""

    code = "schema"

    def __init__(self, reason: str, report: dict[str, object] | None = None) -> None:
        super().__init__(reason)
        self.report = report
