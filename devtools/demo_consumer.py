"""The demo's consumer step: the queue into a real PostgreSQL, then rows read back from the published table.

``consume_step(env)`` is the step (``env`` holds the relay's settings, with ``RelayStorage`` and
``DOWNSTREAM_QUEUE`` pointing at a queue the relay has filled). It starts its own throw-away PostgreSQL,
runs ``viva-relay consume --once --migrate`` as a partner would, prints a few published rows with the
SQL a partner's app would run, and stops the server.

``python -m devtools.demo_consumer`` runs the step on its own: Azurite, one small simulated drop
delivered by the ingest code, then the step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from devtools.azurite import Azurite
from devtools.postgres import LocalPostgres

ROWS = int(os.environ.get("DEMO_CONSUMER_ROWS", "3000"))
#: What a partner's app runs against the published table (docs/consumer.md).
PARTNER_QUERY = """
SELECT person_id, metric_date, data->>'Collaboration hours' AS collaboration_hours, drop_id
FROM viva_relay.vivainsightsdataset_personreport_v1
WHERE tenant = %s
ORDER BY person_id, metric_date
LIMIT 3
""".strip()


def consume_step(env: dict[str, str], tenant: str) -> int:
    """Consume the relay's queue into PostgreSQL and print rows of ``tenant`` from the published table."""
    import psycopg

    with LocalPostgres() as postgres:
        print(f"\n  PostgreSQL {postgres.bin.parent.name} on 127.0.0.1:{postgres.port} (run as an unprivileged user)")
        run_env = {**env, "CONSUMER_DATABASE_URL": postgres.url}
        done = subprocess.run(
            [sys.executable, "-m", "viva_relay", "consume", "--once", "--migrate", "--json"],
            env=run_env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            print(f"  viva-relay consume failed: {done.stderr.strip()}")
            return 1
        summary = json.loads(done.stdout)
        print(
            f"  consume   {summary['messages']} messages -> {summary['published_rows']:,} rows published"
            f" in {len(summary['published_drops'])} drop(s), {summary['duplicates']} duplicates,"
            f" {summary['poisoned']} poison ({summary['seconds']:.2f} s)"
        )
        with psycopg.connect(postgres.url) as conn:
            counted = conn.execute(
                "SELECT count(*) FROM viva_relay.vivainsightsdataset_personreport_v1 WHERE tenant = %s", (tenant,)
            ).fetchone()
            rows = conn.execute(PARTNER_QUERY, (tenant,)).fetchall()
        print(f"  published {counted[0] if counted else 0:,} rows for tenant {tenant}; a partner's query:\n")
        print("    " + PARTNER_QUERY.replace("\n", "\n    ").replace("%s", f"'{tenant}'") + ";")
        for person, week, hours, drop in rows:
            print(f"      {person}  {week}  {hours:>18}  {drop}")
    return 0 if rows else 1


def _deliver_one_drop(env: dict[str, str], work: Path) -> str:
    """Create a key, simulate a drop and run the ingest on it; returns the tenant."""
    from devtools.simulate import BlobWriter, sample_layout_root, simulate_drop
    from shared.config import Settings
    from shared.ingest import ingest_metadata_blob
    from shared.keyfolder import KeyFolder, key_version
    from shared.runtime import Runtime

    tenant = str(uuid.uuid4())
    rt = Runtime(Settings.from_env(env))
    keys = KeyFolder(work / "keys")
    keys.create(tenant)
    landing = rt.landing_container()
    landing.create_container()
    public = keys.public_key(tenant)
    root = sample_layout_root(tenant)[0]
    sim = simulate_drop(
        BlobWriter(landing, root), tenant_id=tenant, public_key=public, key_version=key_version(public), rows=ROWS
    )
    outcome = ingest_metadata_blob(rt, landing.container_name, sim.metadata_path)
    print(f"  relay     drop of {ROWS:,} rows for tenant {tenant}: {outcome.status}")
    return tenant


def main() -> int:
    """Azurite, one drop through the relay, then the consumer step."""
    settings: dict[str, Any] = json.loads((Path(__file__).parent.parent / "local.settings.json.example").read_text())
    with tempfile.TemporaryDirectory(prefix="viva-relay-demo-consumer-") as folder, Azurite() as azurite:
        print("Viva Relay demo: the reference consumer, from the queue into PostgreSQL\n")
        env = {**os.environ, **settings["Values"]}
        env.update(
            {
                "LandingStorage": azurite.connection_string,
                "RelayStorage": azurite.connection_string,
                "KEY_SOURCE": "folder",
                "KEY_FOLDER": str(Path(folder) / "keys"),
                "DELETE_AFTER_DELIVERY": "false",
            }
        )
        tenant = _deliver_one_drop(env, Path(folder))
        code = consume_step(env, tenant)
    print("\n  Done. Azurite and PostgreSQL stopped; nothing was written outside temporary folders.")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
