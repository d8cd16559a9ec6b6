"""Health rules, `viva-relay status`, and key rotation with overlap (both key stores)."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devtools.azurite import Azurite
from devtools.clock import ManualClock
from devtools.fleet import drop_row, weekly_round, write_rows
from devtools.keyvault_standin import KeyVaultStandIn
from shared.alerts import announce, announcement_store
from shared.config import Settings
from shared.health import collect, evaluate
from shared.ingest import ingest_metadata_blob
from shared.keyfolder import KeyFolder, KeyFolderUnwrapper, key_version
from shared.keyrotation import RetireRefused, key_needs, plan_retirement, retire
from shared.keyvault_admin import VaultKeys
from shared.ledger import DropRecord
from shared.location import location_from_blob
from shared.runtime import Runtime
from shared.tenants import Tenant, TenantRegistry
from tests.clirun import run_cli
from tests.conftest import Relay, make_relay

FAST_RETRY = {"retry_total": 1, "retry_backoff_factor": 0.01}


def cli(relay: Relay, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a subprocess sees it (tests/clirun.py), configured like the relay."""
    return run_cli(*args, env={**os.environ, **relay.env})


def register(relay: Relay, tenant: str, name: str, *, consent_days_ago: int = 10) -> None:
    registry = TenantRegistry(relay.rt.table(relay.settings.tenant_table))
    now = datetime.now(UTC)
    consent = (now - timedelta(days=consent_days_ago)).date()
    registry.add(Tenant(tenant_id=tenant, display_name=name, consent_date=consent), now=now - timedelta(days=3))


def ingest(relay: Relay, tenant: str) -> DropRecord:
    """Simulate the tenant's first drop and ingest it; its ledger row."""
    _, path = relay.drop(tenant, rows=50)
    ingest_metadata_blob(relay.rt, relay.landing.container_name, path)
    [record] = list(relay.rt.ledger.list(tenant=tenant))
    return record


# --------------------------------------------------------------------------------------------------
# viva-relay status
# --------------------------------------------------------------------------------------------------
def test_status_lists_every_tenant_and_exits_1_with_the_problems(relay: Relay) -> None:
    healthy, troubled = relay.new_tenant(), relay.new_tenant()
    register(relay, healthy, "Healthy Ltd")
    register(relay, troubled, "Troubled plc")
    versions = {t: key_version(relay.keys.public_key(t)) for t in (healthy, troubled)}
    weekly_round(relay.rt, [healthy, troubled], versions, datetime.now(UTC) - timedelta(hours=2))

    ok = cli(relay, "status")
    assert ok.returncode == 0, ok.stderr
    assert healthy in ok.stdout and troubled in ok.stdout
    assert "Healthy Ltd" in ok.stdout and "delivered 1000r" in ok.stdout
    assert "oldest failed drop: none" in ok.stdout
    report = json.loads(cli(relay, "status", "--json").stdout)
    assert report["needs_action"] is False
    assert {t["tenant_id"] for t in report["tenants"]} == {healthy, troubled}
    row = next(t for t in report["tenants"] if t["tenant_id"] == healthy)
    assert row["key_version"] == versions[healthy] and row["key_days_left"] == 365
    assert row["consent_days_left"] == 170 and row["last_run"]["status"] == "Succeeded"
    assert report["queue"]["approximate_messages"] == 0

    failed_id = uuid.uuid4().hex
    when = datetime.now(UTC) - timedelta(hours=1)
    write_rows(relay.rt, relay.settings.ledger_table, [drop_row(troubled, failed_id, "failed", when, reason="bad")])
    bad = cli(relay, "status")
    assert bad.returncode == 1
    assert f"oldest failed drop: {failed_id}" in bad.stdout
    assert "drop_failed" in bad.stdout and "drops reprocess" in bad.stdout
    report = json.loads(cli(relay, "status", "--json").stdout)
    assert report["needs_action"] is True
    [problem] = next(t for t in report["tenants"] if t["tenant_id"] == troubled)["problems"]
    assert (problem["rule"], problem["subject"], problem["severity"]) == ("drop_failed", failed_id, "error")
    assert not next(t for t in report["tenants"] if t["tenant_id"] == healthy)["problems"]


# --------------------------------------------------------------------------------------------------
# Schema drift (the contract check records SchemaDrift on the drop's ledger row)
# --------------------------------------------------------------------------------------------------
def test_schema_drift_recorded_by_the_contract_check_is_reported_until_cleared(relay: Relay) -> None:
    tenant = relay.new_tenant()
    register(relay, tenant, "Drifting")
    record = ingest(relay, tenant)
    clock = ManualClock(datetime.now(UTC))

    def drift_problems() -> list[str]:
        health = evaluate(collect(relay.rt, clock), relay.settings)
        assert [t.schema_drift for t in health.tenants] == [record.schema_drift]
        return [p.subject for p in health.problems if p.rule == "schema_drift"]

    # The contract check ran on the drop: the simulated rows copy Microsoft's v1 sample (PersonId, not
    # ObjectId; numbers as strings), which drifts from the published schema, so drift is recorded.
    assert record.schema_drift is True
    assert "renamed" in {f["check"] for f in json.loads(str(record.schema_report))["findings"]}
    assert drift_problems() == [record.drop_id]
    updated = relay.rt.ledger.update_if(record, lambda r: True, {"schema_drift": False})
    assert updated is not None
    record = updated
    assert drift_problems() == []


# --------------------------------------------------------------------------------------------------
# Alerts: one announcement per problem until it changes or the repeat window passes
# --------------------------------------------------------------------------------------------------
def test_a_changed_problem_is_announced_at_once_and_a_resolved_one_once(relay: Relay) -> None:
    tenant = relay.new_tenant()
    clock = ManualClock(datetime.now(UTC))
    registry = TenantRegistry(relay.rt.table(relay.settings.tenant_table))
    expires_in = 5  # consent expiring in 5 days, then expired
    consent = clock().date() + timedelta(days=expires_in - 180)
    registry.add(Tenant(tenant_id=tenant, consent_date=consent), now=clock() - timedelta(days=1))
    weekly_round(relay.rt, [tenant], {}, clock() - timedelta(hours=1))
    store = announcement_store(relay.rt)

    def check() -> tuple[list[str], list[str]]:
        health = evaluate(collect(relay.rt, clock), relay.settings)
        result = announce(health.problems, store, relay.settings.health_repeat_hours, clock)
        return [p.rule for p in result.announced], [p.rule for p in result.resolved]

    assert check() == (["consent_expiring"], [])
    assert check() == ([], [])  # same problem, same day: quiet
    clock.advance(days=2)
    assert check() == ([], [])  # still within HEALTH_REPEAT_HOURS (72)
    clock.advance(days=4)  # now expired: a different problem; the warning is resolved
    assert check() == (["consent_expired"], ["consent_expiring"])
    registry.add(Tenant(tenant_id=tenant, consent_date=clock().date()), replace_existing=True)
    assert check() == ([], ["consent_expired"])
    assert check() == ([], [])


# --------------------------------------------------------------------------------------------------
# Rotation with overlap
# --------------------------------------------------------------------------------------------------
def test_rotate_keeps_old_versions_while_a_drop_needs_them_then_retire_disables_them(relay: Relay) -> None:
    tenant = relay.new_tenant()
    register(relay, tenant, "Rotating")
    folder = ["--key-folder", relay.env["KEY_FOLDER"]]
    old = key_version(relay.keys.public_key(tenant))
    old_public = relay.keys.public_key(tenant)
    delivered = ingest(relay, tenant)
    assert delivered.state == "delivered" and delivered.public_key_version == old

    rotated = cli(relay, "keys", "rotate", "--tenant", tenant, *folder)
    assert rotated.returncode == 0, rotated.stderr
    new = json.loads(rotated.stdout)["version"]
    assert new != old and json.loads(rotated.stdout)["kept_enabled"] == {old: []}

    # A drop Microsoft encrypted with the old key before it picked up the new one fails here
    # (simulated): it is unsettled, names the old version, and so keeps it.
    _, path = relay.drop(tenant, rows=10, version=old)
    location = location_from_blob(relay.rt.landing_account, relay.landing.container_name, path)
    pending = relay.rt.ledger.mark_failed(
        location, tenant, "simulated", "downstream refused", details={"public_key_version": old}
    )
    kept = cli(relay, "keys", "retire", "--tenant", tenant, *folder)
    assert kept.returncode == 0, kept.stderr
    assert json.loads(kept.stdout)["retired"] == [] and old in json.loads(kept.stdout)["kept"]
    refused = cli(relay, "keys", "retire", "--tenant", tenant, "--version", old, *folder)
    assert refused.returncode == 1 and pending.drop_id in refused.stderr and "--force" in refused.stderr
    health = evaluate(collect(relay.rt), relay.settings)
    assert not [p for p in health.problems if p.rule == "key_retirable"]
    assert KeyFolder(relay.env["KEY_FOLDER"]).is_enabled(tenant, old)

    # Once the drop is settled the old version is retirable: the rule says so, retire disables it.
    relay.rt.ledger.update_if(pending, lambda r: True, {"state": "delivered"})
    health = evaluate(collect(relay.rt), relay.settings)
    assert [(p.rule, p.subject) for p in health.problems if p.rule == "key_retirable"] == [("key_retirable", old)]
    assert not health.needs_action  # a suggestion, not an alarm
    retired = cli(relay, "keys", "retire", "--tenant", tenant, *folder)
    assert json.loads(retired.stdout)["retired"] == [old], retired.stderr
    inventory = {k.version: k for k in KeyFolder(relay.env["KEY_FOLDER"]).inventory()}
    assert inventory[old].enabled is False and inventory[new].enabled is True
    assert (Path(relay.env["KEY_FOLDER"]) / f"{tenant}.{old}.pem").exists()  # kept, only disabled
    unwrapper = KeyFolderUnwrapper(relay.env["KEY_FOLDER"])
    assert [v for v, _ in unwrapper._candidates(tenant, old)] == [new]
    assert key_version(old_public) == old
    health = evaluate(collect(relay.rt), relay.settings)
    assert not [p for p in health.problems if p.rule == "key_retirable"]
    current = cli(relay, "keys", "retire", "--tenant", tenant, "--version", new, *folder)
    assert current.returncode == 1 and "current key" in current.stderr


@pytest.fixture
def vault(kv: KeyVaultStandIn) -> Iterator[VaultKeys]:
    with VaultKeys(kv.url, kv.credential, **kv.client_kwargs(), **FAST_RETRY) as keys:
        yield keys


def test_key_vault_rotation_keeps_needed_versions_and_retire_disables_the_rest(vault: VaultKeys) -> None:
    tenant = str(uuid.uuid4())
    first = vault.create_key(tenant).version
    second = vault.create_key(tenant, rotate=True).version
    third = vault.create_key(tenant, rotate=True).version
    in_flight = DropRecord(tenant, "d-waiting", state="waiting", public_key_version=second)
    done = DropRecord(tenant, "d-done", state="delivered", public_key_version=first)
    needs = key_needs([in_flight, done])

    plan = plan_retirement(tenant, vault.inventory(), needs)
    assert plan.retire == (first,) and set(plan.kept) == {second}
    with pytest.raises(RetireRefused, match="d-waiting"):
        plan_retirement(tenant, vault.inventory(), needs, versions=[second])
    retire(vault, plan)
    enabled = {k.version: k.enabled for k in vault.inventory()}
    assert enabled == {first: False, second: True, third: True}

    forced = plan_retirement(tenant, vault.inventory(), needs, versions=[second], force=True)
    assert forced.forced == (second,)
    retire(vault, forced)
    assert {k.version: k.enabled for k in vault.inventory()} == {first: False, second: False, third: True}
    # A waiting drop without a version yet may need any version: nothing is retired automatically.
    unknown = key_needs([DropRecord(tenant, "d-new", state="waiting")])
    assert plan_retirement(tenant, vault.inventory(), unknown).retire == ()


def test_demo_status_step_registers_the_tenant_and_shows_its_row(
    relay: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    from devtools.demo_status import status_step

    tenant = relay.new_tenant()
    ingest(relay, tenant)
    # The simulated rows copy Microsoft's v1 sample, which drifts from the published schema: the
    # contract check records it and status lists it as the one problem.
    assert status_step({**os.environ, **relay.env}, tenant, cli=lambda env, *args: run_cli(*args, env=env)) == 1
    out = capsys.readouterr().out
    assert "$ viva-relay status" in out and tenant in out and "Demo customer" in out
    assert "schema_drift" in out and "(exit 1: problems listed above)" in out


def test_health_reads_the_keys_from_key_vault_when_it_is_the_key_source(
    azurite: Azurite, tmp_path: Path, kv: KeyVaultStandIn, vault: VaultKeys
) -> None:
    relay = make_relay(azurite, tmp_path, KEY_SOURCE="keyvault", KEY_VAULT_URL=kv.url)
    rt = Runtime(
        Settings.from_env(relay.env), credential=kv.credential, keyvault_kwargs=kv.client_kwargs() | FAST_RETRY
    )
    soon, fine, keyless = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    for tenant in (soon, fine, keyless):
        register(relay, tenant, "Vaulted")
    expiring = vault.create_key(soon, expires_in_days=10)
    current = vault.create_key(fine).version
    weekly_round(rt, [soon, fine, keyless], {}, datetime.now(UTC) - timedelta(hours=1))

    health = evaluate(collect(rt), rt.settings)
    rows = {t.tenant.tenant_id: t for t in health.tenants}
    assert (rows[soon].key_version, rows[soon].key_days_left) == (expiring.version, 10)
    assert (rows[fine].key_version, rows[fine].key_days_left) == (current, 365)
    found = {(p.tenant, p.rule, p.subject) for p in health.problems}
    assert found == {(soon, "key_expiring", expiring.version), (keyless, "key_missing", "")}
    assert health.key_store == f"Key Vault {kv.url}"
