"""`viva-relay drop ...` and `keys create` through the CLI's ``main`` (tests/clirun.py: as a subprocess sees it).

The installed ``viva-relay`` script and ``python -m viva_relay`` themselves run as real subprocesses once.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from devtools.simulate import generate_rows
from tests.clirun import run_cli_bytes
from viva_relay.cli.main import build_parser

TENANT = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return run_cli_bytes(*args, env={**os.environ, **(env or {})}, cwd=cwd)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    assert cli("keys", "create", "--tenant", TENANT, "--key-folder", str(root / "keys")).returncode == 0
    done = cli(
        "drop",
        "simulate",
        "--tenant",
        TENANT,
        "--rows",
        "250",
        "--out",
        str(root / "good"),
        "--key-folder",
        str(root / "keys"),
    )
    assert done.returncode == 0, done.stderr
    return root


def copy_drop(workspace: Path, name: str) -> Path:
    target = workspace / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(workspace / "good", target)
    return target


def data_file(drop: Path) -> Path:
    return next(p for p in drop.rglob("*") if p.is_file() and "metadata" not in p.parts)


def test_every_command_has_help() -> None:
    parser = build_parser()
    paths: list[list[str]] = [[]]

    def walk(p: argparse.ArgumentParser, prefix: list[str]) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    paths.append([*prefix, name])
                    walk(child, [*prefix, name])

    walk(parser, [])
    assert len(paths) > 5
    for path in paths:
        with pytest.raises(SystemExit) as info:
            parser.parse_args([*path, "--help"])
        assert info.value.code == 0, path


def test_installed_entry_point_and_module_both_run() -> None:
    exe = Path(sys.executable).parent / "viva-relay"
    assert subprocess.run([str(exe), "--help"], capture_output=True, check=False, timeout=60).returncode == 0
    module = subprocess.run(
        [sys.executable, "-m", "viva_relay", "--help"], capture_output=True, check=False, timeout=60
    )
    assert module.returncode == 0 and b"drop" in module.stdout
    assert cli("--help").stdout == module.stdout  # the in-process runner the other tests use sees the same


def test_decrypt_good_drop_streams_every_row(workspace: Path) -> None:
    done = cli("drop", "decrypt", str(workspace / "good"), "--key-folder", str(workspace / "keys"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == list(generate_rows(250))
    assert b"250 rows" in done.stderr


def test_simulate_underscore_shape_and_variants(workspace: Path) -> None:
    out = workspace / "variant"
    done = cli(
        "drop",
        "simulate",
        "--tenant",
        TENANT,
        "--rows",
        "90",
        "--out",
        str(out),
        "--key-folder",
        str(workspace / "keys"),
        "--shape",
        "underscore",
        "--parts",
        "2",
        "--members",
        "3",
        "--rsa-padding",
        "RSA-OAEP",
        "--key-text",
        "hex",
        "--details-as-string",
        "--crlf",
    )
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["data_files"]) == 2
    dec = cli("drop", "decrypt", str(out), "--key-folder", str(workspace / "keys"))
    assert dec.returncode == 0, dec.stderr
    assert dec.stdout.splitlines() == list(generate_rows(90, shape="underscore"))


def test_simulate_by_size(workspace: Path) -> None:
    done = cli(
        "drop",
        "simulate",
        "--tenant",
        TENANT,
        "--size",
        "2MB",
        "--out",
        str(workspace / "sized"),
        "--key-folder",
        str(workspace / "keys"),
    )
    summary = json.loads(done.stdout)
    assert 2_000_000 <= summary["plaintext_bytes"] < 2_010_000


def _fails(done: subprocess.CompletedProcess[bytes], words: str) -> None:
    assert done.returncode == 1
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and words in lines[0], done.stderr
    assert lines[0].startswith("viva-relay: ")


def test_decrypt_with_errors_set(workspace: Path) -> None:
    out = workspace / "errors"
    cli(
        "drop",
        "simulate",
        "--tenant",
        TENANT,
        "--out",
        str(out),
        "--key-folder",
        str(workspace / "keys"),
        "--errors",
        "source throttled",
    )
    _fails(cli("drop", "decrypt", str(out), "--key-folder", str(workspace / "keys")), "source throttled")


def test_decrypt_with_missing_key(workspace: Path, tmp_path: Path) -> None:
    _fails(cli("drop", "decrypt", str(workspace / "good"), "--key-folder", str(tmp_path)), "no key for tenant")


def test_decrypt_with_wrong_key(workspace: Path, tmp_path: Path) -> None:
    cli("keys", "create", "--tenant", TENANT, "--key-folder", str(tmp_path))
    _fails(cli("drop", "decrypt", str(workspace / "good"), "--key-folder", str(tmp_path)), "could not be unwrapped")


def test_decrypt_tampered(workspace: Path) -> None:
    drop = copy_drop(workspace, "tampered")
    f = data_file(drop)
    data = bytearray(f.read_bytes())
    data[100] ^= 1
    f.write_bytes(bytes(data))
    _fails(cli("drop", "decrypt", str(drop), "--key-folder", str(workspace / "keys")), "integrity")


def test_decrypt_truncated(workspace: Path) -> None:
    drop = copy_drop(workspace, "truncated")
    f = data_file(drop)
    f.write_bytes(f.read_bytes()[:-7])
    _fails(cli("drop", "decrypt", str(drop), "--key-folder", str(workspace / "keys")), "truncated")


def test_decrypt_row_count_mismatch(workspace: Path) -> None:
    drop = copy_drop(workspace, "count")
    meta = drop / "metadata" / "JobMetadata" / "Metadata.json"
    doc = json.loads(meta.read_text())
    doc["NumberOfRowsExtracted"] = 249
    meta.write_text(json.dumps(doc))
    _fails(cli("drop", "decrypt", str(drop), "--key-folder", str(workspace / "keys")), "row_count_mismatch")


def test_decrypt_malformed_metadata(workspace: Path) -> None:
    drop = copy_drop(workspace, "badmeta")
    meta = drop / "metadata" / "JobMetadata" / "Metadata.json"
    doc = json.loads(meta.read_text())
    doc["TenantId"] = "tenant-1"
    meta.write_text(json.dumps(doc))
    _fails(cli("drop", "decrypt", str(drop), "--key-folder", str(workspace / "keys")), "bad_metadata")
    meta.write_text("{ not json")
    _fails(cli("drop", "decrypt", str(drop), "--key-folder", str(workspace / "keys")), "not valid JSON")


def test_decrypt_writes_nothing_to_disk(workspace: Path, tmp_path: Path) -> None:
    before = {p for p in workspace.rglob("*")}
    done = cli("drop", "decrypt", str(workspace / "good"), "--key-folder", str(workspace / "keys"), cwd=tmp_path)
    assert done.returncode == 0
    assert {p for p in workspace.rglob("*")} == before and not list(tmp_path.iterdir())


def test_keys_create_refuses_a_second_key_and_rotates(tmp_path: Path) -> None:
    tenant = str(uuid.uuid4())
    first = cli("keys", "create", "--tenant", tenant, "--key-folder", str(tmp_path))
    assert first.returncode == 0
    assert oct((tmp_path / f"{tenant}.pem").stat().st_mode & 0o777) == "0o600"
    again = cli("keys", "create", "--tenant", tenant, "--key-folder", str(tmp_path))
    assert again.returncode == 1 and b"already has a key" in again.stderr
    rotated = cli("keys", "create", "--tenant", tenant, "--key-folder", str(tmp_path), "--rotate")
    assert rotated.returncode == 0
    old = json.loads(first.stdout)["version"]
    assert (tmp_path / f"{tenant}.{old}.pem").exists()
    assert json.loads(rotated.stdout)["version"] != old


def test_bad_tenant_id_is_a_usage_error(tmp_path: Path) -> None:
    done = cli("keys", "create", "--tenant", "contoso", "--key-folder", str(tmp_path))
    assert done.returncode == 2 and b"not a tenant id" in done.stderr


def test_simulate_from_a_rows_file_passes_rows_byte_for_byte(workspace: Path, tmp_path: Path) -> None:
    # Rows shaped as in Microsoft's sample file: spaces after colons, numbers as strings, a bare boolean,
    # and the directory dataset's escaped entities; the file's last line has no newline.
    rows = [
        b'{"PersonId": "007cc8e6-fcfc-34f2-b3da-d800cb284b21","MetricDate":"2022-01-01T00:00:00Z",'
        b'"After-hours collaboration hours":"126.00418432003623","Meeting hours with manager 1:1":"1.28",'
        b'"Small-group meeting, call, and chat hours":"4.46", "IsActive": true }',
        b'{"aboutMe":"R&amp;D and Operations","displayName":"Megan Bowen","mail":"megan@contoso.com"}',
        b'{"ObjectId":"b7f16999-b812-4462-b854-bcea37e7597c","AfterHoursCollaboration":0.0,"Big":123456789012345678901}',
    ]
    source = tmp_path / "rows.json"
    source.write_bytes(b"\n".join(rows))
    out = tmp_path / "drop"
    done = cli(
        "drop",
        "simulate",
        "--tenant",
        TENANT,
        "--rows-file",
        str(source),
        "--out",
        str(out),
        "--key-folder",
        str(workspace / "keys"),
        "--parts",
        "2",
        "--table-name",
        "BasicDataSet_v0.User_v1",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows"] == 3
    dec = cli("drop", "decrypt", str(out), "--key-folder", str(workspace / "keys"))
    assert dec.returncode == 0, dec.stderr
    assert dec.stdout.splitlines() == rows


def test_simulate_into_azurite_then_ingest_like_the_function(relay: Any) -> None:
    tenant = relay.new_tenant()
    env = {**relay.env}
    container = relay.landing.container_name
    made = cli("drop", "simulate", "--tenant", tenant, "--rows", "60", "--container", container, env=env)
    assert made.returncode == 0, made.stderr
    where = json.loads(made.stdout)["where"]
    first = cli("drop", "ingest", where, env=env)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["status"] == "delivered" and json.loads(first.stdout)["rows"] == 60
    again = cli("drop", "ingest", where + "/metadata/JobMetadata/Metadata.json", env=env)
    assert again.returncode == 0 and json.loads(again.stdout)["status"] == "skipped"
    other = cli("drop", "ingest", "elsewhere/x", env=env)
    assert other.returncode == 2 and b"not the landing container" in other.stderr
