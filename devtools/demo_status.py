"""The demo's last step: register the demo tenant and show `viva-relay status` (fleet health).

Kept apart from devtools/demo.py so the demo can call it as its final step with the environment it
built (Azurite connection strings, the key folder).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime

#: Runs ``viva-relay *args`` with the environment ``env`` and captures its output as text.
CliRunner = Callable[..., subprocess.CompletedProcess[str]]


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "viva_relay", *args], env=env, capture_output=True, text=True, check=False
    )


def status_step(env: dict[str, str], tenant: str, name: str = "Demo customer", *, cli: CliRunner = _cli) -> int:
    """Register ``tenant`` (consent given today) if it is not yet, then print `viva-relay status`.

    Returns the status command's exit code (0: nothing needs action, 1: problems listed). ``cli(env, *args)``
    runs each command (default: a ``python -m viva_relay`` subprocess, as the demo does).
    """
    if cli(env, "tenants", "show", "--tenant", tenant).returncode != 0:
        today = datetime.now(UTC).date().isoformat()
        added = cli(env, "tenants", "add", "--tenant", tenant, "--name", name, "--consent-date", today)
        if added.returncode != 0:
            raise SystemExit(f"viva-relay tenants add failed: {added.stderr.strip()}")
    print("\n$ viva-relay status")
    done = cli(env, "status")
    for line in done.stdout.splitlines():
        print(f"  {line}")
    print(f"  (exit {done.returncode}: {'nothing needs action' if done.returncode == 0 else 'problems listed above'})")
    return done.returncode
