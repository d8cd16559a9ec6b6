"""`make demo`: the whole weekly cycle once, on local stand-ins, with no Azure account.

Azurite, the Key Vault stand-in and the MGDC-like Data Factory stand-in (:mod:`devtools.localcloud`)
run in this process on free loopback ports. Each step below is one small function of a
:class:`Demo`; :data:`STEPS` runs them in order, and a new step is one more line at its end:

1. onboard a tenant: its RSA key in the (local) Key Vault and its row in the tenant registry;
2. the weekly timer's code (``start_pipeline_runs``) starts the tenant's pipeline run;
3. the run goes Queued → InProgress → Succeeded and its encrypted drop lands;
4. the blob trigger's code (``ingest_drop``) gets the Metadata.json event and ingests the drop;
5. the rows are in the downstream queue (read back and decoded);
6. the immediate cleanup pass deleted the drop's blobs; the follow timer records the run's drop;
7. ``viva-relay drops list`` and ``runs list`` show the result;
8. the reference consumer publishes the rows into PostgreSQL, and a partner's query reads them;
9. ``viva-relay status`` shows the fleet's health.

Stops everything it started and leaves nothing behind.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from devtools.azurite import Azurite
from devtools.localcloud import LocalCloud, app_function, ingest_function

ROWS = int(os.environ.get("DEMO_ROWS", "20000"))


@dataclass
class Demo:
    """What the steps share: the settings, the local cloud, and what earlier steps found."""

    settings: dict[str, str]
    cloud: LocalCloud
    work: Path
    tenant: str = field(default_factory=lambda: str(uuid.uuid4()))
    facts: dict[str, Any] = field(default_factory=dict)

    def cli(self, *args: str, json_out: bool = False) -> Any:
        """Run ``viva-relay ARGS`` with the demo's settings; SystemExit with its reason when it fails."""
        env = {**os.environ, **self.settings, "VIVA_RELAY_SETTINGS": "none"}
        done = subprocess.run(
            [sys.executable, "-m", "viva_relay", *args], env=env, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise SystemExit(f"viva-relay {' '.join(args[:2])} failed: {done.stderr.strip()}")
        return json.loads(done.stdout) if json_out else done.stdout

    @property
    def runtime(self) -> Any:
        """The process-wide runtime the functions use (built from the environment)."""
        from shared.runtime import get_runtime

        return get_runtime()


def say(label: str, text: str) -> None:
    """One line of the demo's report."""
    print(f"  {label:<9} {text}")


# -- the steps ------------------------------------------------------------------------------------
def onboard_tenant(demo: Demo) -> None:
    """A customer tenant: its key in Key Vault, its row in the tenant registry."""
    key = demo.cli("keys", "create", "--tenant", demo.tenant, json_out=True)
    say("key", f"{key['where']} (version {key['version']})")
    demo.cli(
        "tenants",
        "add",
        "--tenant",
        demo.tenant,
        "--name",
        "Contoso (demo)",
        "--consent-date",
        date.today().isoformat(),
    )
    say("tenant", f"{demo.tenant} registered")


def schedule_starts_run(demo: Demo) -> None:
    """The weekly timer's own code starts the tenant's pipeline run."""
    from azure.functions.timer import TimerRequest

    from shared.runs import run_ledger

    app_function("start_pipeline_runs")(TimerRequest())
    [record] = run_ledger(demo.runtime).list_runs(demo.tenant)
    demo.facts["run_id"] = record.run_id
    say("run", f"{record.run_id} started by the schedule timer ({record.status})")


def drop_lands(demo: Demo) -> None:
    """Data Factory runs the pipeline; its drop lands in the landing container, Metadata.json last."""
    run_id = demo.facts["run_id"]
    seen: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = demo.cloud.factory.runs[run_id].status
        if not seen or seen[-1] != status:
            seen.append(status)
        if status in ("Succeeded", "Failed", "Cancelled"):
            break
        time.sleep(0.05)
    run = demo.cloud.factory.runs[run_id]
    if run.status != "Succeeded":
        raise SystemExit(f"the pipeline run ended {run.status}: {run.message}")
    say("pipeline", " -> ".join(seen))
    container = demo.runtime.landing_container()
    blobs = [b for b in container.list_blobs(name_starts_with=f"{run_id}/")]
    metadata = next(b.name for b in blobs if b.name.endswith("Metadata.json"))
    demo.facts["metadata"] = metadata
    size = sum(int(b.size or 0) for b in blobs)
    say(
        "drop",
        f"{container.container_name}/{metadata.rsplit('/metadata/', 1)[0]} ({len(blobs)} blobs, {size / 1e6:.1f} MB)",
    )


def ingest_drop(demo: Demo) -> None:
    """The blob trigger's own code gets the Metadata.json event, as the Functions host delivers it."""
    from azure.functions.blob import InputStream

    rt = demo.runtime
    name = demo.facts["metadata"]
    body = rt.landing_container().download_blob(name).readall()
    started = time.perf_counter()
    ingest_function()(InputStream(data=body, name=f"{rt.settings.landing_container}/{name}"))
    wall = time.perf_counter() - started
    [record] = list(rt.ledger.list(tenant=demo.tenant))
    demo.facts["drop"] = record
    say("drop id", record.drop_id)
    state = record.state
    if state == "deleted":
        state = "delivered (then deleted from the landing storage by the immediate cleanup pass)"
    say("state", state)
    if record.state not in ("delivered", "deleted"):
        say("reason", str(record.reason))
        raise SystemExit(1)
    say("rows", f"{record.rows or 0:,} delivered of {record.rows_expected or 0:,} in Metadata.json")
    say("messages", f"{record.messages or 0:,} row messages + 1 completion ({record.encoding})")
    if record.schema_report:
        checks = sorted({f["check"] for f in json.loads(record.schema_report)["findings"]})
        drift = "drift: " + ", ".join(checks) if checks else "no drift"
        say("schema", f"{drift} (the simulated rows copy Microsoft's v1 sample shape; docs/contract.md)")
    say(
        "speed",
        f"{record.mbps} MB/s through decrypt+gunzip+validate+pack+queue ({wall:.2f} s wall, key unwrapped"
        f" in Key Vault with {record.algorithm})",
    )


def rows_reach_queue(demo: Demo) -> None:
    """The rows are in the downstream queue: the first message, decoded."""
    from shared.messages import decode_message

    peek = demo.runtime.queue.receive_messages(max_messages=1, visibility_timeout=1)
    first = decode_message(next(iter(peek)).content)
    print(f"\n  first message: seq {first['seq']}, {first['row_count']} rows, table {first['table']}")
    for row in first["rows"][:3]:
        keys = list(row)[:5]
        print(f"    {json.dumps({k: row[k] for k in keys}, ensure_ascii=False)}  (+{len(row) - len(keys)} more fields)")
    print()


def cleanup_and_follow(demo: Demo) -> None:
    """Cleanup deleted the delivered drop; the follow timer records that the run brought its drop."""
    from azure.functions.timer import TimerRequest

    from shared.runs import run_ledger

    rt = demo.runtime
    app_function("cleanup_drops")(TimerRequest())
    record = demo.facts["drop"]
    left = sum(1 for _ in rt.landing_container().list_blobs(name_starts_with=record.location.data_prefix))
    say("landing", f"{left} blobs left for this drop in {rt.settings.landing_container}")
    app_function("follow_pipeline_runs")(TimerRequest())
    run = run_ledger(rt).get(demo.tenant, demo.facts["run_id"])
    assert run is not None
    say("followed", f"run {run.status}, its drop {run.drop_state or '(not found)'}")


def show_lists(demo: Demo) -> None:
    """What an operator sees: ``viva-relay drops list`` and ``viva-relay runs list``."""
    for command in (("drops", "list", "--tenant", demo.tenant), ("runs", "list", "--tenant", demo.tenant)):
        print(f"\n  $ viva-relay {' '.join(command[:2])}")
        for line in demo.cli(*command).splitlines():
            print(f"    {line}")


def consume_into_postgres(demo: Demo) -> None:
    """The reference consumer drains the queue into a real PostgreSQL; a partner's query reads the rows."""
    from devtools.demo_consumer import consume_step

    env = {**os.environ, **demo.settings, "VIVA_RELAY_SETTINGS": "none"}
    if consume_step(env, demo.tenant) != 0:
        raise SystemExit("the consumer published no rows")


def show_status(demo: Demo) -> None:
    """Fleet health: ``viva-relay status`` over every tenant (exit 1 lists what needs action)."""
    from devtools.demo_status import status_step

    status_step({**os.environ, **demo.settings, "VIVA_RELAY_SETTINGS": "none"}, demo.tenant)


#: The weekly cycle, in order. Add a step by appending its function here.
STEPS: list[Callable[[Demo], None]] = [
    onboard_tenant,
    schedule_starts_run,
    drop_lands,
    ingest_drop,
    rows_reach_queue,
    cleanup_and_follow,
    show_lists,
    consume_into_postgres,
    show_status,
]


def main() -> int:
    """Run every step once; returns the exit code."""
    logging.basicConfig(level=logging.ERROR)  # azure.functions warns that no HTTP function exists
    print("Viva Relay demo: one week of the weekly cycle, on local stand-ins (no Azure account)\n")
    with (
        tempfile.TemporaryDirectory(prefix="viva-relay-demo-") as work,
        Azurite() as azurite,
        LocalCloud(azurite.connection_string, rows=ROWS, step_seconds=0.5, state_dir=Path(work)) as cloud,
    ):
        settings = cloud.settings()
        os.environ.update(settings)  # the functions read their settings from the environment
        demo = Demo(settings=settings, cloud=cloud, work=Path(work))
        say("local", f"Azurite :{azurite.blob_port}, Key Vault {cloud.vault.url}, Data Factory {cloud.factory.url}")
        for step in STEPS:
            step(demo)
    print("\n  Done. Everything started was stopped; nothing was written outside a temporary folder.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
