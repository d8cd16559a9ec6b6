"""The first hour: the local pipeline acts like MGDC's, errors name their real cause, the CLI is consistent."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from azure.mgmt.datafactory import DataFactoryManagementClient

from devtools.azurite import Azurite
from devtools.localcloud import LocalCloud
from shared.config import Settings
from shared.errors import ConfigError
from shared.ingest import stream_drop
from shared.keyvault import KeyVaultUnwrapper
from shared.keyvault_admin import VaultKeys
from shared.location import METADATA_SUFFIX, DropLocation
from shared.metadata import parse_metadata
from shared.preflight import caller_of, check_subscription_id, check_vault_url
from shared.runs import start_runs, tenant_registry
from shared.runtime import Runtime
from shared.sinks import StreamSink
from shared.sources import BlobDropSource
from shared.tenants import Tenant
from tests.clirun import run_cli
from tests.conftest import Relay, make_relay
from viva_relay.cli import common
from viva_relay.cli.main import COMMANDS, build_parser, command_of

SUB = "5b0f7a61-2c4d-4e8f-9a1b-3c5d7e9f1a2b"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI as a subprocess sees it (tests/clirun.py), reading no settings file but the one given."""
    return run_cli(*args, env={**os.environ, "VIVA_RELAY_SETTINGS": "none", **(env or {})})


@pytest.fixture
def cloud(azurite: Azurite) -> Iterator[LocalCloud]:
    """Key Vault and the MGDC-like Data Factory on the session's Azurite, in a container of their own."""
    container = f"landing-{uuid.uuid4().hex[:10]}"
    with LocalCloud(azurite.connection_string, landing_container=container, rows=3000, step_seconds=60) as c:
        yield c


def local_env(cloud: LocalCloud, relay: Relay) -> dict[str, str]:
    """The settings `make dev` writes, on the test's own tables and queue."""
    return cloud.settings() | {
        k: relay.env[k] for k in ("LEDGER_TABLE", "TENANT_TABLE", "RUN_TABLE", "DOWNSTREAM_QUEUE")
    }


# --------------------------------------------------------------------------------------------------
# The Data Factory stand-in runs the pipeline the way MGDC does
# --------------------------------------------------------------------------------------------------
def test_a_started_run_goes_queued_inprogress_succeeded_and_lands_its_drop_in_adf_order(cloud: LocalCloud) -> None:
    tenant = str(uuid.uuid4())
    with VaultKeys(cloud.vault.url, cloud.vault.credential, **_vault_options(cloud)) as vault:
        vault.create_key(tenant)
    landing = cloud.factory.landing
    snapshots: list[set[str]] = []
    stop = threading.Event()

    def watch() -> None:  # what a reader of the container sees while the pipeline writes
        while not stop.is_set():
            if landing.exists():
                snapshots.append({b.name for b in landing.list_blobs()})
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    client = DataFactoryManagementClient(
        cloud.factory.credential, SUB, base_url=cloud.factory.url, connection_verify=cloud.factory.cert_path
    )
    params = {"TenantId": tenant, "RequestStartDate": "2026-11-02", "RequestEndDate": "2026-11-16"}
    run_id = client.pipelines.create_run("rg", "adf-local", "ExportO365DataEvents", parameters=params).run_id
    statuses: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = str(client.pipeline_runs.get("rg", "adf-local", run_id).status)
        if not statuses or statuses[-1] != status:
            statuses.append(status)
        if status in ("Succeeded", "Failed"):
            break
        time.sleep(0.05)
    stop.set()
    watcher.join()
    assert statuses == ["Queued", "InProgress", "Succeeded"]

    root = f"{run_id}/VivaInsights/{tenant}"
    names = {b.name for b in landing.list_blobs()}
    assert f"{root}/{METADATA_SUFFIX}" in names
    data = [n for n in names if not n.endswith("Metadata.json")]
    assert data and all(n.startswith(f"{root}/") for n in data)
    # Metadata.json is written last: nobody ever saw it without the data beside it.
    assert all(set(data) <= seen for seen in snapshots if f"{root}/{METADATA_SUFFIX}" in seen)

    metadata = parse_metadata(landing.download_blob(f"{root}/{METADATA_SUFFIX}").readall())
    doc = json.loads(landing.download_blob(f"{root}/{METADATA_SUFFIX}").readall())
    assert doc["RequestStartDate"] == "2026-11-02T00:00:00Z" and doc["RequestEndDate"] == "2026-11-16T00:00:00Z"
    assert doc["DataFactoryName"] == "adf-local" and metadata.tenant_id == tenant
    # Wrapped with the tenant's key from the vault: the vault's own decrypt unwraps it, every row is there.
    unwrapper = KeyVaultUnwrapper(
        cloud.vault.url, cloud.vault.credential, ("RSA-OAEP-256", "RSA-OAEP"), **_vault_options(cloud)
    )
    out = io.BytesIO()
    source = BlobDropSource(landing, DropLocation("devstoreaccount1", landing.container_name, root))
    stats = stream_drop(source, metadata, unwrapper, StreamSink(out))
    assert stats.rows == 3000 == metadata.rows_expected and out.getvalue().count(b"\n") == 3000


def test_a_run_for_a_tenant_without_a_key_fails_naming_the_key(cloud: LocalCloud) -> None:
    client = DataFactoryManagementClient(
        cloud.factory.credential, SUB, base_url=cloud.factory.url, connection_verify=cloud.factory.cert_path
    )
    tenant = str(uuid.uuid4())
    run_id = client.pipelines.create_run("rg", "f", "p", parameters={"TenantId": tenant}).run_id
    run = client.pipeline_runs.get("rg", "f", run_id)
    while run.status in ("Queued", "InProgress"):  # each read moves the run on, as a follower's would
        time.sleep(0.05)
        run = client.pipeline_runs.get("rg", "f", run_id)
    assert run.status == "Failed" and f"public key '{tenant}'" in (run.message or "")


def _vault_options(cloud: LocalCloud) -> dict[str, Any]:
    return {"connection_verify": cloud.vault.cert_path, "verify_challenge_resource": False}


# --------------------------------------------------------------------------------------------------
# Errors that name the real cause
# --------------------------------------------------------------------------------------------------
def test_placeholder_and_malformed_settings_are_configuration_errors() -> None:
    with pytest.raises(ConfigError, match="placeholder"):
        check_subscription_id("00000000-0000-0000-0000-000000000000")
    with pytest.raises(ConfigError, match="not a subscription id"):
        check_subscription_id("my-subscription")
    assert check_subscription_id(SUB.upper()) == SUB
    for bad in ("https://myvault.vault.azure.com", "https://<your vault>.vault.azure.net", "myvault", "http://v.x"):
        with pytest.raises(ConfigError):
            check_vault_url(bad)
    assert check_vault_url("https://contoso-relay.vault.azure.net/") == "https://contoso-relay.vault.azure.net"
    assert check_vault_url("https://127.0.0.1:8443") == "https://127.0.0.1:8443"
    with pytest.raises(ConfigError, match="KEY_VAULT_URL"):
        Settings.from_env({"KEY_VAULT_URL": "https://myvault.azurewebsites.net"})


def test_keys_create_with_a_url_that_is_not_a_vault_is_exit_3_at_once() -> None:
    started = time.monotonic()
    done = cli("keys", "create", "--tenant", str(uuid.uuid4()), "--vault-url", "https://myvault.vault.azure.com")
    assert done.returncode == 3, done.stderr
    assert "is not a Key Vault URI" in done.stderr and "vault.azure.net" in done.stderr
    assert time.monotonic() - started < 15  # no network attempt, no retries


def test_runs_start_with_the_example_subscription_is_exit_3_before_any_call(cloud: LocalCloud, relay: Relay) -> None:
    env = local_env(cloud, relay) | {"DATA_FACTORY_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000000"}
    tenant = str(uuid.uuid4())
    tenant_registry(Runtime(Settings.from_env(env))).add(Tenant(tenant_id=tenant, display_name="Contoso"))
    done = cli("runs", "start", "--tenant", tenant, env=env)
    assert done.returncode == 3, done.stderr
    assert "placeholder" in done.stderr and "DATA_FACTORY_SUBSCRIPTION_ID" in done.stderr
    assert cloud.factory.requests == [] and cloud.factory.challenges == 0


def test_runs_start_without_a_sign_in_says_not_signed_in_and_how(cloud: LocalCloud, relay: Relay) -> None:
    env = local_env(cloud, relay)
    tenant = str(uuid.uuid4())
    tenant_registry(Runtime(Settings.from_env(env))).add(Tenant(tenant_id=tenant, display_name="Contoso"))
    env = {k: v for k, v in env.items() if k != "VIVA_RELAY_TEST_TOKEN"}
    done = run_cli(
        "runs",
        "start",
        "--tenant",
        tenant,
        env={k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "VIVA_RELAY_TEST"))}
        | env
        | {"VIVA_RELAY_SETTINGS": "none", "PATH": "/usr/bin:/bin", "HOME": str(relay.tmp)},  # no az, no cache
    )
    assert done.returncode == 3, done.stderr
    assert "not signed in to Azure" in done.stderr and "az login" in done.stderr
    assert "Contributor" not in done.stderr  # not blamed on a role
    assert cloud.factory.requests == []


def test_keys_without_a_sign_in_say_not_signed_in_before_calling_the_vault(tmp_path: Path) -> None:
    done = run_cli(
        "keys",
        "check",
        "--vault-url",
        "https://contoso-relay.vault.azure.net",
        env={k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "VIVA_RELAY_TEST"))}
        | {"VIVA_RELAY_SETTINGS": "none", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},  # no az, no cache
    )
    assert done.returncode == 3, done.stderr
    assert "not signed in to Azure" in done.stderr and "Key Vault https://contoso-relay.vault.azure.net" in done.stderr
    assert "unreachable" not in done.stderr  # the vault was never called


def test_an_authorisation_error_names_the_identity_and_the_missing_role(cloud: LocalCloud, relay: Relay) -> None:
    message = (
        "The client 'ops@contoso.com' with object id '6f1c2b0a-1111-4222-8333-944455556666' does not have"
        " authorization to perform action 'Microsoft.DataFactory/factories/pipelines/createRun/action' over scope"
        " '/subscriptions/x/resourceGroups/viva-relay-local/providers/Microsoft.DataFactory/factories/adf'."
    )
    cloud.factory.fail_pipeline_params({}, status=403, code="AuthorizationFailed", message=message)
    env = local_env(cloud, relay)
    rt = Runtime(Settings.from_env(env))
    tenant = str(uuid.uuid4())
    tenant_registry(rt).add(Tenant(tenant_id=tenant, display_name="Contoso"))
    [outcome] = start_runs(rt, tenant)
    assert outcome.status == "failed"
    assert "the identity 'ops@contoso.com' (object id 6f1c2b0a-1111-4222-8333-944455556666)" in outcome.message
    assert "needs the 'Data Factory Contributor' role on factory viva-relay-local-adf" in outcome.message
    assert caller_of("Caller: appid=abc;oid=def;iss=https://sts") == "'abc' (object id def)"


def test_drop_ingest_of_a_path_without_metadata_is_not_found_and_leaves_no_row(relay: Relay) -> None:
    tenant = relay.new_tenant()
    path = f"{relay.settings.landing_container}/<run id>/VivaInsights/{tenant}"
    done = cli("drop", "ingest", path, env=relay.env)
    assert done.returncode == 1, done.stderr
    assert "not found" in done.stderr and "<run id>" in done.stderr
    assert list(relay.rt.ledger.list()) == []


def test_tables_fold_a_long_cause_instead_of_cutting_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    reason = "Key Vault https://contoso.vault.azure.net refused to unwrap the key: " + "word " * 40 + "THE-END"
    out = io.StringIO()
    common.print_table([{"drop": "d1", "reason": reason}], ["drop", "reason"], stream=out)
    lines = out.getvalue().splitlines()
    assert len(lines) > 3 and all(len(line) <= 100 for line in lines)
    assert " ".join(" ".join(lines[1:]).split()) == "d1 " + " ".join(reason.split())
    assert "…" not in out.getvalue() and "..." not in out.getvalue()


# --------------------------------------------------------------------------------------------------
# CLI consistency
# --------------------------------------------------------------------------------------------------
def _commands() -> Iterator[tuple[list[str], argparse.ArgumentParser, str | None]]:
    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> Iterator[Any]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help for a in action._choices_actions}
                for name, child in action.choices.items():
                    yield [*prefix, name], child, helps.get(name)
                    yield from walk(child, [*prefix, name])

    yield from walk(build_parser(), [])


def test_every_command_and_option_has_help() -> None:
    missing = []
    for path, parser, summary in _commands():
        if not summary or not parser.description:
            missing.append(" ".join(path))
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction) and not action.help:
                missing.append(f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_every_show_takes_its_id_the_same_way() -> None:
    parser = build_parser()
    tenant = str(uuid.uuid4())
    shows = {tuple(path): p for path, p, _ in _commands() if path[-1] == "show"}
    assert {("drops", "show"), ("runs", "show"), ("tenants", "show")} <= set(shows)
    for path, show in shows.items():
        positionals = [a for a in show._actions if not a.option_strings and not isinstance(a, argparse._HelpAction)]
        assert len(positionals) == 1 and str(positionals[0].metavar).endswith("_ID"), path
        args = parser.parse_args([*path, tenant])
        assert tenant in vars(args).values()


def test_v_shows_our_log_and_vv_adds_the_sdk_requests(relay: Relay) -> None:
    one = cli("-v", "drops", "list", env=relay.env)
    two = cli("-vv", "drops", "list", env=relay.env)
    assert one.returncode == two.returncode == 0
    assert "Request URL" not in one.stderr and "azure.core" not in one.stderr
    assert "Request URL" in two.stderr


def test_tenants_add_warns_about_a_missing_key_and_consent_date(relay: Relay) -> None:
    bare = str(uuid.uuid4())
    done = cli("tenants", "add", "--tenant", bare, "--name", "Fabrikam", env=relay.env)
    assert done.returncode == 0, done.stderr
    assert "has no key for tenant" in done.stderr and "keys create" in done.stderr
    assert "no --consent-date" in done.stderr
    ready = relay.new_tenant()
    done = cli(
        "tenants",
        "add",
        "--tenant",
        ready,
        "--name",
        "Contoso",
        "--consent-date",
        date.today().isoformat(),
        env=relay.env,
    )
    assert done.returncode == 0 and "warning" not in done.stderr


def test_drop_simulate_shows_a_progress_bar(relay: Relay, tmp_path: Path) -> None:
    tenant = relay.new_tenant()
    done = cli(
        "drop",
        "simulate",
        "--tenant",
        tenant,
        "--rows",
        "5000",
        "--out",
        str(tmp_path / "d"),
        "--progress",
        env=relay.env,
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"simulate \[[#-]{30}\] [\d,]+/5,000 rows", done.stderr)


def test_settings_file_default_env_and_option_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, queue in (("local.settings.json", "from-default"), ("other.json", "from-env"), ("cli.json", "from-cli")):
        (tmp_path / name).write_text(json.dumps({"Values": {"DOWNSTREAM_QUEUE": queue}}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DOWNSTREAM_QUEUE", raising=False)
    monkeypatch.delenv("VIVA_RELAY_SETTINGS")
    none = argparse.Namespace(settings=None)
    assert common.load_env(none)["DOWNSTREAM_QUEUE"] == "from-default"
    monkeypatch.setenv("VIVA_RELAY_SETTINGS", "other.json")
    assert common.load_env(none)["DOWNSTREAM_QUEUE"] == "from-env"
    assert common.load_env(argparse.Namespace(settings="cli.json"))["DOWNSTREAM_QUEUE"] == "from-cli"
    monkeypatch.setenv("VIVA_RELAY_SETTINGS", "none")
    assert "DOWNSTREAM_QUEUE" not in common.load_env(none)
    monkeypatch.setenv("DOWNSTREAM_QUEUE", "from-environment")
    assert common.load_env(argparse.Namespace(settings="cli.json"))["DOWNSTREAM_QUEUE"] == "from-environment"


def test_azurite_keeps_its_data_where_told_with_telemetry_off(tmp_path: Path) -> None:
    with Azurite(location=tmp_path / "data") as azurite:
        relay = make_relay(azurite, tmp_path)
        relay.landing.upload_blob("kept.txt", b"x")
        command = azurite.command()
    assert "--disableTelemetry" in command and "--inMemoryPersistence" not in command
    assert any((tmp_path / "data").rglob("*"))


def test_make_devs_settings_with_its_services_stopped_say_so(tmp_path: Path) -> None:
    from devtools.azurite import ACCOUNT, KEY, free_port

    port = free_port()  # nothing listens there
    stopped = (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};QueueEndpoint=http://127.0.0.1:{port}/{ACCOUNT};"
        f"TableEndpoint=http://127.0.0.1:{port}/{ACCOUNT};"
    )
    values = {"LandingStorage": stopped, "RelayStorage": stopped, common.LOCAL_SERVICES_MARKER: "make dev"}
    (tmp_path / "local.settings.json").write_text(json.dumps({"Values": values}))
    done = cli("drops", "list", "--settings", str(tmp_path / "local.settings.json"))
    assert done.returncode == 4, done.stderr
    assert "its local services are not running (start them with `make dev`)" in done.stderr


def test_each_command_alone_parses_as_in_the_whole_tree() -> None:
    """A run builds only its own command's parser: it must be the same tree as the whole CLI's."""

    def shape(parser: argparse.ArgumentParser) -> list[tuple[str, ...]]:
        return sorted(
            (" ".join(path), *sorted(o for a in p._actions for o in a.option_strings)) for path, p, _ in walk(parser)
        )

    def walk(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> Iterator[Any]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    yield (*prefix, name), child, None
                    yield from walk(child, (*prefix, name))

    whole = shape(build_parser())
    alone = sorted(line for command in COMMANDS for line in shape(build_parser(command)))
    assert alone == whole and {path.split()[0] for path, *_ in whole} == set(COMMANDS)
    assert command_of(["-v", "drops", "list"]) == "drops" and command_of(["--help"]) is None
    assert command_of(["no-such-command"]) is None  # the whole tree, for argparse's list of choices
