"""The in-process CLI runner (tests/clirun.py) gives each call a fresh process's view and leaks nothing back."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from shared import runtime
from tests.clirun import run_cli, run_cli_bytes
from tests.conftest import Relay


def process_state() -> tuple[Any, ...]:
    """What the CLI changes process-wide: environment, directory, logging, the credential factory."""
    root = logging.getLogger()
    levels = [logging.getLogger(name).level for name in ("azure", "viva_relay")]
    return dict(os.environ), os.getcwd(), root.handlers[:], root.level, levels, runtime._credential_factory


def test_a_call_reads_its_own_directory_and_environment_and_leaves_the_process_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "_credential_factory", lambda env, target: None)  # to see any change
    # The settings file of the call's working directory holds the test token: the CLI installs its
    # development credential hook only if it read that file.
    (tmp_path / "local.settings.json").write_text('{"Values": {"VIVA_RELAY_TEST_TOKEN": "t"}}')
    env = {k: v for k, v in os.environ.items() if k not in ("VIVA_RELAY_SETTINGS", "RelayStorage")}
    before = process_state()
    done = run_cli("-vv", "drops", "list", env=env, cwd=tmp_path)
    assert done.returncode == 3 and done.stderr.startswith("viva-relay: configuration: "), done.stderr
    assert process_state() == before


def test_each_call_logs_to_its_own_stderr_once(relay: Relay) -> None:
    env = os.environ | relay.env
    calls = [run_cli_bytes("-vv", "drops", "list", env=env) for _ in range(2)]
    assert [c.returncode for c in calls] == [0, 0]
    # The SDK's request log of each call, in that call's stderr alone, once per request (no piled-up handlers).
    counts = [c.stderr.count(b"Request URL") for c in calls]
    assert counts[0] > 0 and counts == [counts[0]] * 2, counts
