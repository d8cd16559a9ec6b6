"""Parse and validate a drop's ``Metadata.json``.

This module owns every tolerance SPEC.md asks for, in one place:

* field names match case-insensitively;
* ``DecryptionKeyDetails`` may be a nested object or a JSON string inside the JSON;
* counts and dates may be strings or numbers (parsed tolerantly, validated strictly);
* a UTF-8 byte-order mark and surrounding white space are ignored.

An empty or unparsable file raises :class:`MetadataNotReady` (ADLS Gen2 announces the empty file
before its content is committed); a parsable file that fails validation raises
:class:`MetadataError` with a precise reason.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.utils
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .errors import MetadataError, MetadataNotReady
from .ids import GUID_RE as GUID_RE  # noqa: PLC0414 - re-exported; its home is shared.ids
from .ids import is_guid
from .jsondepth import json_depth

#: The sixteen documented fields, in the documented spelling.
FIELDS = (
    "CopyActivityId",
    "JobSubmissionTime",
    "JobCompletionTime",
    "RequestStartDate",
    "RequestEndDate",
    "ColumnsRequested",
    "NumberOfRowsExtracted",
    "DataFactoryName",
    "TenantId",
    "Errors",
    "TableName",
    "ApplicationId",
    "OfficeGeo",
    "ExtractionResultId",
    "PublicKeyVersion",
    "DecryptionKeyDetails",
)

_KEY_VERSION_RE = re.compile(r"^[A-Za-z0-9._-]{0,128}\Z")
#: Larger is not a Metadata.json (a real one is a few KB); such a file is refused without being read.
MAX_METADATA_BYTES = 1 << 20
#: Nesting deeper than this is refused before parsing (a real Metadata.json nests 2 levels).
MAX_METADATA_DEPTH = 16
#: The longest text field accepted (ids, names, versions; a real one is well under 100 characters).
MAX_FIELD_CHARS = 256
#: The largest NumberOfRowsExtracted accepted (a trillion rows; the digits are bounded before int()).
MAX_ROWS_EXPECTED = 10**12
#: At most this many entries of ``Errors`` / ``ColumnsRequested`` are kept, each cut to this length.
MAX_LIST_ENTRIES = 1000
MAX_ERROR_CHARS = 1000
#: Dates outside these years are refused (epoch numbers of any size included).
MIN_YEAR, MAX_YEAR = 1970, 9999
_DATE_TEXT_CHARS = 64


@dataclass(frozen=True)
class KeyDetails:
    """The wrapped file key and IV as carried by ``DecryptionKeyDetails``."""

    key_type: str
    wrapped_key: bytes
    iv: bytes


@dataclass(frozen=True)
class DropMetadata:
    """A validated ``Metadata.json``."""

    tenant_id: str
    table_name: str
    rows_expected: int | None
    errors: tuple[str, ...]
    key: KeyDetails | None
    public_key_version: str
    copy_activity_id: str
    extraction_result_id: str
    data_factory_name: str
    application_id: str
    office_geo: str
    columns_requested: tuple[str, ...]
    job_submission_time: datetime | None
    job_completion_time: datetime | None
    request_start_date: datetime | None
    request_end_date: datetime | None

    @property
    def has_errors(self) -> bool:
        """True when the extraction reported errors, in which case there is no data file."""
        return bool(self.errors)


def decode_base64(text: str, what: str) -> bytes:
    """Decode standard or URL-safe Base64, with or without padding; raise MetadataError."""
    cleaned = "".join(text.split())
    if not cleaned:
        raise MetadataError(f"{what} is empty")
    cleaned = cleaned.replace("-", "+").replace("_", "/")
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        return base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError):
        raise MetadataError(f"{what} is not valid Base64") from None


def _fold(obj: dict[str, Any], where: str) -> dict[str, Any]:
    folded: dict[str, Any] = {}
    for k, v in obj.items():
        lk = k.lower()
        if lk in folded and folded[lk] != v:
            raise MetadataError(f"{where} has the field {k!r} twice with different values")
        folded[lk] = v
    return folded


def _text(d: dict[str, Any], name: str, *, required: bool = False) -> str:
    v = d.get(name.lower())
    if v is None:
        if required:
            raise MetadataError(f"Metadata.json has no {name}")
        return ""
    if isinstance(v, bool) or not isinstance(v, str | int | float):
        raise MetadataError(f"{name} must be a string, not {type(v).__name__}")
    if isinstance(v, int) and v.bit_length() > 4 * MAX_FIELD_CHARS:
        raise MetadataError(f"{name} is a number of more than {MAX_FIELD_CHARS} digits")
    text = str(v).strip()
    if len(text) > MAX_FIELD_CHARS:
        raise MetadataError(f"{name} is {len(text)} characters long; at most {MAX_FIELD_CHARS} are accepted")
    return text


def _count(d: dict[str, Any], name: str, *, required: bool) -> int | None:
    v = d.get(name.lower())
    if v is None or v == "":
        if required:
            raise MetadataError(f"Metadata.json has no {name}")
        return None
    if isinstance(v, bool):
        raise MetadataError(f"{name} must be a non-negative whole number, not {v!r}")
    if isinstance(v, float):
        if not math.isfinite(v) or not v.is_integer():
            raise MetadataError(f"{name} must be a non-negative whole number, not {v!r}")
        v = int(v)
    if isinstance(v, str):
        s = v.strip()
        if not re.fullmatch(r"\+?\d{1,20}(\.0{1,20})?", s):
            raise MetadataError(f"{name} must be a non-negative whole number, not {_shown(v)}")
        v = int(s.split(".")[0])
    if not isinstance(v, int) or v < 0:
        raise MetadataError(f"{name} must be a non-negative whole number, not {_shown(v)}")
    if v > MAX_ROWS_EXPECTED:
        raise MetadataError(f"{name} is more than {MAX_ROWS_EXPECTED}: not a plausible row count")
    return v


def _shown(value: object) -> str:
    """A value for an error message, cut short (a hostile field may be megabytes long)."""
    text = repr(value) if not isinstance(value, int) or value.bit_length() < 200 else "a number of over 60 digits"
    return text if len(text) <= 80 else text[:77] + "..."


def parse_time(value: object, name: str) -> datetime | None:
    """Parse an ISO-8601 string, a .NET-style date string or epoch seconds/ms; None if absent.

    MetadataError for anything else, and for dates outside ``MIN_YEAR``..``MAX_YEAR``.
    """
    if value is None or value == "":
        return None
    try:
        parsed = _parse_time(value, name)
    except (OverflowError, OSError, ValueError):
        raise MetadataError(f"{name} is not a date: {_shown(value)}") from None
    if parsed is not None and not MIN_YEAR <= parsed.year <= MAX_YEAR:
        raise MetadataError(f"{name} is not a plausible date: {_shown(value)}")
    return parsed


def _parse_time(value: object, name: str) -> datetime | None:
    if isinstance(value, bool):
        raise MetadataError(f"{name} is not a date: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value) / (1000.0 if value > 10**11 else 1.0)
        try:
            return datetime.fromtimestamp(seconds, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise MetadataError(f"{name} is not a date: {value!r}") from None
    if not isinstance(value, str):
        raise MetadataError(f"{name} is not a date: {_shown(value)}")
    s = value.strip()
    if len(s) > _DATE_TEXT_CHARS:
        raise MetadataError(f"{name} is not a date: {_shown(value)}")
    if re.fullmatch(r"\d{9,13}", s):
        return parse_time(int(s), name)
    dotnet = re.fullmatch(r"/Date\((-?\d{1,20})([+-]\d{4})?\)/", s)  # .NET JSON dates: /Date(1642291200000)/
    if dotnet:
        return datetime.fromtimestamp(int(dotnet.group(1)) / 1000, tz=UTC)
    iso = s.replace("Z", "+00:00").replace("z", "+00:00")
    # .NET writes up to 7 fractional digits; Python accepts at most 6.
    iso = re.sub(r"(\.\d{6})\d+", r"\1", iso)
    for candidate in (iso, iso.replace(" ", "T", 1)):
        try:
            parsed = datetime.fromisoformat(candidate)
        except ValueError:
            continue
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    with contextlib.suppress(TypeError, ValueError):  # RFC 2822: "Sun, 16 Jan 2022 00:00:00 GMT"
        rfc = email.utils.parsedate_to_datetime(s)
        return rfc if rfc.tzinfo else rfc.replace(tzinfo=UTC)
    for fmt in ("%m/%d/%Y %I:%M:%S %p", "%m/%d/%Y %H:%M:%S", "%m/%d/%Y"):
        try:
            return datetime.strptime(s, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    raise MetadataError(f"{name} is not a date: {_shown(value)}")


def _errors(value: object) -> tuple[str, ...]:
    """The extraction's errors, at most ``MAX_LIST_ENTRIES`` of at most ``MAX_ERROR_CHARS`` each (shown, never sent)."""
    return tuple(e[:MAX_ERROR_CHARS] for e in _all_errors(value)[:MAX_LIST_ENTRIES])


def _all_errors(value: object) -> tuple[str, ...]:
    if value is None or value in ("", [], {}):
        return ()
    if isinstance(value, str):
        stripped = value.strip()
        if stripped in ("", "[]", "null", "{}"):
            return ()
        return (stripped,)
    if isinstance(value, list):
        out = [e if isinstance(e, str) else json.dumps(e, sort_keys=True) for e in value]
        return tuple(e for e in out if e.strip())
    return (json.dumps(value, sort_keys=True),)


def _key_details(value: object) -> KeyDetails:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise MetadataError("DecryptionKeyDetails is a string but not JSON") from None
    if not isinstance(value, dict):
        raise MetadataError("DecryptionKeyDetails must be an object (or a JSON string of one)")
    d = _fold(value, "DecryptionKeyDetails")
    key_type = d.get("decryptionkeytype", "File")
    if not isinstance(key_type, str) or key_type.strip().lower() != "file":
        raise MetadataError(f"DecryptionKeyDetails.DecryptionKeyType must be 'File', not {key_type!r}")
    wrapped = d.get("value")
    iv = d.get("iv")
    if not isinstance(wrapped, str):
        raise MetadataError("DecryptionKeyDetails has no value (the wrapped file key)")
    if not isinstance(iv, str):
        raise MetadataError("DecryptionKeyDetails has no iv")
    wrapped_bytes = decode_base64(wrapped, "DecryptionKeyDetails.value")
    if len(wrapped_bytes) not in (256, 384, 512):
        raise MetadataError(
            f"DecryptionKeyDetails.value decodes to {len(wrapped_bytes)} bytes;"
            " an RSA-wrapped key is 256 bytes for RSA-2048"
        )
    return KeyDetails(key_type="File", wrapped_key=wrapped_bytes, iv=decode_base64(iv, "DecryptionKeyDetails.iv"))


def parse_metadata(raw: bytes | str) -> DropMetadata:
    """Parse ``Metadata.json`` bytes into :class:`DropMetadata`.

    Raises :class:`MetadataNotReady` for an empty or unparsable file and :class:`MetadataError`
    for one that parses but is invalid.
    """
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    if len(raw) > MAX_METADATA_BYTES:
        raise MetadataError(f"Metadata.json is {len(raw)} bytes; more than 1 MiB is not a metadata file")
    text = raw.removeprefix(b"\xef\xbb\xbf").strip()
    if not text:
        raise MetadataNotReady("Metadata.json is empty (not committed yet)")
    if json_depth(text) > MAX_METADATA_DEPTH:
        raise MetadataError(f"Metadata.json nests deeper than {MAX_METADATA_DEPTH} levels; it is not a metadata file")
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MetadataNotReady(f"Metadata.json is not valid JSON yet: {exc}") from None
    if not isinstance(doc, dict):
        raise MetadataError(f"Metadata.json must hold a JSON object, not {type(doc).__name__}")
    d = _fold(doc, "Metadata.json")

    tenant = _text(d, "TenantId", required=True)
    if tenant.startswith("{") and tenant.endswith("}"):
        tenant = tenant[1:-1]  # the registry form of a GUID, {xxxxxxxx-...}
    if not is_guid(tenant):
        raise MetadataError(f"TenantId {tenant!r} is not a GUID")
    errors = _errors(d.get("errors"))
    table = _text(d, "TableName", required=not errors)
    rows = _count(d, "NumberOfRowsExtracted", required=not errors)
    application_id = _text(d, "ApplicationId")
    if application_id and not is_guid(application_id):
        raise MetadataError(f"ApplicationId {application_id!r} is not a GUID")
    version = _text(d, "PublicKeyVersion")
    if not _KEY_VERSION_RE.match(version):
        raise MetadataError(f"PublicKeyVersion {version!r} is not a key version")
    details = d.get("decryptionkeydetails")
    key: KeyDetails | None = None
    if details not in (None, "", {}):
        key = _key_details(details)
    elif not errors:
        raise MetadataError("Metadata.json has no DecryptionKeyDetails")
    columns_raw = d.get("columnsrequested")
    if isinstance(columns_raw, list):
        columns = tuple(str(c).strip()[:MAX_FIELD_CHARS] for c in columns_raw[:MAX_LIST_ENTRIES] if str(c).strip())
    elif isinstance(columns_raw, str):
        columns = tuple(c.strip()[:MAX_FIELD_CHARS] for c in columns_raw.split(",", MAX_LIST_ENTRIES) if c.strip())
    elif columns_raw is None:
        columns = ()
    else:
        raise MetadataError("ColumnsRequested must be a comma-separated string")
    return DropMetadata(
        tenant_id=tenant.lower(),
        table_name=table,
        rows_expected=rows,
        errors=errors,
        key=key,
        public_key_version=version,
        copy_activity_id=_text(d, "CopyActivityId"),
        extraction_result_id=_text(d, "ExtractionResultId"),
        data_factory_name=_text(d, "DataFactoryName"),
        application_id=application_id.lower(),
        office_geo=_text(d, "OfficeGeo"),
        columns_requested=columns,
        job_submission_time=parse_time(d.get("jobsubmissiontime"), "JobSubmissionTime"),
        job_completion_time=parse_time(d.get("jobcompletiontime"), "JobCompletionTime"),
        request_start_date=parse_time(d.get("requeststartdate"), "RequestStartDate"),
        request_end_date=parse_time(d.get("requestenddate"), "RequestEndDate"),
    )
