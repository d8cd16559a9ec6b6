"""The demo's last step: register the demo tenant and show `viva-relay status` (fleet health).

Kept apart from devtools/demo.py so the demo can call it as its final step with the environment it
built (Azurite connection strings, the key folder).
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "viva_relay", *args], env=env, capture_output=True, text=True, check=False
    )


def status_step(env: dict[str, str], tenant: str, name: str = "Demo customer") -> int:
    """Register ``tenant`` (consent given today) if it is not yet, then print `viva-relay status`.

    Returns the status command's exit code (0: nothing needs action, 1: problems listed).
    """
    if _cli(env, "tenants", "show", "--tenant", tenant).returncode != 0:
        today = datetime.now(UTC).date().isoformat()
        added = _cli(env, "tenants", "add", "--tenant", tenant, "--name", name, "--consent-date", today)
        if added.returncode != 0:
            raise SystemExit(f"viva-relay tenants add failed: {added.stderr.strip()}")
    print("\n$ viva-relay status")
    done = _cli(env, "status")
    for line in done.stdout.splitlines():
        print(f"  {line}")
    print(f"  (exit {done.returncode}: {'nothing needs action' if done.returncode == 0 else 'problems listed above'})")
    return done.returncode
