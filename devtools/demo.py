"""`make demo`: one drop end to end on the local defaults, no Azure account needed.

Starts Azurite on free loopback ports, creates a tenant key in a local key folder, simulates a drop
into the landing container with `viva-relay drop simulate`, delivers the Metadata.json event to the
ingest function's own code (as the Functions host would), then reads the downstream queue back.
Stops everything it started.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from devtools.azurite import Azurite

ROWS = int(os.environ.get("DEMO_ROWS", "20000"))


def _cli(env: dict[str, str], *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "viva_relay", *args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"viva-relay {' '.join(args[:2])} failed: {done.stderr.strip()}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _short(row: dict[str, Any]) -> str:
    keys = list(row)[:5]
    return json.dumps({k: row[k] for k in keys}, ensure_ascii=False) + f"  (+{len(row) - len(keys)} more fields)"


def main() -> int:
    """Run the demo; returns the exit code."""
    work = Path(tempfile.mkdtemp(prefix="viva-relay-demo-"))
    tenant = str(uuid.uuid4())
    print(f"Viva Relay demo: one simulated Viva Insights drop for tenant {tenant}\n")
    with Azurite() as azurite:
        print(f"  Azurite   blob :{azurite.blob_port}  queue :{azurite.queue_port}  table :{azurite.table_port}")
        settings = json.loads((Path(__file__).parent.parent / "local.settings.json.example").read_text())["Values"]
        env = {**os.environ, **settings}
        env.update(
            {
                "AzureWebJobsStorage": azurite.connection_string,
                "LandingStorage": azurite.connection_string,
                "RelayStorage": azurite.connection_string,
                "KEY_SOURCE": "folder",
                "KEY_FOLDER": str(work / "keys"),
            }
        )
        key = _cli(env, "keys", "create", "--tenant", tenant)
        print(f"  key       {key['where']} (version {key['version']})")
        sim = _cli(
            env, "drop", "simulate", "--tenant", tenant, "--rows", str(ROWS), "--container", env["LANDING_CONTAINER"]
        )
        print(
            f"  drop      {sim['where']}  ({sim['rows']:,} rows, {sim['plaintext_bytes'] / 1e6:.1f} MB "
            f"uncompressed, {sim['ciphertext_bytes'] / 1e6:.1f} MB encrypted)"
        )

        # Deliver the Metadata.json event to the function itself, as the host does.
        os.environ.update(env)
        from azure.functions.blob import InputStream

        import function_app
        from shared.messages import decode_message
        from shared.runtime import get_runtime

        rt = get_runtime()
        blob = sim["metadata"]
        body = rt.landing_container().download_blob(blob).readall()
        logging.getLogger().setLevel(logging.ERROR)  # azure.functions warns that no HTTP function exists
        ingest = next(f for f in function_app.app.get_functions() if f.get_function_name() == "ingest_drop")
        started = time.perf_counter()
        ingest.get_user_function()(InputStream(data=body, name=f"{rt.settings.landing_container}/{blob}"))
        wall = time.perf_counter() - started

        [record] = [r for r in rt.ledger.list(tenant=tenant)]
        p = record.props
        print(f"\n  drop id   {record.drop_id}")
        state = record.state
        if state == "deleted":
            state = "delivered (then deleted from the landing storage by the immediate cleanup pass)"
        print(f"  state     {state}")
        left = sum(1 for _ in rt.landing_container().list_blobs(name_starts_with=record.location.data_prefix))
        print(f"  landing   {left} blobs left for this drop in {rt.settings.landing_container}")
        print(f"  rows      {p.get('Rows', 0):,} delivered of {int(p.get('RowsExpected', 0)):,} in Metadata.json")
        print(f"  messages  {p.get('Messages', 0):,} row messages + 1 completion ({p.get('Encoding')})")
        if p.get("SchemaReport"):
            checks = sorted({f["check"] for f in json.loads(p["SchemaReport"])["findings"]})
            drift = "drift: " + ", ".join(checks) if checks else "no drift"
            print(f"  schema    {drift} (the sample is Microsoft's v1 shape; docs/contract.md)")
        print(
            f"  speed     {p.get('MBps')} MB/s through decrypt+gunzip+validate+pack+queue "
            f"({wall:.2f} s wall, key unwrapped with {p.get('Algorithm')})"
        )
        if record.state not in ("delivered", "deleted"):
            print(f"  reason    {p.get('Reason')}")
            return 1

        peek = rt.queue.receive_messages(max_messages=1, visibility_timeout=1)
        first = decode_message(next(iter(peek)).content)
        print(f"\n  first message: seq {first['seq']}, {first['row_count']} rows, table {first['table']}")
        for row in first["rows"][:3]:
            print(f"    {_short(row)}")
        print("\n  Done. Azurite stopped; nothing was written outside a temporary folder.")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
