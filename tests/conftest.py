"""Shared fixtures: one Azurite per test session, fresh names per test, a local key folder."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient
from azure.storage.queue import QueueClient

from devtools.azurite import Azurite
from devtools.keyvault_standin import KeyVaultStandIn
from devtools.postgres import LocalPostgres
from devtools.simulate import BlobWriter, DropVariant, SimulatedDrop, sample_layout_root, simulate_drop
from devtools.testtoken import test_token_factory
from devtools.tls import STARTED
from shared.config import Settings
from shared.keyfolder import KeyFolder
from shared.messages import decode_message
from shared.runtime import Runtime, use_credential_factory

# In-process code under test may meet VIVA_RELAY_TEST_TOKEN (as the CLI does): honour it for loopback stand-ins.
use_credential_factory(test_token_factory)

# Tests configure every command themselves: never the developer's ./local.settings.json from `make dev`.
os.environ["VIVA_RELAY_SETTINGS"] = "none"

#: Lines the fault-injection tests report (rows expected, after de-duplication, duplicates, lost).
FAULT_REPORTS: list[str] = []
#: Lines the simulated-fleet health test reports (injected, reported, false alarms, missed).
FLEET_REPORTS: list[str] = []
#: Where each list's lines are shown at the end of the run.
SUMMARY_SECTIONS = {"fault injection": FAULT_REPORTS, "fleet health": FLEET_REPORTS}
#: The lines gathered from every test's report, by section (in the process that prints the summary).
_SUMMARY: dict[str, list[str]] = {}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Carry the lines a test reported on its report: with ``-n``, tests run in worker processes."""
    report = yield
    if call.when == "teardown":
        for section, lines in SUMMARY_SECTIONS.items():
            report.user_properties.extend((section, line) for line in lines)
            del lines[:]
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Gather the reported lines, from this process or from a worker."""
    for section, line in report.user_properties:
        if section in SUMMARY_SECTIONS:
            _SUMMARY.setdefault(section, []).append(str(line))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Show the fault-injection and fleet counts at the end of every run, not only with -s."""
    for section in SUMMARY_SECTIONS:
        if _SUMMARY.get(section):
            terminalreporter.section(section)
            for line in _SUMMARY[section]:
                terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def standins_served_no_errors_of_their_own() -> Iterator[None]:
    """Every Key Vault / Data Factory stand-in a test started answered no 5xx that the test did not inject.

    A stand-in bug must never pass for an Azure outage that the code under test then "handles".
    """
    first = len(STARTED)
    yield
    started = STARTED[first:]
    del STARTED[first:]
    for standin in started:
        assert standin.uninjected_5xx == [], f"{type(standin).__name__} served 5xx of its own: {standin.uninjected_5xx}"


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """Azurite on free loopback ports for the whole session."""
    with Azurite() as instance:
        yield instance


def read_queue(queue: QueueClient) -> list[dict[str, Any]]:
    """Drain a queue and decode every message (any of the three encodings)."""
    out: list[dict[str, Any]] = []
    while True:
        batch = list(queue.receive_messages(messages_per_page=32, max_messages=32, visibility_timeout=60))
        if not batch:
            return out
        for m in batch:
            out.append(decode_message(m.content))
            queue.delete_message(m)


@dataclass
class Relay:
    """A configured Viva Relay against Azurite, with helpers to make drops and read results."""

    rt: Runtime
    env: dict[str, str]
    keys: KeyFolder
    landing: ContainerClient
    tmp: Path

    @property
    def settings(self) -> Settings:
        return self.rt.settings

    def new_tenant(self) -> str:
        tenant = str(uuid.uuid4())
        self.keys.create(tenant)
        return tenant

    def drop(
        self,
        tenant: str,
        *,
        rows: int | None = 300,
        variant: DropVariant | None = None,
        root: str | None = None,
        public_tenant: str | None = None,
        version: str | None = None,
        **kw: Any,
    ) -> tuple[SimulatedDrop, str]:
        """Simulate a drop into the landing container (sample layout); returns (drop, metadata path)."""
        from shared.keyfolder import key_version

        drop_root = root if root is not None else sample_layout_root(tenant)[0]
        public = self.keys.public_key(public_tenant or tenant)
        sim = simulate_drop(
            BlobWriter(self.landing, drop_root),
            tenant_id=tenant,
            public_key=public,
            key_version=version if version is not None else key_version(public),
            rows=rows,
            variant=variant,
            **kw,
        )
        return sim, sim.metadata_path

    def messages(self) -> list[dict[str, Any]]:
        return read_queue(self.rt.queue)

    def blob_names(self) -> list[str]:
        return sorted(b.name for b in self.landing.list_blobs())


def make_relay(azurite: Azurite, tmp: Path, **overrides: str) -> Relay:
    suffix = uuid.uuid4().hex[:10]
    env = {
        "LandingStorage": azurite.connection_string,
        "RelayStorage": azurite.connection_string,
        "LANDING_CONTAINER": f"landing-{suffix}",
        "DOWNSTREAM_QUEUE": f"rows-{suffix}",
        "LEDGER_TABLE": f"drops{suffix}",
        "TENANT_TABLE": f"tenants{suffix}",
        "RUN_TABLE": f"runs{suffix}",
        "KEY_SOURCE": "folder",
        "KEY_FOLDER": str(tmp / "keys"),
        "DOWNSTREAM_MESSAGE_ENCODING": "gzip-base64",
        # Ingest tests look at a drop after delivery; cleanup tests turn the immediate deletion on.
        "DELETE_AFTER_DELIVERY": "false",
    } | overrides
    rt = Runtime(Settings.from_env(env))
    landing = rt.landing_container()
    landing.create_container()
    return Relay(rt=rt, env=env, keys=KeyFolder(tmp / "keys"), landing=landing, tmp=tmp)


@pytest.fixture
def relay(azurite: Azurite, tmp_path: Path) -> Relay:
    """A fresh relay (own container, queue and tables) against the session's Azurite."""
    return make_relay(azurite, tmp_path)


@pytest.fixture
def kv() -> Iterator[KeyVaultStandIn]:
    """A Key Vault stand-in (small pages, so listing exercises paging); it must log no server error."""
    with KeyVaultStandIn(page_size=2) as standin:
        yield standin
    assert standin.server_errors == []


@pytest.fixture
def blob_service(azurite: Azurite) -> BlobServiceClient:
    return BlobServiceClient.from_connection_string(azurite.connection_string)


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    """One real PostgreSQL server (run as an unprivileged user, free loopback port) for the session."""
    with LocalPostgres() as server:
        yield server


@pytest.fixture
def consumer_db(postgres: LocalPostgres) -> str:
    """The connection string of a fresh, empty database on the session's server."""
    return postgres.new_database(f"t_{uuid.uuid4().hex[:12]}")
