"""A simulated fleet of tenants on Azurite, for the fleet-health test and for timing ``viva-relay status``.

Development only. Tenants are registered through the tenant registry; runs and drops are written
straight into the run and drop ledgers with the simulated time (the same columns the pipeline
writes), many at once; keys are written into a key folder in its documented layout.

RSA-2048 key generation costs about 0.3 s a key, so the fleet's keys are built from a small pool
of primes: every tenant gets a distinct modulus (the product of a distinct pair of primes), which
is all the key rules look at. Real keys never share a prime; these keys are for simulations only.

``python -m devtools.fleet [--tenants 200]`` starts Azurite, builds the fleet with six weeks of
runs and drops, and times ``viva-relay status`` on it (three runs).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from math import lcm
from pathlib import Path
from typing import Any, TypeVar

from azure.core.exceptions import ResourceExistsError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shared.droprecord import DROP_CODEC, DropRecord
from shared.keyfolder import key_version
from shared.runrecord import RUN_CODEC, RunRecord
from shared.runtime import Runtime
from shared.tenants import Tenant, TenantRegistry

T = TypeVar("T")
WORKERS = 8


def parallel(fn: Callable[[T], Any], items: Iterable[T]) -> None:
    """Run ``fn`` on every item with a few threads (Azurite answers each write in a few ms)."""
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for _ in pool.map(fn, items):
            pass


def simulation_keys(count: int) -> list[rsa.RSAPrivateKey]:
    """``count`` RSA-2048 keys with distinct moduli, cheaply (see the module docstring)."""
    primes: list[int] = []
    while len(primes) * (len(primes) - 1) // 2 < count:
        numbers = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_numbers()
        primes += [numbers.p, numbers.q]
    keys: list[rsa.RSAPrivateKey] = []
    for p, q in itertools.islice(itertools.combinations(primes, 2), count):
        e = 65537
        d = pow(e, -1, lcm(p - 1, q - 1))
        numbers = rsa.RSAPrivateNumbers(
            p=p,
            q=q,
            d=d,
            dmp1=rsa.rsa_crt_dmp1(d, p),
            dmq1=rsa.rsa_crt_dmq1(d, q),
            iqmp=rsa.rsa_crt_iqmp(p, q),
            public_numbers=rsa.RSAPublicNumbers(e, p * q),
        )
        keys.append(numbers.private_key(unsafe_skip_rsa_key_validation=True))
    return keys


def write_key(folder: Path, tenant: str, key: rsa.RSAPrivateKey, created: datetime, expires: datetime | None) -> str:
    """Write ``key`` as the tenant's current key in the key folder layout; returns its version."""
    folder.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path = folder / f"{tenant}.pem"
    path.write_bytes(pem)
    path.chmod(0o600)
    version = key_version(key.public_key())
    doc: dict[str, Any] = {"tenant": tenant, "version": version, "created_on": created.isoformat(), "origin": "created"}
    if expires is not None:
        doc["expires_on"] = expires.isoformat()
    (folder / f"{tenant}.{version}.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return version


def set_key_expiry(folder: Path, tenant: str, version: str, expires: datetime | None) -> None:
    """Change the expiry recorded for one key version (None: the version has no expiry)."""
    path = folder / f"{tenant}.{version}.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc.pop("expires_on", None)
    if expires is not None:
        doc["expires_on"] = expires.isoformat()
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def register(registry: TenantRegistry, tenants: Sequence[Tenant], now: datetime) -> None:
    """Register the tenants (in parallel)."""
    parallel(lambda t: registry.add(t, now=now), tenants)


def run_row(
    tenant: str, run_id: str, status: str, started: datetime, ended: datetime | None, message: str = ""
) -> dict[str, Any]:
    """A run-ledger entity as the schedule and follow timers leave it (written through the run codec)."""
    record = RunRecord(
        tenant,
        run_id,
        status=status,
        message=message,
        trigger="schedule",
        started_at=started,
        watch=False,
        no_drop_alert=False,
        drop_id="",
        drop_state="",
    )
    if ended is not None:
        record = replace(record, run_start=started, run_end=ended)
    return RUN_CODEC.encode(record)


def drop_row(
    tenant: str,
    drop_id: str,
    state: str,
    first_seen: datetime,
    *,
    run_id: str = "",
    at: datetime | None = None,
    rows: int = 0,
    key_version: str = "",
    reason: str = "",
) -> dict[str, Any]:
    """A drop-ledger entity in ``state`` (delivered: ``at`` is DeliveredAt; failed: FailedAt), via the drop codec."""
    record = DropRecord(
        tenant,
        drop_id,
        state=state,
        run_id=run_id,
        first_seen=first_seen,
        attempts=1,
        checkpoint_seq=-1,
        checkpoint_rows=rows,
        public_key_version=key_version,
        reason=reason,
    )
    if state == "delivered":
        record = replace(record, delivered_at=at or first_seen, rows=rows)
    elif state == "failed":
        record = replace(record, failed_at=at or first_seen, reason_code="simulated")
    return DROP_CODEC.encode(record)


def write_rows(rt: Runtime, table_name: str, rows: Sequence[dict[str, Any]]) -> None:
    """Upsert entities into one table of the relay storage (in parallel)."""
    table = rt.table(table_name)
    with contextlib.suppress(ResourceExistsError):
        table.create_table()
    parallel(table.upsert_entity, rows)


def weekly_round(
    rt: Runtime,
    tenants: Sequence[str],
    versions: dict[str, str],
    started: datetime,
    *,
    run_status: dict[str, str] | None = None,
    no_drop: Iterable[str] = (),
    drop_state: dict[str, str] | None = None,
) -> dict[str, tuple[str, str]]:
    """One weekly schedule: a run per tenant (ends 30 min later) and its drop (15 min after that).

    ``run_status`` overrides a tenant's run status (a failed run brings no drop), ``no_drop`` lists
    succeeded runs whose drop never comes, ``drop_state`` overrides a drop's final state. Returns
    tenant -> (run id, drop id or "").
    """
    run_status = run_status or {}
    drop_state = drop_state or {}
    skip = set(no_drop)
    ended = started + timedelta(minutes=30)
    landed = ended + timedelta(minutes=15)
    runs, drops = [], []
    out: dict[str, tuple[str, str]] = {}
    for tenant in tenants:
        run_id = str(uuid.uuid4())
        status = run_status.get(tenant, "Succeeded")
        message = "simulated failure: the MGDC copy activity failed" if status == "Failed" else ""
        runs.append(run_row(tenant, run_id, status, started, ended, message))
        drop_id = ""
        if status == "Succeeded" and tenant not in skip:
            drop_id = uuid.uuid4().hex
            state = drop_state.get(tenant, "delivered")
            reason = "simulated: the data file is damaged" if state == "failed" else ""
            drops.append(
                drop_row(
                    tenant,
                    drop_id,
                    state,
                    landed,
                    run_id=run_id,
                    at=landed + timedelta(minutes=5),
                    rows=1000,
                    key_version=versions.get(tenant, ""),
                    reason=reason,
                )
            )
        out[tenant] = (run_id, drop_id)
    write_rows(rt, rt.settings.run_table, runs)
    write_rows(rt, rt.settings.ledger_table, drops)
    return out


def build_fleet(rt: Runtime, key_folder: Path, count: int, start: datetime) -> tuple[list[str], dict[str, str]]:
    """``count`` healthy tenants (registered 30 days before ``start``, consent and keys far from expiry)."""
    tenants = [str(uuid.UUID(int=0x5EED_0000_0000_4000_8000_000000000000 + i)) for i in range(count)]
    registry = TenantRegistry(rt.table(rt.settings.tenant_table))
    consent = (start - timedelta(days=10)).date()
    register(
        registry,
        [Tenant(tenant_id=t, display_name=f"Customer {i:03d}", consent_date=consent) for i, t in enumerate(tenants)],
        start - timedelta(days=30),
    )
    versions = {
        t: write_key(key_folder, t, k, start - timedelta(days=30), start + timedelta(days=335))
        for t, k in zip(tenants, simulation_keys(count), strict=True)
    }
    return tenants, versions


def _measure(count: int, runs: int) -> int:
    from devtools.azurite import Azurite
    from shared.config import Settings

    work = Path(tempfile.mkdtemp(prefix="viva-relay-fleet-"))
    with Azurite() as azurite:
        env = {
            "LandingStorage": azurite.connection_string,
            "RelayStorage": azurite.connection_string,
            "KEY_SOURCE": "folder",
            "KEY_FOLDER": str(work / "keys"),
        }
        rt = Runtime(Settings.from_env(env))
        start = datetime.now(UTC).replace(hour=6, minute=0, second=0, microsecond=0) - timedelta(weeks=6)
        built = time.perf_counter()
        tenants, versions = build_fleet(rt, work / "keys", count, start - timedelta(days=1))
        for week in range(6):
            weekly_round(rt, tenants, versions, start + timedelta(weeks=week))
        print(f"fleet of {count} tenants with 6 weeks of runs and drops built in {time.perf_counter() - built:.1f} s")
        for i in range(runs):
            began = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "viva_relay", "status"],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                check=False,
            )
            wall = time.perf_counter() - began
            lines = done.stdout.splitlines()
            print(f"run {i + 1}: viva-relay status on {count} tenants: {wall:.2f} s (exit {done.returncode})")
        from shared.health import check_fleet

        began = time.perf_counter()
        health = check_fleet(rt)
        took = time.perf_counter() - began
        print(f"in-process check of {len(health.tenants)} tenants: {took:.2f} s (no interpreter start)")
        print("\n".join(lines[:8]))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Time ``viva-relay status`` on a simulated fleet."""
    parser = argparse.ArgumentParser(prog="python -m devtools.fleet", description=__doc__)
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    return _measure(args.tenants, args.runs)


def day(start: date, n: int, hour: int = 0, minute: int = 0) -> datetime:
    """Simulated day ``n`` after ``start`` at ``hour:minute`` UTC."""
    return datetime(start.year, start.month, start.day, hour, minute, tzinfo=UTC) + timedelta(days=n)


if __name__ == "__main__":
    raise SystemExit(main())
