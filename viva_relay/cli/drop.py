"""``viva-relay drop ...``: simulate a drop, decrypt a drop to stdout."""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from azure.storage.blob import BlobServiceClient

from devtools.simulate import (
    BlobWriter,
    DropVariant,
    DropWriter,
    FolderWriter,
    generate_rows,
    parse_size,
    sample_layout_root,
    simulate_drop,
)
from shared import storage
from shared.config import KNOWN_UNWRAP_ALGORITHMS, LANDING_CONNECTION, parse_unwrap_algorithms
from shared.errors import ConfigError, MetadataError, MetadataNotReady, VivaRelayError
from shared.ids import is_guid
from shared.ingest import check_tenant, stream_drop
from shared.keyfolder import KeyFolder, key_version
from shared.keys import KeyUnwrapper
from shared.location import DropLocation, drop_root_named_by, is_metadata_blob, metadata_path_of
from shared.metadata import parse_metadata
from shared.runtime import default_credential
from shared.sinks import StreamSink
from shared.sources import BlobDropSource, DropSource, FolderDropSource
from shared.status import Status, exit_code

from . import common
from .keysource import add_key_source_options, key_source

_CONTAINER_NAME = re.compile(r"^(?!-)(?!.*--)[a-z0-9-]{3,63}(?<!-)$")


def _algorithms(text: str) -> tuple[str, ...]:
    try:
        return parse_unwrap_algorithms(text)
    except ConfigError:
        unknown = [n.strip().upper() for n in text.split(",") if n.strip().upper() not in KNOWN_UNWRAP_ALGORITHMS]
        raise argparse.ArgumentTypeError(
            f"unknown RSA padding {', '.join(n for n in unknown if n) or text!r};"
            f" choose from {', '.join(KNOWN_UNWRAP_ALGORITHMS)}"
        ) from None


def _configured_algorithms(args: argparse.Namespace) -> tuple[str, ...]:
    """UNWRAP_ALGORITHMS (+ RSA1_5 when ALLOW_RSA1_5) from the settings, as the function uses them."""
    env = common.load_env(args)
    names = _algorithms(env.get("UNWRAP_ALGORITHMS", "RSA-OAEP-256,RSA-OAEP"))
    if env.get("ALLOW_RSA1_5", "").strip().lower() in ("1", "true", "yes", "on") and "RSA1_5" not in names:
        names = (*names, "RSA1_5")
    return names


def _tenant(text: str) -> str:
    if not is_guid(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a tenant id (a GUID)")
    return text.lower()


def register(sub: Any) -> None:
    """Add ``drop simulate`` and ``drop decrypt``."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "drop",
        help="simulate, decrypt or ingest one drop",
        description="One drop at a time: make a realistic encrypted one, decrypt one to stdout, or ingest one from"
        " the landing container as the function does.",
    )
    cmds = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sim = cmds.add_parser(
        "simulate",
        help="create a realistic encrypted drop in a folder or a blob container",
        description="Create a drop as MGDC writes it: rows shaped like Viva Insights person-week metrics, "
        "gzip then AES-256-CBC, the file key wrapped with the tenant's public key, and a complete Metadata.json "
        "(written last).",
    )
    sim.add_argument("--tenant", required=True, type=_tenant, help="customer tenant id (the key's name)")
    size = sim.add_mutually_exclusive_group()
    size.add_argument("--rows", type=int, help="number of rows (default 1000)")
    size.add_argument("--size", help="uncompressed size instead, e.g. 100MB or 1GB")
    size.add_argument(
        "--rows-file",
        type=Path,
        help="encrypt the rows of this newline-delimited JSON file (e.g. one of Microsoft's sample datasets) "
        "instead of generated ones; each non-blank line is one row, passed through byte for byte",
    )
    where = sim.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="write the drop into this folder (PATH/metadata/JobMetadata/...)")
    where.add_argument("--container", help="write into this landing container (connection LandingStorage)")
    sim.add_argument("--key-folder", type=Path, help="local key folder holding <tenant>.pem (default: KEY_FOLDER)")
    sim.add_argument("--vault-url", help="take the tenant's public key from this Key Vault instead")
    sim.add_argument(
        "--shape",
        choices=("display", "underscore"),
        default="display",
        help="row shape: Microsoft's display names with numbers as strings (default) or underscores",
    )
    sim.add_argument("--run-id", help="pipeline run id for the folder layout (default: random)")
    sim.add_argument(
        "--table-name",
        default="VivaInsightsDataset_PersonReport_v1",
        help="TableName in Metadata.json (default VivaInsightsDataset_PersonReport_v1)",
    )
    sim.add_argument("--parts", type=int, default=1, help="number of encrypted part files (needs --rows)")
    sim.add_argument("--members", type=int, default=1, help="gzip members per part file")
    sim.add_argument(
        "--rsa-padding",
        choices=("RSA-OAEP-256", "RSA-OAEP", "RSA1_5"),
        default="RSA-OAEP-256",
        help="RSA padding that wraps the file key (default RSA-OAEP-256)",
    )
    sim.add_argument(
        "--key-text",
        choices=("raw", "base64", "hex"),
        default="raw",
        help="how the AES key is encoded before RSA wrapping",
    )
    sim.add_argument(
        "--iv-text",
        choices=("raw", "base64", "hex"),
        default="raw",
        help="how the IV is encoded inside the metadata's Base64 iv value (default raw)",
    )
    sim.add_argument("--details-as-string", action="store_true", help="DecryptionKeyDetails as a JSON string")
    sim.add_argument(
        "--field-case",
        choices=("documented", "lower", "upper"),
        default="documented",
        help="letter case of the Metadata.json field names (default: as documented)",
    )
    sim.add_argument(
        "--counts-as-strings", action="store_true", help="NumberOfRowsExtracted as a JSON string, not a number"
    )
    sim.add_argument("--crlf", action="store_true", help="CRLF line ends")
    sim.add_argument("--bom", action="store_true", help="start the data with a UTF-8 BOM")
    sim.add_argument("--no-final-newline", action="store_true", help="no line end after the last row")
    sim.add_argument("--errors", help="simulate a failed extraction: Errors set, no data file")
    sim.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is not a terminal")
    common.add_settings_option(sim)
    sim.set_defaults(handler=simulate_command)

    dec = cmds.add_parser(
        "decrypt",
        help="decrypt a drop (local folder or blob storage) and stream its rows to stdout as JSON lines",
        description="Decrypt a drop and write every row to stdout, one JSON object per line. PATH is the drop's "
        "root (the folder that holds metadata/JobMetadata/Metadata.json) as a local folder, as a blob URL "
        "(https://<account>.blob.core.windows.net/<container>/<drop root>; the LandingStorage connection is used "
        "for its account, otherwise your Azure sign-in or a SAS in the URL), or as <container>/<drop root> in "
        "the LandingStorage account. The file key is unwrapped in Key Vault (--vault-url, or KEY_VAULT_URL) or "
        "with a local key folder (--key-folder). Runs the same validation and decryption as the ingest "
        "function, including the tenant check for drops in storage; plaintext never touches disk. Exit 0 for a "
        "good drop; otherwise a one-line reason on stderr and exit 1 (3: configuration, 4: Azure unreachable). "
        "Rows are written as they are decrypted, so a bad drop (say, one truncated at the end) may already have "
        "printed some: trust the output only when the exit code is 0.",
    )
    dec.add_argument("path", metavar="PATH", help="the drop's root: a local folder, a blob URL, or container/path")
    dec.add_argument(
        "--algorithms",
        type=_algorithms,
        help="RSA paddings to try, in order, from RSA-OAEP-256, RSA-OAEP, RSA1_5 (default: UNWRAP_ALGORITHMS,"
        " i.e. RSA-OAEP-256,RSA-OAEP)",
    )
    dec.add_argument("--progress", action="store_true", help="show a progress line on stderr")
    add_key_source_options(dec)
    dec.set_defaults(handler=decrypt_command)

    ing = cmds.add_parser(
        "ingest",
        help="deliver a drop in the landing container now, exactly as the blob-triggered function does",
        description="Run the ingest function's own code on a drop in the landing storage (LandingStorage, "
        "LANDING_CONTAINER), as if its Metadata.json event had just arrived: claim it in the ledger, unwrap the "
        "key, stream the rows into the downstream queue, record the outcome. For local trials on Azurite and to "
        "re-deliver an event by hand. PATH is container/<drop root> or the Metadata.json blob's path. Exit 0 "
        "when delivered (or already delivered), 1 when the drop failed, 4 when it is waiting or will be retried.",
    )
    ing.add_argument("path", metavar="PATH", help="container/<drop root> or container/<...>/Metadata.json")
    common.add_settings_option(ing)
    ing.set_defaults(handler=ingest_command)


def _key_folder(args: argparse.Namespace) -> Path:
    if args.key_folder:
        return Path(args.key_folder)
    return Path(common.load_env(args).get("KEY_FOLDER", "keys"))


def rows_of_file(path: Path) -> Iterator[bytes]:
    """The non-blank lines of a newline-delimited JSON file, without their line ends."""
    with open(path, "rb") as fh:
        for line in fh:
            row = line.rstrip(b"\r\n")
            if row.strip():
                yield row


def simulate_command(args: argparse.Namespace) -> int:
    """Write a simulated drop and print a JSON summary."""
    if args.parts > 1 and args.size:
        return common.fail("--parts needs --rows (a size cannot be split evenly in advance)", common.EXIT_USAGE)
    variant = DropVariant(
        shape=args.shape,
        rsa_padding=args.rsa_padding,
        key_text=args.key_text,
        iv_text=args.iv_text,
        details_as_string=args.details_as_string,
        field_case=args.field_case,
        counts_as_strings=args.counts_as_strings,
        parts=args.parts,
        members=args.members,
        crlf=args.crlf,
        bom=args.bom,
        final_newline=not args.no_final_newline,
    )
    keys = key_source(args)
    if keys.vault_url:
        from shared.keyvault_admin import public_key_from_vault

        public, version = public_key_from_vault(keys.vault_url, args.tenant, env=keys.env)
    else:
        public = KeyFolder(keys.folder or _key_folder(args)).public_key(args.tenant)
        version = key_version(public)
    writer: DropWriter
    run_id = ""
    if args.rows is not None and args.rows < 0:
        return common.fail("--rows must be 0 or more", common.EXIT_USAGE)
    size_bytes = None
    if args.size:
        try:
            size_bytes = parse_size(args.size)
        except ValueError:
            return common.fail(f"--size {args.size!r} is not a size such as 100MB or 1GB", common.EXIT_USAGE)
    if args.out:
        if args.out.exists() and any(args.out.iterdir()):
            # Old part files beside a new drop would be read as its data.
            return common.fail(f"--out {args.out} is not empty: give a new or empty folder", common.EXIT_USAGE)
        writer = FolderWriter(args.out)
        where = str(args.out)
    else:
        rt = common.runtime_from(args, {"KEY_SOURCE": "folder"})
        if not _CONTAINER_NAME.match(args.container):
            return common.fail(
                f"--container {args.container!r} is not a valid container name (3-63 lower-case letters, digits,"
                " single hyphens)",
                common.EXIT_USAGE,
            )
        container = rt.landing_container(args.container)
        if not container.exists():
            container.create_container()
        if args.container.lower() == args.tenant:
            run_id = args.run_id or uuid.uuid4().hex
            root = run_id
        else:
            root, run_id = sample_layout_root(args.tenant, args.run_id)
        writer = BlobWriter(container, root)
        where = f"{args.container}/{root}"
    rows = None if args.size else (args.rows if args.rows is not None else 1000)
    row_source = None
    if args.rows_file:
        if not args.rows_file.is_file():
            return common.fail(f"--rows-file {args.rows_file} is not a file", common.EXIT_USAGE)
        row_source = rows_of_file(args.rows_file)
        rows = sum(1 for _ in rows_of_file(args.rows_file)) if args.parts > 1 else None
    if row_source is None and not args.errors:
        row_source = generate_rows(rows, size=size_bytes, shape=variant.shape)
    progress = common.Progress("simulate", rows or size_bytes, force=args.progress)
    unit = "bytes" if size_bytes else "rows"
    try:
        result = simulate_drop(
            writer,
            tenant_id=args.tenant,
            public_key=public,
            key_version=version,
            rows=rows,
            size=size_bytes,
            variant=variant,
            table_name=args.table_name,
            errors=[args.errors] if args.errors else None,
            row_source=_counted(row_source, progress, unit) if row_source is not None else None,
        )
    finally:
        progress.close()
    print(
        json.dumps(
            {
                "tenant": args.tenant,
                "where": where,
                "metadata": result.metadata_path,
                "run_id": run_id or None,
                "rows": result.rows,
                "data_files": result.data_files,
                "plaintext_bytes": result.plaintext_bytes,
                "ciphertext_bytes": result.ciphertext_bytes,
                "key_version": version,
            },
            indent=2,
        )
    )
    return common.EXIT_OK


def _counted(rows: Iterator[bytes], progress: common.Progress, unit: str) -> Iterator[bytes]:
    """The rows, passing how many (or how many bytes, with newlines) went by to the progress bar."""
    done = 0
    for row in rows:
        done += len(row) + 1 if unit == "bytes" else 1
        progress.update(done, unit)
        yield row
    progress.update(done, unit)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _drop_root(blob_path: str) -> str:
    """The drop root a path names: the root itself, or its Metadata.json."""
    return drop_root_named_by(blob_path)


def _landing_service(env: dict[str, str]) -> BlobServiceClient:
    if storage.connection_string(env, LANDING_CONNECTION):
        return storage.blob_service(env, LANDING_CONNECTION, None)
    uri = storage.service_uri(env, LANDING_CONNECTION, "blob")
    return storage.blob_service(env, LANDING_CONNECTION, default_credential(env, target=uri or ""))


def _blob_source(text: str, env: dict[str, str]) -> BlobDropSource:
    """A drop in blob storage, from a blob URL or from container/path in the LandingStorage account."""
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme not in ("https", "http"):
            raise ConfigError(f"{text} is not an http(s) blob URL")
        segments = [unquote(s) for s in parts.path.split("/") if s]
        account_path = ""
        if _is_ip(parts.hostname or "") or parts.hostname == "localhost":
            # Azurite and other emulators put the account in the path: http://127.0.0.1:10000/<account>/...
            account_path, segments = "/" + (segments[0] if segments else ""), segments[1:]
        account_url = f"{parts.scheme}://{parts.netloc}{account_path}"
        if not segments:
            raise ConfigError(f"{text} names no container")
        container, blob_path = segments[0], "/".join(segments[1:])
        service: BlobServiceClient | None = None
        if storage.is_configured(env, LANDING_CONNECTION, "blob"):
            landing = _landing_service(env)
            if landing.url.rstrip("/").lower() == account_url.rstrip("/").lower():
                service = landing
        if service is None:
            # A SAS in the URL, else the operator's sign-in.
            credential: Any = parts.query or default_credential(env, target=account_url)
            service = BlobServiceClient(account_url, credential=credential)
    else:
        if not storage.is_configured(env, LANDING_CONNECTION, "blob"):
            raise ConfigError(
                f"{text} is not a local folder; to read a drop in blob storage give its https:// URL, or"
                f" <container>/<drop root> with the {LANDING_CONNECTION} connection configured"
            )
        container, _, blob_path = text.strip("/").partition("/")
        service = _landing_service(env)
    location = DropLocation(
        account=str(service.account_name or "landing"), container=container, drop_root=_drop_root(blob_path)
    )
    return BlobDropSource(service.get_container_client(container), location)


def _drop_source(text: str, env: dict[str, str]) -> tuple[DropSource, bool]:
    """The drop PATH names and whether the tenant check is required (always for drops in storage)."""
    local = Path(text)
    if "://" not in text and local.exists():
        if local.is_file() and is_metadata_blob(local.resolve().as_posix()):
            local = local.resolve().parents[2]
        return FolderDropSource(local), False
    return _blob_source(text, env), True


def decrypt_command(args: argparse.Namespace) -> int:
    """Stream a drop's rows to stdout."""
    env = common.load_env(args)
    source, tenant_required = _drop_source(args.path, env)
    raw = source.read_metadata()
    if not raw:
        return common.fail(f"{args.path} has no metadata/JobMetadata/Metadata.json, or it is empty")
    try:
        metadata = parse_metadata(raw)
    except MetadataNotReady as exc:
        raise MetadataError(str(exc)) from None
    if metadata.has_errors:
        return common.fail(
            "extraction_errors: the extraction reported errors, there is no data: " + " | ".join(metadata.errors)
        )
    check_tenant(source.location, metadata, required=tenant_required)
    algorithms = args.algorithms or _configured_algorithms(args)
    unwrapper: KeyUnwrapper = key_source(args).unwrapper(algorithms)
    progress = common.Progress("decrypt", metadata.rows_expected, force=args.progress)
    sink = StreamSink(sys.stdout.buffer)
    done = 0

    def advance(rows: int) -> None:
        nonlocal done
        done = rows
        progress.update(rows)

    try:
        stats = stream_drop(source, metadata, unwrapper, sink, progress=advance)
    except VivaRelayError:
        sys.stdout.buffer.flush()
        raise
    finally:
        progress.close(done)
    print(
        f"viva-relay: {stats.rows} rows, {stats.data_files} data file(s), key unwrapped with {stats.algorithm}"
        + (f" (key version {stats.key_version})" if stats.key_version else ""),
        file=sys.stderr,
    )
    return common.EXIT_OK


def ingest_command(args: argparse.Namespace) -> int:
    """Ingest one drop of the landing container into the downstream queue."""
    from shared.ingest import ingest_metadata_blob

    container, _, blob = args.path.strip("/").partition("/")
    if not is_metadata_blob(blob):
        blob = metadata_path_of(blob.rstrip("/"))
    rt = common.runtime_from(args)
    if container != rt.settings.landing_container:
        return common.fail(
            f"{container} is not the landing container {rt.settings.landing_container} (LANDING_CONTAINER)",
            common.EXIT_USAGE,
        )
    if not rt.landing_container(container).get_blob_client(blob).exists():
        # A typo or a placeholder path: say so, and leave no ledger row behind.
        return common.fail(
            f"not found: there is no {container}/{blob} (a drop of Microsoft's layout is at"
            f" {container}/<run id>/VivaInsights/<tenant id>; `drops list` and `runs list` show the drops and runs)"
        )
    outcome = ingest_metadata_blob(rt, container, blob)
    print(json.dumps(outcome.as_dict(), indent=2, default=str))
    code = exit_code([outcome.status], "drop ingest")
    if code == common.EXIT_OK:
        return code
    if outcome.status == Status.FAILED:
        return common.fail(f"{outcome.code}: {outcome.reason}", code)
    return common.fail(f"{outcome.status}: {outcome.reason}", code)
