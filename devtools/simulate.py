"""Build realistic encrypted drops, the way MGDC writes them, for the demo, tests and benchmarks.

Development only: the deployed app never imports it (``drop simulate`` in the CLI does, from a checkout).

Rows come from a small sample shipped in ``devtools/sample`` (eight people of the ``vivainsights``
package's ``pq_data``, MIT) and are repeated with new person ids and weeks up to any row count or
size. Two row shapes (SPEC.md): ``display`` (Microsoft's sample file: display-name keys such as
"After-hours collaboration hours", numbers as JSON strings, ISO ``MetricDate``, ``IsActive``) and
``underscore`` (the ``vivainsights`` shape: underscore names, bare numbers).

Every unconfirmed detail of the format is a knob of :class:`DropVariant`, so tests can build each
variant SPEC.md lists: RSA padding, key and IV text encodings, ``DecryptionKeyDetails`` as object
or string, field-name case, counts as strings, several part files, several gzip members, CRLF,
BOM, and a last line without newline.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import padding as sympadding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from isal import isal_zlib

from shared.keyfolder import padding_for
from shared.location import metadata_path_of, sample_drop_root
from shared.metadata import FIELDS

SAMPLE_FILE = "person_week_sample.csv"
PERSON_REPORT = "VivaInsightsDataset_PersonReport_v1"
_HR_COLUMNS = {"FunctionType", "SupervisorIndicator", "Level", "Organization", "LevelDesignation"}
_WEEKS = 35
_NAMESPACE = uuid.UUID("8f1e6a52-3c1b-4f07-9d55-6a0c6b1f2e11")


@dataclass(frozen=True)
class DropVariant:
    """How a simulated drop is written (every SPEC.md 'unconfirmed' choice is one field)."""

    shape: str = "display"  # display | underscore
    rsa_padding: str = "RSA-OAEP-256"  # RSA-OAEP-256 | RSA-OAEP | RSA1_5
    key_text: str = "raw"  # raw | base64 | hex (what is RSA-encrypted)
    iv_text: str = "raw"  # raw | base64 | hex (what the metadata's Base64 iv holds)
    details_as_string: bool = False
    field_case: str = "documented"  # documented | lower | upper
    counts_as_strings: bool = False
    parts: int = 1
    members: int = 1
    crlf: bool = False
    bom: bool = False
    final_newline: bool = True
    gzip_level: int = 1
    data_name: str = "data/part-{part:05d}.json.gz.enc"


@dataclass
class SimulatedDrop:
    """What :func:`simulate_drop` wrote."""

    tenant_id: str
    rows: int
    plaintext_bytes: int
    ciphertext_bytes: int
    metadata: dict[str, Any]
    data_files: list[str] = field(default_factory=list)
    metadata_path: str = ""
    run_id: str = ""
    key: bytes = field(default=b"", repr=False)
    iv: bytes = field(default=b"", repr=False)


def display_name(column: str) -> str:
    """Microsoft's display-name style for an underscore column name."""
    name = column.replace("__work__", " (work) ").replace("_(work)", " (work)")
    name = name.replace("After_hours", "After-hours").replace("_1_1", " 1:1")
    return " ".join(name.replace("_", " ").split())


def load_sample() -> list[dict[str, str]]:
    """The shipped sample rows (CSV, one person-week each)."""
    text = resources.files("devtools.sample").joinpath(SAMPLE_FILE).read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines()))


def _number(text: str) -> int | float | str:
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text else value


def _bodies(shape: str) -> list[bytes]:
    """Each sample row's fields except PersonId and MetricDate, pre-rendered as JSON members."""
    out = []
    for row in load_sample():
        fields: dict[str, Any] = {}
        for column, value in row.items():
            if column in ("PersonId", "MetricDate"):
                continue
            if shape == "display":
                fields[display_name(column)] = value
            else:
                fields[column] = value if column in _HR_COLUMNS else _number(value)
        if shape == "display":
            fields["IsActive"] = True
        text = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
        out.append(text[1:-1].encode("utf-8"))
    return out


def generate_rows(
    count: int | None = None, *, size: int | None = None, shape: str = "display", seed: str = "viva"
) -> Iterator[bytes]:
    """Yield rows (without newline) until ``count`` rows or ``size`` bytes (with newlines)."""
    if shape not in ("display", "underscore"):
        raise ValueError("shape must be display or underscore")
    if count is None and size is None:
        raise ValueError("give a row count or a size")
    bodies = _bodies(shape)
    start = date(2024, 1, 7)
    if shape == "display":
        dates = [f"{(start + timedelta(weeks=w)).isoformat()}T00:00:00Z".encode() for w in range(_WEEKS)]
    else:
        dates = [(start + timedelta(weeks=w)).isoformat().encode() for w in range(_WEEKS)]
    i = 0
    produced = 0
    person = b""
    while (count is None or i < count) and (size is None or produced < size):
        week = i % _WEEKS
        if week == 0:
            person = str(uuid.uuid5(_NAMESPACE, f"{seed}:{i // _WEEKS}")).encode()
        body = bodies[(i // _WEEKS * 7 + week) % len(bodies)]
        row = b'{"PersonId":"' + person + b'","MetricDate":"' + dates[week] + b'",' + body + b"}"
        produced += len(row) + 1
        i += 1
        yield row


class _EncryptingWriter:
    """gzip (one or more members) then AES-256-CBC with PKCS7, streamed to ``write``."""

    def __init__(self, write: Callable[[bytes], None], key: bytes, iv: bytes, level: int) -> None:
        self._write = write
        self._encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        self._padder = sympadding.PKCS7(128).padder()
        self._level = level
        self._gzip = isal_zlib.compressobj(level, isal_zlib.DEFLATED, 31)
        self.ciphertext_bytes = 0

    def _emit(self, compressed: bytes) -> None:
        if compressed:
            out = self._encryptor.update(self._padder.update(compressed))
            self.ciphertext_bytes += len(out)
            if out:
                self._write(out)

    def write(self, data: bytes) -> None:
        self._emit(self._gzip.compress(data))

    def new_member(self) -> None:
        self._emit(self._gzip.flush())
        self._gzip = isal_zlib.compressobj(self._level, isal_zlib.DEFLATED, 31)

    def close(self) -> None:
        self._emit(self._gzip.flush())
        out = self._encryptor.update(self._padder.finalize()) + self._encryptor.finalize()
        self.ciphertext_bytes += len(out)
        self._write(out)


def _text_form(raw: bytes, how: str) -> bytes:
    if how == "raw":
        return raw
    if how == "base64":
        return base64.b64encode(raw)
    if how == "hex":
        return raw.hex().encode()
    raise ValueError(f"unknown text form {how!r}")


def _case(name: str, how: str) -> str:
    return {"documented": name, "lower": name.lower(), "upper": name.upper()}[how]


def build_metadata(
    *,
    tenant_id: str,
    rows: int,
    wrapped_key: bytes,
    iv: bytes,
    key_version: str,
    variant: DropVariant,
    table_name: str = PERSON_REPORT,
    errors: list[str] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """A complete Metadata.json document with all sixteen documented fields."""
    now = now or datetime.now(UTC).replace(microsecond=0)
    details: dict[str, Any] = {
        "DecryptionKeyType": "File",
        "value": base64.b64encode(wrapped_key).decode(),
        "iv": base64.b64encode(_text_form(iv, variant.iv_text)).decode(),
    }
    count: int | str = str(rows) if variant.counts_as_strings else rows
    values: dict[str, Any] = {
        "CopyActivityId": str(uuid.uuid4()),
        "JobSubmissionTime": (now - timedelta(minutes=30)).isoformat().replace("+00:00", "Z"),
        "JobCompletionTime": now.isoformat().replace("+00:00", "Z"),
        "RequestStartDate": (now - timedelta(days=14)).date().isoformat() + "T00:00:00Z",
        "RequestEndDate": now.date().isoformat() + "T00:00:00Z",
        "ColumnsRequested": "PersonId,MetricDate,Collaboration hours,Meeting hours",
        "NumberOfRowsExtracted": count,
        "DataFactoryName": "viva-relay-adf",
        "TenantId": tenant_id,
        "Errors": errors or [],
        "TableName": table_name,
        "ApplicationId": str(uuid.uuid5(_NAMESPACE, "app")),
        "OfficeGeo": "NAM",
        "ExtractionResultId": str(uuid.uuid4()),
        "PublicKeyVersion": key_version,
        "DecryptionKeyDetails": json.dumps(details) if variant.details_as_string else details,
    }
    assert list(values) == list(FIELDS)
    return {_case(k, variant.field_case): v for k, v in values.items()}


def simulate_drop(
    writer: DropWriter,
    *,
    tenant_id: str,
    public_key: rsa.RSAPublicKey,
    key_version: str,
    rows: int | None = None,
    size: int | None = None,
    variant: DropVariant | None = None,
    table_name: str = PERSON_REPORT,
    errors: list[str] | None = None,
    row_source: Iterator[bytes] | None = None,
) -> SimulatedDrop:
    """Write one drop: data file(s) first, then Metadata.json (whose arrival fires the ingest)."""
    variant = variant or DropVariant()
    key = os.urandom(32)
    iv = os.urandom(16)
    wrapped = public_key.encrypt(_text_form(key, variant.key_text), padding_for(variant.rsa_padding))
    source = row_source if row_source is not None else generate_rows(rows, size=size, shape=variant.shape)
    newline = b"\r\n" if variant.crlf else b"\n"
    result = SimulatedDrop(tenant_id, 0, 0, 0, {}, key=key, iv=iv)
    if not errors:
        # Rows are split over the parts round-robin by block, so each part is a valid stream.
        all_rows: Iterator[bytes] = source
        parts = max(1, variant.parts)
        per_part = None if rows is None else -(-rows // parts)
        for part in range(parts):
            name = variant.data_name.format(part=part)
            out = writer.open(name)
            enc = _EncryptingWriter(out.write, key, iv, variant.gzip_level)
            if variant.bom and part == 0:
                enc.write(b"\xef\xbb\xbf")
            batch: list[bytes] = []
            in_part = 0
            member_every = None if per_part is None else max(1, -(-per_part // max(1, variant.members)))
            for row in all_rows:
                batch.append(row)
                in_part += 1
                result.plaintext_bytes += len(row) + len(newline)
                if len(batch) >= 512:
                    enc.write(newline.join(batch) + newline)
                    batch = []
                if member_every and in_part % member_every == 0 and in_part < (per_part or 0):
                    if batch:
                        enc.write(newline.join(batch) + newline)
                        batch = []
                    enc.new_member()
                if per_part is not None and in_part >= per_part and part < parts - 1:
                    break
            last_part = part == parts - 1
            if batch:
                tail = newline.join(batch)
                if not (last_part and not variant.final_newline):
                    tail += newline
                else:
                    result.plaintext_bytes -= len(newline)
                enc.write(tail)
            enc.close()
            out.close()
            result.rows += in_part
            result.ciphertext_bytes += enc.ciphertext_bytes
            result.data_files.append(name)
    result.metadata = build_metadata(
        tenant_id=tenant_id,
        rows=result.rows,
        wrapped_key=wrapped,
        iv=iv,
        key_version=key_version,
        variant=variant,
        table_name=table_name,
        errors=errors,
    )
    body = json.dumps(result.metadata, indent=2).encode("utf-8")
    result.metadata_path = writer.write_metadata(body)
    return result


class _Sink:
    def __init__(self, write: Callable[[bytes], None], close: Callable[[], None]) -> None:
        self.write = write
        self.close = close


class DropWriter:
    """Where a simulated drop is written; :class:`FolderWriter` and :class:`BlobWriter`."""

    def open(self, name: str) -> _Sink:
        """A data file to stream into."""
        raise NotImplementedError

    def write_metadata(self, body: bytes) -> str:
        """Write Metadata.json; returns its path."""
        raise NotImplementedError


class FolderWriter(DropWriter):
    """Writes ``ROOT/metadata/JobMetadata/Metadata.json`` and the data files under ``ROOT``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def open(self, name: str) -> _Sink:
        """Open a local data file."""
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "wb")  # noqa: SIM115 - closed by the sink's close

        def write(data: bytes) -> None:
            fh.write(data)

        return _Sink(write, fh.close)

    def write_metadata(self, body: bytes) -> str:
        """Write the metadata file last."""
        path = self.root / metadata_path_of("")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        return str(path)


class BlobWriter(DropWriter):
    """Writes a drop into a blob container under ``drop_root`` (blocks of 4 MiB, bounded memory)."""

    def __init__(self, container: Any, drop_root: str, block_bytes: int = 4 * 1024 * 1024) -> None:
        self.container = container
        self.drop_root = drop_root.strip("/")
        self.block_bytes = block_bytes

    def _name(self, relative: str) -> str:
        return f"{self.drop_root}/{relative}" if self.drop_root else relative

    def open(self, name: str) -> _Sink:
        """Stage blocks as they fill; commit on close."""
        from azure.storage.blob import BlobBlock

        blob = self.container.get_blob_client(self._name(name))
        buf = bytearray()
        ids: list[str] = []

        def stage() -> None:
            block_id = base64.b64encode(f"{len(ids):08d}".encode()).decode()
            blob.stage_block(block_id, bytes(buf))
            ids.append(block_id)
            buf.clear()

        def write(data: bytes) -> None:
            buf.extend(data)
            if len(buf) >= self.block_bytes:
                stage()

        def close() -> None:
            if buf or not ids:
                stage()
            blob.commit_block_list([BlobBlock(block_id=i) for i in ids])

        return _Sink(write, close)

    def write_metadata(self, body: bytes) -> str:
        """Upload Metadata.json."""
        name = metadata_path_of(self.drop_root)
        self.container.upload_blob(name, body, overwrite=True)
        return name


def sample_layout_root(tenant_id: str, run_id: str | None = None) -> tuple[str, str]:
    """Microsoft's sample layout: ``<RunId>/VivaInsights/<tenant id>`` (and the run id)."""
    run = run_id or str(uuid.uuid4())
    return sample_drop_root(run, tenant_id), run


def parse_size(text: str) -> int:
    """'1GB', '100MB', '512KiB', '12345' -> bytes (decimal for KB/MB/GB, binary for KiB/MiB/GiB)."""
    t = text.strip().upper().replace(" ", "")
    units = {"KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "B": 1}
    for unit, factor in units.items():
        if t.endswith(unit):
            return int(float(t[: -len(unit)]) * factor)
    return int(t)


__all__ = [
    "BlobWriter",
    "DropVariant",
    "FolderWriter",
    "SimulatedDrop",
    "build_metadata",
    "generate_rows",
    "parse_size",
    "sample_layout_root",
    "simulate_drop",
]
