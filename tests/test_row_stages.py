"""Drops through ingest with the contract check and the opt-in transforms, into a real Azurite queue."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from devtools.azurite import Azurite
from devtools.clock import ShiftedClock
from devtools.keyvault_standin import KeyVaultStandIn
from devtools.simulate import generate_rows
from shared.config import Settings
from shared.contract import REPORT_CHAR_LIMIT
from shared.errors import ConfigError
from shared.ingest import ingest_metadata_blob
from shared.messages import decode_message
from shared.runtime import Runtime
from shared.transforms import Pseudonymiser
from tests.conftest import Relay, make_relay

PERSON_REPORT = "VivaInsightsDataset_PersonReport_v1"
SECRET = "a partner secret of more than thirty-two bytes, for tests only"
KEPT = ["PersonId", "MetricDate", "Collaboration hours", "IsActive", "Meeting hours"]


def rows_of(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in sorted((m for m in messages if m["type"] == "rows"), key=lambda m: m["seq"]):
        out.extend(m["rows"])
    return out


def ingest(relay: Relay, path: str, rt: Runtime | None = None) -> Any:
    return ingest_metadata_blob(rt or relay.rt, relay.landing.container_name, path)


def record_of(relay: Relay, tenant: str) -> Any:
    [record] = list(relay.rt.ledger.list(tenant=tenant))
    return record


def write_secret(relay: Relay, text: str = SECRET) -> None:
    folder = Path(relay.env["KEY_FOLDER"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "viva-relay-pseudonym.secret").write_text(text)


def test_every_drop_is_checked_and_the_report_is_stored_and_sent(relay: Relay) -> None:
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=80)  # Microsoft's sample shape: PersonId, weeks of 2024
    outcome = ingest(relay, path)
    assert outcome.status == "delivered"
    messages = relay.messages()
    [complete] = [m for m in messages if m["type"] == "complete"]
    schema = complete["schema"]
    assert schema["rows"] == 80 and schema["drift"] is True and schema["policy"] == "report"
    findings = schema["findings"]
    assert {"check": "renamed", "expected": "ObjectId", "seen": "PersonId", "rows": 80} in findings
    [window] = [f for f in findings if f["check"] == "out_of_window"]
    assert window["count"] == 80  # the sample's weeks are of 2024, the request window the last 14 days
    [extra] = [f for f in findings if f["check"] == "not_requested"]
    assert "Email hours" in extra["columns"]  # the simulator requests four columns and gets them all
    # Rows pass unchanged by default.
    assert rows_of(messages) == [json.loads(r) for r in generate_rows(80)]
    record = record_of(relay, tenant)
    assert record.schema_drift is True
    stored = record.schema_report
    assert json.loads(stored) == schema and len(stored) <= REPORT_CHAR_LIMIT
    assert json.loads(record.row_settings)["typed"] is False


def test_a_drop_that_fits_has_no_drift(relay: Relay) -> None:
    tenant = relay.new_tenant()
    from tests.test_contract import clean_rows

    rows = [json.dumps(r).encode() for r in clean_rows(people=3, weeks=("2099-01-01T00:00:00Z",))]
    _, path = relay.drop(tenant, rows=None, row_source=iter(rows))
    # The simulator's window is the last 14 days: say the drop asked for a window holding the rows.
    blob = relay.landing.get_blob_client(path)
    doc = json.loads(blob.download_blob().readall())
    doc.update(RequestStartDate="2098-12-25T00:00:00Z", RequestEndDate="2099-01-02T00:00:00Z", ColumnsRequested="")
    blob.upload_blob(json.dumps(doc).encode(), overwrite=True)
    assert ingest(relay, path).status == "delivered"
    [complete] = [m for m in relay.messages() if m["type"] == "complete"]
    assert complete["schema"]["findings"] == [] and complete["schema"]["drift"] is False
    assert record_of(relay, tenant).schema_drift is False


def test_fail_policy_fails_the_drop_with_code_schema_before_complete(azurite: Azurite, tmp_path: Path) -> None:
    relay = make_relay(azurite, tmp_path, SCHEMA_POLICY="fail")
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=50)
    outcome = ingest(relay, path)
    assert outcome.status == "failed" and outcome.code == "schema"
    messages = relay.messages()
    assert not [m for m in messages if m["type"] == "complete"]
    [failed] = [m for m in messages if m["type"] == "failed"]
    assert failed["code"] == "schema"
    record = record_of(relay, tenant)
    assert record.state == "failed" and record.reason_code == "schema"
    assert record.schema_drift is True and json.loads(record.schema_report)["policy"] == "fail"


def test_check_can_be_turned_off(azurite: Azurite, tmp_path: Path) -> None:
    relay = make_relay(azurite, tmp_path, SCHEMA_CHECK="false", SCHEMA_POLICY="fail")
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=20)
    assert ingest(relay, path).status == "delivered"
    [complete] = [m for m in relay.messages() if m["type"] == "complete"]
    assert "schema" not in complete and record_of(relay, tenant).schema_drift is None


def test_typed_rows(azurite: Azurite, tmp_path: Path) -> None:
    relay = make_relay(azurite, tmp_path, TYPED_ROWS="true")
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=40)
    assert ingest(relay, path).status == "delivered"
    rows = rows_of(relay.messages())
    originals = [json.loads(r) for r in generate_rows(40)]
    assert len(rows) == 40
    for got, original in zip(rows, originals, strict=True):
        assert list(got) == list(original)
        assert got["Collaboration hours"] == float(original["Collaboration hours"])
        assert isinstance(got["Collaboration hours"], int | float) and got["IsActive"] is True
        assert got["MetricDate"] == original["MetricDate"]  # already ISO-8601 UTC with Z
        assert got["FunctionType"] == original["FunctionType"]  # not in the contract: unchanged


def test_typed_value_that_cannot_be_converted_follows_the_policy(azurite: Azurite, tmp_path: Path) -> None:
    bad = [json.loads(r) for r in generate_rows(5)]
    bad[2]["Meeting hours"] = "n/a"
    lines = [json.dumps(r).encode() for r in bad]
    relay = make_relay(azurite, tmp_path, TYPED_ROWS="true")
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=None, row_source=iter(lines))
    assert ingest(relay, path).status == "delivered"
    messages = relay.messages()
    assert rows_of(messages)[2]["Meeting hours"] == "n/a"
    [complete] = [m for m in messages if m["type"] == "complete"]
    [miss] = [f for f in complete["schema"]["findings"] if f["check"] == "not_converted"]
    assert miss == {"check": "not_converted", "column": "Meeting hours", "count": 1, "examples": [{"row": 2}]}

    strict = make_relay(azurite, tmp_path / "strict", TYPED_ROWS="true", SCHEMA_POLICY="fail")
    tenant = strict.new_tenant()
    _, path = strict.drop(tenant, rows=None, row_source=iter(lines))
    outcome = ingest(strict, path)
    assert outcome.status == "failed" and outcome.code == "schema"


def test_row_columns_keeps_only_the_allowlist(azurite: Azurite, tmp_path: Path) -> None:
    relay = make_relay(azurite, tmp_path, ROW_COLUMNS=json.dumps({PERSON_REPORT: KEPT}))
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=60)
    assert ingest(relay, path).status == "delivered"
    rows = rows_of(relay.messages())
    originals = [json.loads(r) for r in generate_rows(60)]
    assert rows == [{k: o[k] for k in KEPT} for o in originals]


def test_pseudonymised_rows_hold_no_raw_identifier(azurite: Azurite, tmp_path: Path) -> None:
    relay = make_relay(azurite, tmp_path, PSEUDONYMISE="true")
    write_secret(relay)
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=90)
    assert ingest(relay, path).status == "delivered"
    raw = [m.content for m in relay.rt.queue.peek_messages(max_messages=32)]
    messages = [decode_message(c) for c in raw]
    originals = [json.loads(r) for r in generate_rows(90)]
    people = {o["PersonId"] for o in originals}
    text = "\n".join(json.dumps(m) for m in messages) + "\n".join(raw)
    assert not [p for p in people if p in text or p.upper() in text]
    rows = rows_of(messages)
    pseudonym = Pseudonymiser(SECRET.encode(), "")
    assert [r["PersonId"] for r in rows] == [pseudonym(o["PersonId"]) for o in originals]
    assert len({r["PersonId"] for r in rows}) == len(people)  # joins still work
    assert json.loads(record_of(relay, tenant).row_settings)["secret_version"].startswith("sha256:")


def test_pseudonyms_are_stable_across_tenants_and_weeks(azurite: Azurite, tmp_path: Path) -> None:
    relay = make_relay(azurite, tmp_path, PSEUDONYMISE="true")
    write_secret(relay)
    seen = []
    for _ in range(2):
        tenant = relay.new_tenant()
        _, path = relay.drop(tenant, rows=35)
        assert ingest(relay, path).status == "delivered"
        seen.append({r["PersonId"] for r in rows_of(relay.messages())})
    assert seen[0] == seen[1] and len(seen[0]) == 1


def test_all_transforms_together_and_after_a_resume(azurite: Azurite, tmp_path: Path) -> None:
    from shared.sinks import QueueSink

    settings = {
        "TYPED_ROWS": "true",
        "ROW_COLUMNS": json.dumps({PERSON_REPORT: KEPT}),
        "PSEUDONYMISE": "true",
        "DOWNSTREAM_MESSAGE_ENCODING": "json",
        "CHECKPOINT_EVERY_MESSAGES": "2",
    }
    relay = make_relay(azurite, tmp_path, **settings)
    write_secret(relay)
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=3000)
    original = QueueSink.put
    puts = 0

    def dies_after_5_puts(self: QueueSink, message: Any) -> None:
        nonlocal puts
        puts += 1
        # Puts complete asynchronously: die at the first put after a checkpoint is in the ledger, so the
        # next worker really resumes (not restarts).
        if puts > 5 and record_of(relay, tenant).checkpoint_seq >= 0:
            self.flush()
            raise KeyboardInterrupt  # the process dies mid-drop
        original(self, message)

    QueueSink.put = dies_after_5_puts  # type: ignore[method-assign]
    try:
        with pytest.raises(KeyboardInterrupt):
            ingest(relay, path)
    finally:
        QueueSink.put = original  # type: ignore[method-assign]
    record = record_of(relay, tenant)
    assert record.checkpoint_seq >= 0
    # The worker that resumes has every transform off, and its clock is past the dead attempt's lease
    # (no sleeping it out): the drop still packs as it started.
    after_lease = ShiftedClock(timedelta(seconds=relay.settings.drop_lease_seconds + 1))
    plain = Runtime(
        Settings.from_env(
            {k: v for k, v in relay.env.items() if k not in settings} | {"DOWNSTREAM_MESSAGE_ENCODING": "json"}
        ),
        clock=after_lease,
    )
    outcome = ingest(relay, path, plain)
    assert outcome.status == "delivered", outcome.reason
    assert record_of(relay, tenant).resumed_from_seq >= 0
    messages = relay.messages()
    unique = {m["seq"]: m for m in messages if m["type"] == "rows"}
    rows = [r for seq in sorted(unique) for r in unique[seq]["rows"]]
    originals = [json.loads(r) for r in generate_rows(3000)]
    pseudonym = Pseudonymiser(SECRET.encode(), "")
    assert len(rows) == 3000
    for got, o in zip(rows, originals, strict=True):
        assert list(got) == KEPT
        assert got["PersonId"] == pseudonym(o["PersonId"])
        assert got["Collaboration hours"] == float(o["Collaboration hours"]) and got["IsActive"] is True
    text = json.dumps(messages)
    assert not [o["PersonId"] for o in originals[::35] if o["PersonId"] in text]


def test_pseudonym_secret_from_key_vault_with_its_version_recorded(
    azurite: Azurite, tmp_path: Path, kv: KeyVaultStandIn
) -> None:
    relay = make_relay(azurite, tmp_path, PSEUDONYMISE="true", KEY_VAULT_URL=kv.url)
    version = kv.set_secret("viva-relay-pseudonym", SECRET)
    settings = Settings.from_env(relay.env | {"KEY_SOURCE": "keyvault"})
    rt = Runtime(settings, credential=kv.credential, keyvault_kwargs=kv.client_kwargs())
    tenant = relay.new_tenant()
    vault_key = kv.add_key(tenant, relay.keys.load(relay.keys.current_path(tenant)), exp=2_000_000_000)
    _, path = relay.drop(tenant, rows=35, version=vault_key)
    assert ingest(relay, path, rt).status == "delivered", record_of(relay, tenant).reason
    assert json.loads(record_of(relay, tenant).row_settings)["secret_version"] == version
    rows = rows_of(relay.messages())
    person = json.loads(next(generate_rows(1)))["PersonId"]
    assert {r["PersonId"] for r in rows} == {Pseudonymiser(SECRET.encode(), "")(person)}
    # Rotation: a new version is used by new drops; the recorded one stays readable for resumes.
    newer = kv.set_secret("viva-relay-pseudonym", SECRET + " rotated")
    assert rt.pseudonymiser(version).version == version
    fresh = Runtime(settings, credential=kv.credential, keyvault_kwargs=kv.client_kwargs())
    assert fresh.pseudonymiser().version == newer


def test_bad_settings_are_configuration_errors_at_start(relay: Relay, kv: KeyVaultStandIn) -> None:
    with pytest.raises(ConfigError, match="Frobnication"):
        Settings.from_env(relay.env | {"ROW_COLUMNS": json.dumps({PERSON_REPORT: ["PersonId", "Frobnication"]})})
    with pytest.raises(ConfigError, match="JSON object"):
        Settings.from_env(relay.env | {"ROW_COLUMNS": "PersonId,MetricDate"})
    with pytest.raises(ConfigError, match="SCHEMA_POLICY"):
        Settings.from_env(relay.env | {"SCHEMA_POLICY": "ignore"})
    # A missing secret stops the ingest before anything is read or sent (folder and Key Vault): the
    # drop waits with the configuration reason (the re-check delivers it once the secret exists).
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=5)
    missing = Runtime(Settings.from_env(relay.env | {"PSEUDONYMISE": "true"}))
    outcome = ingest(relay, path, missing)
    assert (outcome.status, outcome.code) == ("waiting", "config") and "secret" in outcome.reason
    [record] = list(relay.rt.ledger.list(tenant=tenant))
    assert record.state == "waiting" and str(record.reason).startswith("configuration: ")
    assert relay.messages() == []
    write_secret(relay)
    assert ingest(relay, path, missing).status == "delivered"
    vault = Settings.from_env(relay.env | {"PSEUDONYMISE": "true", "KEY_SOURCE": "keyvault", "KEY_VAULT_URL": kv.url})
    in_vault = Runtime(vault, credential=kv.credential, keyvault_kwargs=kv.client_kwargs())
    with pytest.raises(ConfigError, match="no secret"):
        in_vault.pseudonymiser()
    assert uuid.UUID(tenant)


def test_drops_list_flags_drift_and_show_prints_the_report(
    relay: Relay, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from viva_relay.cli.main import main

    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=12)
    assert ingest(relay, path).status == "delivered"
    drop_id = record_of(relay, tenant).drop_id
    for key, value in relay.env.items():
        monkeypatch.setenv(key, value)
    capsys.readouterr()
    assert main(["drops", "list"]) == 0
    out = capsys.readouterr().out
    [line] = [x for x in out.splitlines() if drop_id in x]
    assert " delivered " in line and "schema drift: " in line
    assert "renamed" in out[out.index(drop_id) :]  # a long reason folds onto the next lines, never cut
    assert main(["drops", "list", "--json"]) == 0
    [doc] = [d for d in json.loads(capsys.readouterr().out) if d["drop_id"] == drop_id]
    assert doc["schema_drift"] is True
    assert main(["drops", "show", drop_id]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["SchemaDrift"] is True and shown["SchemaReport"]["rows"] == 12
    renamed = {"check": "renamed", "expected": "ObjectId", "seen": "PersonId", "rows": 12}
    assert renamed in shown["SchemaReport"]["findings"]


def test_an_operator_accepts_a_drop_failed_for_drift_by_reprocessing_under_report(
    azurite: Azurite, tmp_path: Path
) -> None:
    from shared.reprocess import reprocess_drop

    strict = make_relay(azurite, tmp_path, SCHEMA_POLICY="fail")
    tenant = strict.new_tenant()
    _, path = strict.drop(tenant, rows=30)
    assert ingest(strict, path).code == "schema"
    drop_id = record_of(strict, tenant).drop_id
    lenient = Runtime(Settings.from_env(strict.env | {"SCHEMA_POLICY": "report"}))
    outcome = reprocess_drop(lenient, drop_id)
    assert outcome.status == "delivered", outcome.reason
    record = record_of(strict, tenant)
    assert json.loads(record.row_settings)["policy"] == "report" and record.schema_drift is True
    [complete] = [m for m in strict.messages() if m["type"] == "complete"]
    assert complete["schema"]["drift"] is True and complete["rows"] == 30
