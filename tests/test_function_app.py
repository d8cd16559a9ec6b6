"""Function indexing as the Functions host sees it (through azure.functions itself)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from azure.functions.timer import TimerRequest

import shared.runtime
from function_app import create_app
from tests.conftest import Relay


def functions_by_name() -> dict[str, Any]:
    return {str(f.get_function_name()): f for f in create_app().get_functions()}


def test_ingest_trigger_binding() -> None:
    fn = functions_by_name()["ingest_drop"]
    [binding] = json.loads(fn.get_function_json())["bindings"]
    assert binding["type"] == "blobTrigger"
    assert binding["direction"] == "IN"
    assert binding["source"] == "EventGrid"
    assert binding["connection"] == "LandingStorage"
    assert binding["path"] == "%LANDING_CONTAINER%/{droproot}/metadata/JobMetadata/Metadata.json"
    # The container part must be the app setting alone: one trigger watches one container.
    assert binding["path"].split("/", 1)[0] == "%LANDING_CONTAINER%"


def test_recheck_timer_binding() -> None:
    fn = functions_by_name()["recheck_drops"]
    [binding] = json.loads(fn.get_function_json())["bindings"]
    assert binding["type"] == "timerTrigger"
    assert binding["schedule"] == "%RECHECK_SCHEDULE%"
    assert binding["runOnStartup"] is False


def test_every_setting_in_a_binding_is_in_the_settings_example() -> None:
    import re
    from pathlib import Path

    values = json.loads((Path(__file__).parent.parent / "local.settings.json.example").read_text())["Values"]
    for fn in create_app().get_functions():
        for binding in json.loads(fn.get_function_json())["bindings"]:
            for setting in re.findall(r"%([A-Za-z0-9_]+)%", json.dumps(binding)):
                assert setting in values, f"{fn.get_function_name()} uses %{setting}% missing from the example"
            if "connection" in binding:
                assert binding["connection"] in values


def test_recheck_timer_runs_with_past_due(
    relay: Relay, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for key, value in relay.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(shared.runtime, "_runtime", None)
    tenant = relay.new_tenant()
    _, path = relay.drop(tenant, rows=5)
    body = relay.landing.download_blob(path).readall()
    relay.landing.upload_blob(path, b"", overwrite=True)
    from shared.ingest import ingest_metadata_blob

    assert ingest_metadata_blob(relay.rt, relay.landing.container_name, path).status == "waiting"
    relay.landing.upload_blob(path, body, overwrite=True)
    caplog.set_level(logging.INFO, logger="viva_relay")
    functions_by_name()["recheck_drops"].get_user_function()(TimerRequest(past_due=True))
    [record] = list(relay.rt.ledger.list(tenant=tenant))
    assert record.state == "delivered"
    assert "delivered" in caplog.text and "past_due=True" in caplog.text
