"""``make dev`` / ``make dev-down``: the local services in the background, and a ready local settings file.

``python -m devtools.dev up`` starts

* Azurite with its data in ``.dev/azurite`` (git-ignored) and telemetry off, on its usual ports
  10000-10002 when they are free, otherwise on free ones;
* :mod:`devtools.devservices`: the Key Vault and Data Factory stand-ins and the local event delivery
  (each new Metadata.json goes to the ingest function, as Event Grid and the Functions host do);

writes their process ids to ``.dev/*.pid`` and writes ``local.settings.json`` (which the CLI and
``func start`` read by default). ``python -m devtools.dev down`` stops exactly those processes.
Azurite's data stays in ``.dev/azurite``; the vault's keys live in memory and go with ``down``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from viva_relay.cli.common import LOCAL_SERVICES_MARKER

from .azurite import ROOT, Azurite, free_port
from .devservices import SERVICES_FILE

STATE_DIR = ROOT / ".dev"
SETTINGS_FILE = ROOT / "local.settings.json"
#: Marks a settings file as written by ``make dev`` (one written by hand is kept as a .bak copy).
MARKER = LOCAL_SERVICES_MARKER
#: What must appear in a process's command line for ``down`` to stop it (never a process we did not start).
_SIGNATURES = {"azurite": "azurite", "services": "devtools.devservices"}


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports() -> tuple[int, int, int]:
    usual = (10000, 10001, 10002)
    if all(_port_free(p) for p in usual):
        return usual
    return free_port(), free_port(), free_port()


def _pid_of(state: Path, name: str) -> int | None:
    """The pid in ``state/<name>.pid`` if that process is alive and is the one we started."""
    try:
        pid = int((state / f"{name}.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError):
        return None
    return pid if _SIGNATURES[name] in cmdline else None


def _spawn(state: Path, name: str, cmd: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    log = open(state / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=cwd
    )
    (state / f"{name}.pid").write_text(f"{proc.pid}\n")
    return proc


def _wait_for_services(state: Path, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> dict[str, str]:
    target = state / SERVICES_FILE
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if target.exists():
            settings: dict[str, str] = json.loads(target.read_text())["settings"]
            return settings
        if proc.poll() is not None:
            raise RuntimeError(f"the local services exited: see {state / 'services.log'}")
        time.sleep(0.1)
    raise RuntimeError(f"the local services did not start in {timeout:.0f} s: see {state / 'services.log'}")


def write_settings(path: Path, settings: dict[str, str]) -> None:
    """Write a local.settings.json; a hand-written one already there is kept as ``<name>.bak``."""
    if path.exists():
        try:
            ours = MARKER in json.loads(path.read_text()).get("Values", {})
        except (ValueError, AttributeError):
            ours = False
        if not ours:
            path.replace(path.with_name(path.name + ".bak"))
    doc = {"IsEncrypted": False, "Values": {**settings, MARKER: "make dev"}}
    path.write_text(json.dumps(doc, indent=2) + "\n")


def up(
    state: Path = STATE_DIR,
    settings_file: Path = SETTINGS_FILE,
    *,
    rows: int = 1000,
    usual_ports: bool = True,
    step_seconds: float = 5.0,
) -> dict[str, str]:
    """Start Azurite and the local services (unless running) and write the settings file; returns the settings.

    ``usual_ports=False`` always takes free ports (tests, beside a developer's own ``make dev``);
    ``step_seconds`` is the longest a pipeline run stays Queued, and InProgress after its copy, unread.
    """
    state = state.resolve()
    state.mkdir(parents=True, exist_ok=True)
    if _pid_of(state, "services") and (state / SERVICES_FILE).exists():
        settings: dict[str, str] = json.loads((state / SERVICES_FILE).read_text())["settings"]
        write_settings(settings_file, settings)
        return settings
    down(state)
    azurite = Azurite(location=state / "azurite", ports=_ports() if usual_ports else None)
    (state / "azurite").mkdir(exist_ok=True)
    proc = _spawn(state, "azurite", azurite.command(), cwd=state)  # Azurite writes its own files to its cwd
    try:
        azurite.wait_ready(proc, state / "azurite.log")
        services = _spawn(
            state,
            "services",
            [
                sys.executable,
                "-m",
                "devtools.devservices",
                "--dir",
                str(state),
                "--connection-string",
                azurite.connection_string,
                "--rows",
                str(rows),
                "--step-seconds",
                str(step_seconds),
            ],
            cwd=ROOT,  # the app (function_app.py) is imported from the project folder
        )
        settings = _wait_for_services(state, services)
    except RuntimeError:
        down(state)
        raise
    write_settings(settings_file, settings)
    return settings


def down(state: Path = STATE_DIR) -> list[str]:
    """Stop the processes ``up`` started (by their pid files); returns what was stopped."""
    stopped: list[str] = []
    for name in ("services", "azurite"):
        pid = _pid_of(state, name)
        if pid is not None:
            try:
                os.killpg(pid, signal.SIGTERM)
                deadline = time.monotonic() + 10
                while _pid_of(state, name) and time.monotonic() < deadline:
                    time.sleep(0.1)
                if _pid_of(state, name):
                    os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            stopped.append(name)
        (state / f"{name}.pid").unlink(missing_ok=True)
    (state / SERVICES_FILE).unlink(missing_ok=True)
    return stopped


def main(argv: list[str] | None = None) -> int:
    """``up`` or ``down``."""
    parser = argparse.ArgumentParser(prog="python -m devtools.dev", description=__doc__)
    parser.add_argument("action", choices=("up", "down"), help="start or stop the local services")
    parser.add_argument("--dir", type=Path, default=STATE_DIR, help="state folder (default .dev)")
    parser.add_argument("--settings-file", type=Path, default=SETTINGS_FILE, help="default local.settings.json")
    args = parser.parse_args(argv)
    if args.action == "down":
        stopped = down(args.dir.resolve())
        print(f"stopped: {', '.join(stopped) or 'nothing was running'} (Azurite's data is kept in {args.dir}/azurite)")
        return 0
    try:
        settings = up(args.dir, args.settings_file)
    except RuntimeError as exc:
        print(f"make dev: {exc}", file=sys.stderr)
        return 1
    blob = settings["LandingStorage"].split("BlobEndpoint=")[1].split(";")[0]
    print(
        "Local services are running in the background (make dev-down stops them):\n"
        f"  Azurite      {blob} (data in {args.dir}/azurite)\n"
        f"  Key Vault    {settings['KEY_VAULT_URL']} (keys in memory: gone after make dev-down)\n"
        f"  Data Factory {settings['DATA_FACTORY_BASE_URL']} (a run writes its drop into"
        f" {settings['LANDING_CONTAINER']})\n"
        f"  events       each new Metadata.json goes to the ingest function\n"
        f"Settings written to {args.settings_file} (the CLI reads it by default)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
