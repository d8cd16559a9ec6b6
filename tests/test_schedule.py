"""The weekly schedule: tenant registry, starting runs, following them, the timers and the CLI.

Storage is Azurite; Data Factory is the real ``DataFactoryManagementClient`` talking HTTPS to the
local stand-in, which records every request. Time moves through the ``now`` parameters, and
backoff delays are recorded instead of slept.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.functions.timer import TimerRequest

import shared.runtime
from devtools.azurite import Azurite
from devtools.clock import ManualClock
from devtools.datafactory_standin import DataFactoryStandIn
from shared.ingest import ingest_metadata_blob
from shared.runs import (
    ATTEMPTS,
    LOST,
    START_FAILED,
    RunLedger,
    follow_runs,
    pipeline_parameters,
    run_ledger,
    start_runs,
    tenant_registry,
)
from shared.runtime import Runtime
from shared.tenants import InvalidTenant, Tenant, TenantExists, TenantNotFound, TenantRegistry
from tests.conftest import Relay, make_relay
from viva_relay.cli.main import main

SUB, RG, FACTORY, PIPELINE = "11111111-2222-3333-4444-555555555555", "rg-relay", "adf-relay", "ExportO365DataEvents"
OTHER_SUB = "99999999-8888-7777-6666-555555555555"
API = {"api-version": "2018-06-01"}
# The SDK's own retries, kept small so that our retry layer is exercised and faults cost milliseconds.
SDK_RETRY: dict[str, Any] = {"retry_total": 1, "retry_backoff_factor": 0.01, "retry_backoff_max": 0.05}
MONDAY = datetime(2024, 5, 6, 6, 0, tzinfo=UTC)


def factory_path(sub: str = SUB, rg: str = RG, factory: str = FACTORY) -> str:
    return f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.DataFactory/factories/{factory}"


def create_run_path(pipeline: str = PIPELINE, **kw: str) -> str:
    return f"{factory_path(**kw)}/pipelines/{pipeline}/createRun"


@dataclass
class Schedule:
    """A relay on Azurite whose Data Factory client reaches the stand-in; backoff delays are recorded."""

    relay: Relay
    rt: Runtime
    adf: DataFactoryStandIn
    delays: list[float] = field(default_factory=list)

    @property
    def tenants(self) -> TenantRegistry:
        return tenant_registry(self.rt)

    @property
    def ledger(self) -> RunLedger:
        return run_ledger(self.rt)

    def add(self, name: str, **kw: Any) -> Tenant:
        tenant_id = kw.pop("tenant_id", None) or self.relay.new_tenant()
        return self.tenants.add(Tenant(tenant_id=tenant_id, display_name=name, **kw))

    def start(self, **kw: Any) -> dict[str, Any]:
        """start_runs; outcomes by tenant id."""
        return {o.tenant_id: o for o in start_runs(self.rt, sleep=self.delays.append, **kw)}

    def follow(self, **kw: Any) -> dict[str, Any]:
        """follow_runs; outcomes by run id."""
        return {o.run_id: o for o in follow_runs(self.rt, sleep=self.delays.append, **kw)}

    def create_run_bodies(self) -> list[Any]:
        return [r.body for r in self.adf.requests_matching("/createRun")]


@pytest.fixture
def adf() -> Iterator[DataFactoryStandIn]:
    with DataFactoryStandIn() as standin:
        yield standin


def factory_env(adf: DataFactoryStandIn) -> dict[str, str]:
    return {
        "DATA_FACTORY_SUBSCRIPTION_ID": SUB,
        "DATA_FACTORY_RESOURCE_GROUP": RG,
        "DATA_FACTORY_NAME": FACTORY,
        "DATA_FACTORY_PIPELINE": PIPELINE,
        "DATA_FACTORY_BASE_URL": adf.url,
        "RUN_NO_DROP_ALERT_HOURS": "24",
    }


@pytest.fixture
def sched(azurite: Azurite, tmp_path: Path, adf: DataFactoryStandIn) -> Schedule:
    relay = make_relay(azurite, tmp_path, **factory_env(adf))
    rt = Runtime(
        relay.rt.settings,
        credential=adf.credential,
        datafactory_kwargs={"connection_verify": adf.cert_path, **SDK_RETRY},
    )
    return Schedule(relay=relay, rt=rt, adf=adf)


# --------------------------------------------------------------------------------------------------
# Tenant registry
# --------------------------------------------------------------------------------------------------
def test_registry_stores_tenant_with_parameters_as_json_text(sched: Schedule) -> None:
    tenant_id = str(uuid.uuid4()).upper()
    stored = sched.add(
        "Contoso",
        tenant_id=tenant_id,
        factory_name="adf-contoso",
        parameters={"DefaultLookbackWindowDays": 28, "Region": "EUR"},
        include_directory=True,
        consent_date=date(2024, 1, 15),
    )
    assert stored.tenant_id == tenant_id.lower()

    raw = sched.rt.table(sched.relay.settings.tenant_table).get_entity("tenant", tenant_id.lower())
    assert json.loads(raw["Parameters"]) == {"DefaultLookbackWindowDays": 28, "Region": "EUR"}
    assert raw["Enabled"] is True and raw["IncludeDirectory"] is True and raw["ConsentDate"] == "2024-01-15"

    again = sched.tenants.require(tenant_id)
    assert again.parameters == {"DefaultLookbackWindowDays": 28, "Region": "EUR"}
    assert again.factory_name == "adf-contoso" and again.consent_expires() == date(2024, 7, 13)
    with pytest.raises(TenantExists):
        sched.add("Contoso again", tenant_id=tenant_id)

    sched.tenants.disable(tenant_id, "contract paused")
    assert [t.enabled for t in sched.tenants.list()] == [False]
    assert list(sched.tenants.list(enabled_only=True)) == []
    assert sched.tenants.enable(tenant_id).enabled
    sched.tenants.remove(tenant_id)
    assert sched.tenants.get(tenant_id) is None
    with pytest.raises(TenantNotFound):
        sched.tenants.remove(tenant_id)


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"tenant_id": "not-a-guid"}, "not a tenant id"),
        ({"parameters": {"TenantId": "x"}}, "set by Viva Relay"),
        ({"parameters": {"bad name": 1}}, "not a valid pipeline parameter name"),
        ({"factory_subscription_id": "sub"}, "not a subscription id"),
        ({"factory_name": "bad/name"}, "not a valid factory name"),
    ],
)
def test_registry_refuses_bad_registrations(sched: Schedule, fields: dict[str, Any], why: str) -> None:
    tenant = Tenant(**({"tenant_id": str(uuid.uuid4()), "display_name": "x"} | fields))
    with pytest.raises(InvalidTenant, match=why):
        sched.tenants.add(tenant)
    assert list(sched.tenants.list()) == []


# --------------------------------------------------------------------------------------------------
# Starting runs
# --------------------------------------------------------------------------------------------------
def test_start_runs_posts_create_run_per_tenant_with_exact_path_and_parameters(sched: Schedule) -> None:
    plain = sched.add("Plain")
    custom = sched.add(
        "Custom",
        factory_subscription_id=OTHER_SUB,
        factory_resource_group="rg-eu",
        factory_name="adf-eu",
        pipeline="ExportEU",
        parameters={"DefaultLookbackWindowDays": 28, "AggregationType": "Day"},
        include_directory=True,
    )

    outcomes = sched.start(now=MONDAY)

    assert {t: o.status for t, o in outcomes.items()} == {plain.tenant_id: "started", custom.tenant_id: "started"}
    creates = sched.adf.requests_matching("/createRun")
    assert len(creates) == 2 and all(r.method == "POST" and r.query == API for r in creates)
    by_path = {r.path: r.body for r in creates}
    assert by_path == {
        create_run_path(): {
            "TenantId": plain.tenant_id,
            "RequestStartDate": "2024-04-22",
            "RequestEndDate": "2024-05-06",
            "AggregationType": "Week",
            "IncludeDirectory": False,
        },
        create_run_path("ExportEU", sub=OTHER_SUB, rg="rg-eu", factory="adf-eu"): {
            "TenantId": custom.tenant_id,
            "RequestStartDate": "2024-04-08",
            "RequestEndDate": "2024-05-06",
            "AggregationType": "Day",
            "IncludeDirectory": True,
            "DefaultLookbackWindowDays": 28,
        },
    }
    assert sched.adf.credential.scopes_requested == ["https://management.azure.com/.default"]

    for tenant in (plain, custom):
        [record] = sched.ledger.list_runs(tenant.tenant_id)
        run_id = outcomes[tenant.tenant_id].run_id
        assert record.run_id == run_id and run_id in sched.adf.runs
        assert record.status == "Queued" and record.started_at == MONDAY
        assert record.watch is True and record.trigger == "schedule"
        assert json.loads(str(record.parameters)) == sched.adf.runs[run_id].parameters
    assert sched.ledger.list_runs(custom.tenant_id)[0].factory.factory_name == "adf-eu"
    assert sched.delays == []


def test_window_follows_the_sample_pipeline_and_a_backfill_overrides_it() -> None:
    tenant = Tenant(tenant_id=str(uuid.uuid4()), display_name="x")
    late_sunday = datetime(2024, 5, 5, 23, 59, tzinfo=UTC)
    params = pipeline_parameters(tenant, late_sunday)
    assert (params["RequestStartDate"], params["RequestEndDate"]) == ("2024-04-21", "2024-05-05")
    backfill = pipeline_parameters(tenant, MONDAY, start_date=date(2024, 1, 1), end_date=date(2024, 3, 31))
    assert (backfill["RequestStartDate"], backfill["RequestEndDate"]) == ("2024-01-01", "2024-03-31")
    with pytest.raises(Exception, match="is after RequestEndDate"):
        pipeline_parameters(tenant, MONDAY, start_date=date(2024, 6, 1))


def test_run_in_progress_is_not_started_again(sched: Schedule) -> None:
    tenant = sched.add("Busy")
    first = sched.start(now=MONDAY)[tenant.tenant_id]
    sched.adf.set_run_status(first.run_id, "InProgress")

    again = sched.start(now=MONDAY + timedelta(hours=1))[tenant.tenant_id]

    assert (again.status, again.run_id) == ("skipped", first.run_id)
    assert "still InProgress" in again.message
    assert len(sched.adf.requests_matching("/createRun")) == 1
    [look] = sched.adf.requests_matching("/pipelineruns/")
    assert (look.method, look.path, look.query) == ("GET", f"{factory_path()}/pipelineruns/{first.run_id}", API)
    assert sched.ledger.get(tenant.tenant_id, first.run_id).status == "InProgress"  # type: ignore[union-attr]

    # Once Data Factory says it ended, the next schedule starts a new run.
    sched.adf.set_run_status(first.run_id, "Succeeded")
    third = sched.start(now=MONDAY + timedelta(days=7))[tenant.tenant_id]
    assert third.status == "started" and third.run_id != first.run_id
    assert [r.status for r in sched.ledger.list_runs(tenant.tenant_id)] == ["Queued", "Succeeded"]


def test_throttled_create_run_is_retried_until_it_succeeds(sched: Schedule) -> None:
    tenant = sched.add("Throttled")
    # Three 429s (Retry-After: 0): the SDK absorbs one retry, our backoff layer the rest.
    sched.adf.fail_next(3, 429, path_contains="/createRun")

    outcome = sched.start(now=MONDAY)[tenant.tenant_id]

    assert outcome.status == "started"
    assert [r.path for r in sched.adf.requests] == [create_run_path()] * 4
    assert all(body["TenantId"] == tenant.tenant_id for body in sched.create_run_bodies())
    assert len(sched.delays) == 1  # one backoff of ours between the SDK's exhausted attempts
    assert list(sched.adf.runs) == [outcome.run_id]
    assert [r.run_id for r in sched.ledger.list_runs(tenant.tenant_id)] == [outcome.run_id]


def test_server_error_is_retried_after_checking_no_run_was_created(sched: Schedule) -> None:
    tenant = sched.add("Flaky")
    sched.adf.fail_next(2, 500, path_contains="/createRun")

    outcome = sched.start(now=MONDAY)[tenant.tenant_id]

    assert outcome.status == "started" and outcome.message == ""
    paths = [r.path for r in sched.adf.requests]
    assert paths == [create_run_path(), create_run_path(), f"{factory_path()}/queryPipelineRuns", create_run_path()]
    query = sched.adf.requests[2].body
    assert query["filters"] == [{"operand": "PipelineName", "operator": "Equals", "values": [PIPELINE]}]
    assert list(sched.adf.runs) == [outcome.run_id] and len(sched.delays) == 1


def test_lost_answer_adopts_the_created_run_instead_of_starting_a_second(sched: Schedule) -> None:
    tenant = sched.add("Lost answer")
    params = pipeline_parameters(tenant, MONDAY)
    # The first attempt's run exists in Data Factory although its caller only saw 500s.
    client = sched.rt.datafactory(SUB)
    created = client.pipelines.create_run(RG, FACTORY, PIPELINE, parameters=params).run_id
    sched.adf.requests.clear()
    sched.adf.fail_next(2, 500, path_contains="/createRun")

    outcome = sched.start(now=MONDAY)[tenant.tenant_id]

    assert (outcome.status, outcome.run_id) == ("started", created)
    assert "adopted" in outcome.message
    assert [r.path.rsplit("/", 1)[-1] for r in sched.adf.requests] == ["createRun", "createRun", "queryPipelineRuns"]
    assert list(sched.adf.runs) == [created]
    assert [r.run_id for r in sched.ledger.list_runs(tenant.tenant_id)] == [created]


def test_one_tenant_failing_never_stops_the_others(sched: Schedule, caplog: pytest.LogCaptureFixture) -> None:
    good_a, bad, good_b = sched.add("Good A"), sched.add("No consent"), sched.add("Good B")
    sched.adf.fail_pipeline_params({"TenantId": bad.tenant_id}, 400, "BadRequest", "Office365 consent missing")
    caplog.set_level(logging.ERROR, logger="viva_relay")

    outcomes = sched.start(now=MONDAY)

    assert {t: o.status for t, o in outcomes.items()} == {
        good_a.tenant_id: "started",
        bad.tenant_id: "failed",
        good_b.tenant_id: "started",
    }
    assert "HTTP 400 BadRequest: Office365 consent missing" in outcomes[bad.tenant_id].message
    bodies = sched.create_run_bodies()
    assert sorted(b["TenantId"] for b in bodies) == sorted([good_a.tenant_id, bad.tenant_id, good_b.tenant_id])
    assert sched.delays == []  # a 400 is not retried
    [failed] = sched.ledger.list_runs(bad.tenant_id)
    assert failed.status == START_FAILED and failed.run_id == outcomes[bad.tenant_id].run_id
    assert "Office365 consent missing" in failed.message and failed.watch is False
    assert any(bad.tenant_id in r.getMessage() and "NOT started" in r.getMessage() for r in caplog.records)
    for good in (good_a, good_b):
        [record] = sched.ledger.list_runs(good.tenant_id)
        assert record.status == "Queued" and record.run_id in sched.adf.runs


def test_factory_outage_fails_only_its_tenants_after_backoff(sched: Schedule) -> None:
    healthy = sched.add("Healthy")
    down = sched.add("Down", factory_name="adf-down")
    sched.adf.fail_next(100, 503, path_contains="/factories/adf-down/")

    outcomes = sched.start(now=MONDAY)

    assert outcomes[healthy.tenant_id].status == "started"
    assert outcomes[down.tenant_id].status == "failed"
    assert "HTTP 503" in outcomes[down.tenant_id].message
    # Each of our attempts is the SDK's two tries, with a backoff between attempts. After the first
    # 503s nobody knows whether a run was created, so later attempts look for one before creating.
    down_calls = [r.path.rsplit("/", 1)[-1] for r in sched.adf.requests_matching("/factories/adf-down/")]
    assert down_calls == ["createRun"] * 2 + ["queryPipelineRuns"] * 2 * (ATTEMPTS - 1)
    assert len(sched.delays) == ATTEMPTS - 1
    assert [r.status for r in sched.ledger.list_runs(down.tenant_id)] == [START_FAILED]


def test_tenant_without_a_factory_gets_a_clear_error(azurite: Azurite, tmp_path: Path, adf: DataFactoryStandIn) -> None:
    env = factory_env(adf) | {"DATA_FACTORY_NAME": ""}
    relay = make_relay(azurite, tmp_path, **env)
    rt = Runtime(relay.rt.settings, credential=adf.credential, datafactory_kwargs={"connection_verify": adf.cert_path})
    tenant = tenant_registry(rt).add(Tenant(tenant_id=str(uuid.uuid4()), display_name="Nowhere"))

    [outcome] = start_runs(rt, now=MONDAY)

    assert outcome.status == "failed" and "DATA_FACTORY_NAME (or tenants add --factory-name)" in outcome.message
    assert adf.requests == []
    assert [r.status for r in run_ledger(rt).list_runs(tenant.tenant_id)] == [START_FAILED]


def test_disabled_tenants_are_skipped(sched: Schedule) -> None:
    active, paused = sched.add("Active"), sched.add("Paused")
    sched.tenants.disable(paused.tenant_id, "contract paused")

    outcomes = sched.start(now=MONDAY)
    manual = sched.start(tenant=paused.tenant_id, now=MONDAY)

    assert outcomes[active.tenant_id].status == "started"
    assert outcomes[paused.tenant_id].status == "skipped"
    assert "disabled: contract paused" in outcomes[paused.tenant_id].message
    assert manual[paused.tenant_id].status == "skipped"
    assert [b["TenantId"] for b in sched.create_run_bodies()] == [active.tenant_id]
    assert sched.ledger.list_runs(paused.tenant_id) == []
    with pytest.raises(TenantNotFound):
        sched.start(tenant=str(uuid.uuid4()))


# --------------------------------------------------------------------------------------------------
# Following runs
# --------------------------------------------------------------------------------------------------
def test_follow_records_succeeded_failed_and_cancelled_with_messages(
    sched: Schedule, caplog: pytest.LogCaptureFixture
) -> None:
    ok, broken, stopped = sched.add("OK"), sched.add("Broken"), sched.add("Stopped")
    runs = {t: o.run_id for t, o in sched.start(now=MONDAY).items()}
    failure = "Operation on target CopyVivaInsights failed: ErrorCode=UserErrorOffice365DataLoaderError"
    sched.adf.script_statuses(runs[ok.tenant_id], ["InProgress", "Succeeded"])
    sched.adf.script_statuses(runs[broken.tenant_id], ["InProgress", ("Failed", failure)])
    sched.adf.script_statuses(runs[stopped.tenant_id], ["Canceling", ("Cancelled", "Cancelled by an operator")])
    caplog.set_level(logging.INFO, logger="viva_relay")

    first = sched.follow()
    assert {first[r].status for r in runs.values()} == {"InProgress", "Canceling"}
    assert {first[r].event for r in runs.values()} == {"progress"}

    second = sched.follow()
    assert second[runs[ok.tenant_id]].event == "succeeded"
    assert (second[runs[broken.tenant_id]].event, second[runs[broken.tenant_id]].message) == ("failed", failure)
    assert second[runs[stopped.tenant_id]].event == "cancelled"

    gets = sched.adf.requests_matching("/pipelineruns/")
    assert {(r.method, r.path) for r in gets} == {
        ("GET", f"{factory_path()}/pipelineruns/{run}") for run in runs.values()
    }
    assert all(r.query == API for r in gets) and len(gets) == 6

    ledger = sched.ledger
    succeeded = ledger.get(ok.tenant_id, runs[ok.tenant_id])
    failed = ledger.get(broken.tenant_id, runs[broken.tenant_id])
    cancelled = ledger.get(stopped.tenant_id, runs[stopped.tenant_id])
    assert succeeded and failed and cancelled
    assert (succeeded.status, succeeded.watch) == ("Succeeded", True)  # still waiting for its drop
    assert (failed.status, failed.message, failed.watch) == ("Failed", failure, False)
    assert (cancelled.status, cancelled.message, cancelled.watch) == (
        "Cancelled",
        "Cancelled by an operator",
        False,
    )
    for record in (succeeded, failed, cancelled):
        assert record.run_end is not None and record.run_start is not None
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and r.name == "viva_relay"]
    assert errors == [f"pipeline run {runs[broken.tenant_id]} for tenant {broken.tenant_id} (Broken) FAILED: {failure}"]

    # Ended runs are not polled again.
    third = sched.follow()
    assert list(third) == [runs[ok.tenant_id]] and len(sched.adf.requests_matching("/pipelineruns/")) == 6


def test_succeeded_run_without_a_drop_is_flagged_after_the_alert_time(
    sched: Schedule, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = sched.add("Silent")
    run_id = sched.start()[tenant.tenant_id].run_id
    sched.adf.set_run_status(run_id, "Succeeded")
    caplog.set_level(logging.ERROR, logger="viva_relay")
    ended = datetime.now(UTC)

    soon = sched.follow(now=ended + timedelta(hours=23))[run_id]
    assert (soon.status, soon.event) == ("Succeeded", "succeeded") and "no drop yet" in soon.message
    assert sched.ledger.get(tenant.tenant_id, run_id).no_drop_alert is False  # type: ignore[union-attr]

    late = sched.follow(now=ended + timedelta(hours=25))[run_id]
    assert late.event == "no_drop_alert"
    record = sched.ledger.get(tenant.tenant_id, run_id)
    assert record is not None and record.no_drop_alert is True and record.watch is False
    assert any(run_id in r.getMessage() and "no Metadata.json" in r.getMessage() for r in caplog.records)
    assert sched.follow(now=ended + timedelta(hours=26)) == {}


def test_succeeded_run_is_matched_to_its_drop_through_the_drop_ledger(sched: Schedule) -> None:
    tenant = sched.add("Delivered")
    run_id = sched.start()[tenant.tenant_id].run_id
    sched.adf.set_run_status(run_id, "Succeeded")
    # The pipeline writes <RunId>/VivaInsights/<tenant id>/ in the landing container; the ingest
    # function records the drop with that RunId.
    _, metadata_path = sched.relay.drop(tenant.tenant_id, rows=20, root=f"{run_id}/VivaInsights/{tenant.tenant_id}")
    ingest = ingest_metadata_blob(sched.relay.rt, sched.relay.landing.container_name, metadata_path)
    assert ingest.status == "delivered"

    outcome = sched.follow(now=datetime.now(UTC) + timedelta(hours=48))[run_id]

    assert outcome.event == "succeeded" and "is delivered" in outcome.message
    record = sched.ledger.get(tenant.tenant_id, run_id)
    assert record is not None
    assert (record.drop_id, record.drop_state) == (ingest.drop_id, "delivered")
    assert record.no_drop_alert is False and record.watch is False


def test_run_unknown_to_data_factory_is_recorded_as_lost(sched: Schedule) -> None:
    tenant = sched.add("Purged")
    run_id = sched.start()[tenant.tenant_id].run_id
    del sched.adf.runs[run_id]

    outcome = sched.follow()[run_id]

    assert (outcome.status, outcome.event) == (LOST, "lost")
    record = sched.ledger.get(tenant.tenant_id, run_id)
    assert record is not None and record.status == LOST and "does not know" in record.message


def test_follow_keeps_watching_a_run_it_could_not_check(sched: Schedule) -> None:
    tenant = sched.add("Unreachable")
    run_id = sched.start()[tenant.tenant_id].run_id
    sched.adf.set_available(False)

    outcome = sched.follow()[run_id]

    assert outcome.event == "error" and "HTTP 503" in outcome.message
    sched.adf.set_available(True)
    sched.adf.set_run_status(run_id, "Succeeded")
    assert sched.follow()[run_id].status == "Succeeded"


# --------------------------------------------------------------------------------------------------
# The timers, as the Functions host indexes and calls them
# --------------------------------------------------------------------------------------------------
def test_both_timers_are_indexed_with_their_schedule_settings() -> None:
    from function_app import create_app

    functions = {f.get_function_name(): f for f in create_app().get_functions()}
    for name, schedule in (
        ("start_pipeline_runs", "%PIPELINE_SCHEDULE%"),
        ("follow_pipeline_runs", "%RUN_POLL_SCHEDULE%"),
    ):
        [binding] = json.loads(functions[name].get_function_json())["bindings"]
        assert binding == {
            "direction": "IN",
            "type": "timerTrigger",
            "name": "timer",
            "schedule": schedule,
            "runOnStartup": False,
            "useMonitor": True,
        }


def test_timer_functions_start_and_follow_runs_even_when_past_due(
    sched: Schedule, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from function_app import create_app

    tenant = sched.add("Timer")
    monkeypatch.setattr(shared.runtime, "_runtime", sched.rt)  # what get_runtime() hands the functions
    functions = {f.get_function_name(): f.get_user_function() for f in create_app().get_functions()}
    caplog.set_level(logging.INFO, logger="viva_relay")

    functions["start_pipeline_runs"](TimerRequest(past_due=True))

    [record] = sched.ledger.list_runs(tenant.tenant_id)
    assert record.status == "Queued" and record.run_id in sched.adf.runs
    assert len(sched.adf.requests_matching("/createRun")) == 1  # once, however many schedules were missed
    assert any("past due" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)

    sched.adf.set_run_status(record.run_id, "Failed", "Copy activity failed")
    functions["follow_pipeline_runs"](TimerRequest(past_due=True))
    followed = sched.ledger.get(tenant.tenant_id, record.run_id)
    assert followed is not None and (followed.status, followed.message) == ("Failed", "Copy activity failed")


# --------------------------------------------------------------------------------------------------
# The CLI
# --------------------------------------------------------------------------------------------------
def test_tenants_cli_adds_lists_shows_disables_and_removes(
    sched: Schedule, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key, value in sched.relay.env.items():
        monkeypatch.setenv(key, value)
    tenant_id = str(uuid.uuid4())
    add = ["tenants", "add", "--tenant", tenant_id, "--name", "Fabrikam", "--factory-name", "adf-fab"]
    add += ["--param", "DefaultLookbackWindowDays=28", "--param", "Note=weekly run", "--include-directory"]
    add += ["--consent-date", "2024-03-01"]

    assert main(add) == 0
    stored = sched.tenants.require(tenant_id)
    assert stored.parameters == {"DefaultLookbackWindowDays": 28, "Note": "weekly run"}
    assert stored.include_directory and stored.consent_date == date(2024, 3, 1) and stored.factory_name == "adf-fab"
    assert main(add) == 1 and "already registered" in capsys.readouterr().err

    assert main(["tenants", "list"]) == 0
    table = capsys.readouterr().out
    assert "Fabrikam" in table and "adf-fab" in table and "2024-08-28" in table

    assert main(["tenants", "disable", "--tenant", tenant_id, "--reason", "on hold"]) == 0
    assert "disabled" in capsys.readouterr().out
    assert main(["tenants", "show", "--tenant", tenant_id]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["enabled"], shown["disabled_reason"]) == (False, "on hold")
    assert main(["tenants", "enable", "--tenant", tenant_id]) == 0
    assert sched.tenants.require(tenant_id).enabled

    assert main(["tenants", "remove", "--tenant", tenant_id]) == 0
    assert sched.tenants.get(tenant_id) is None
    capsys.readouterr()
    assert main(["tenants", "show", "--tenant", tenant_id]) == 1
    assert "not registered" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["tenants", "add", "--tenant", "nope", "--name", "x"])
    assert usage.value.code == 2


def test_runs_cli_start_and_follow_reach_the_stand_in_from_a_subprocess(sched: Schedule) -> None:
    tenant = sched.add("Subprocess")
    env = {k: v for k, v in os.environ.items() if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
    env |= sched.relay.env | factory_env(sched.adf)
    env |= {"REQUESTS_CA_BUNDLE": sched.adf.cert_path, "VIVA_RELAY_TEST_TOKEN": sched.adf.credential.token}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "viva_relay", *args],
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    started = cli("runs", "start", "--tenant", tenant.tenant_id, "--start-date", "2024-01-01", "--json")
    assert started.returncode == 0, started.stderr
    outcome = json.loads(started.stdout)
    assert outcome["status"] == "started" and outcome["run_id"] in sched.adf.runs
    [create] = sched.adf.requests_matching("/createRun")
    assert create.path == create_run_path() and create.body["RequestStartDate"] == "2024-01-01"
    [record] = sched.ledger.list_runs(tenant.tenant_id)
    assert record.trigger == "manual"

    sched.adf.set_run_status(outcome["run_id"], "Failed", "Linked service Office365 failed")
    followed = cli("runs", "follow", "--json")
    assert followed.returncode == 1, followed.stderr  # a failed run is worth a non-zero exit
    assert json.loads(followed.stdout) == {
        "tenant_id": tenant.tenant_id,
        "run_id": outcome["run_id"],
        "status": "Failed",
        "event": "failed",
        "message": "Linked service Office365 failed",
    }


def test_runs_cli_list_and_show(
    sched: Schedule, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tenant = sched.add("Listed")
    run_id = sched.start(now=MONDAY)[tenant.tenant_id].run_id
    for key, value in sched.relay.env.items():
        monkeypatch.setenv(key, value)

    assert main(["runs", "list", "--tenant", tenant.tenant_id]) == 0
    out = capsys.readouterr().out
    assert run_id in out and "Queued" in out and "2024-05-06T06:00:00" in out

    assert main(["runs", "show", run_id]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["run_id"] == run_id and shown["status"] == "Queued" and shown["drops"] == []
    assert shown["parameters"]["RequestEndDate"] == "2024-05-06"

    assert main(["runs", "show", "no-such-run"]) == 1
    assert "no run no-such-run" in capsys.readouterr().err


def test_test_token_is_refused_for_a_real_endpoint(
    sched: Schedule, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key, value in sched.relay.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("VIVA_RELAY_TEST_TOKEN", "anything")
    monkeypatch.setenv("DATA_FACTORY_BASE_URL", "https://management.azure.com")

    assert main(["runs", "start"]) == 3
    assert "for local stand-ins only" in capsys.readouterr().err
    assert sched.adf.requests == []


def test_start_and_follow_take_their_time_from_the_runtime_clock(sched: Schedule) -> None:
    clock = ManualClock(datetime.now(UTC))
    sched.rt.clock = clock
    tenant = sched.add("Clocked")
    assert tenant.added_at == tenant.updated_at == clock()  # the registry asks the same clock
    run_id = sched.start()[tenant.tenant_id].run_id
    record = sched.ledger.get(tenant.tenant_id, run_id)
    assert record is not None and record.started_at == clock()
    sched.adf.set_run_status(run_id, "Succeeded")

    assert sched.follow()[run_id].event == "succeeded"  # no drop yet, well inside the alert time
    assert sched.ledger.get(tenant.tenant_id, run_id).last_checked_at == clock()  # type: ignore[union-attr]
    clock.advance(hours=25)  # instead of waiting a day
    assert sched.follow()[run_id].event == "no_drop_alert"
