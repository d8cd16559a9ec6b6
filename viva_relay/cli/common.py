"""What every command shares: exit codes, settings loading, error reporting, progress."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import textwrap
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from shared.config import Settings
from shared.errors import ConfigError, DropError, TransientError, VivaRelayError
from shared.preflight import NotSignedIn
from shared.runtime import Runtime
from shared.status import ExitCode

#: Exit codes monitoring can rely on (their one home, with the status mapping: shared.status).
EXIT_OK = ExitCode.OK
EXIT_PROBLEM = ExitCode.PROBLEM  # a bad drop, a failed check, something found wrong
EXIT_USAGE = ExitCode.USAGE  # argparse's own code for bad arguments
EXIT_CONFIG = ExitCode.CONFIG  # missing or invalid settings
EXIT_TRANSIENT = ExitCode.TRANSIENT  # Azure unreachable or throttled: try again later

Handler = Callable[[argparse.Namespace], int]


class UsageError(VivaRelayError):
    """A command line argparse cannot judge alone (exit 2, like argparse's own errors)."""


#: Names the settings file instead of ./local.settings.json; ``none`` reads no file.
SETTINGS_ENV = "VIVA_RELAY_SETTINGS"
DEFAULT_SETTINGS_FILE = "local.settings.json"


def add_settings_option(parser: argparse.ArgumentParser) -> None:
    """``--settings FILE``: read app settings from a local.settings.json (environment wins)."""
    parser.add_argument(
        "--settings",
        metavar="FILE",
        help=f"a local.settings.json whose Values are used as settings (default: ${SETTINGS_ENV}, else"
        f" ./{DEFAULT_SETTINGS_FILE} when present; environment variables override single values)",
    )


def settings_file(args: argparse.Namespace) -> str | None:
    """The settings file to read: --settings, else $VIVA_RELAY_SETTINGS, else ./local.settings.json if present."""
    explicit = getattr(args, "settings", None)
    if explicit:
        return str(explicit)
    named = os.environ.get(SETTINGS_ENV, "").strip()
    if named:
        return None if named.lower() == "none" else named
    return DEFAULT_SETTINGS_FILE if Path(DEFAULT_SETTINGS_FILE).is_file() else None


def load_env(args: argparse.Namespace) -> dict[str, str]:
    """The environment, with a local.settings.json's Values underneath it (see :func:`settings_file`)."""
    env: dict[str, str] = {}
    path = settings_file(args)
    if path:
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read settings file {path}: {exc}") from None
        values = doc.get("Values", {}) if isinstance(doc, dict) else {}
        env.update({str(k): str(v) for k, v in values.items()})
    env.update(os.environ)
    return env


def runtime_from(args: argparse.Namespace, overrides: Mapping[str, str] | None = None, **kw: Any) -> Runtime:
    """A Runtime from the environment (+ --settings file + overrides)."""
    env = load_env(args) | dict(overrides or {})
    return Runtime(Settings.from_env(env), **kw)


def fail(message: str, code: int = EXIT_PROBLEM) -> int:
    """Print a one-line reason to stderr and return ``code``."""
    print(f"viva-relay: {' '.join(message.split())}", file=sys.stderr)
    return code


def run_handler(handler: Handler, args: argparse.Namespace) -> int:
    """Run a command, turning known errors into one line on stderr and a meaningful exit code."""
    try:
        return handler(args)
    except UsageError as exc:
        return fail(str(exc), EXIT_USAGE)
    except NotSignedIn as exc:
        return fail(str(exc), EXIT_CONFIG)
    except ConfigError as exc:
        return fail(f"configuration: {exc}", EXIT_CONFIG)
    except DropError as exc:
        return fail(f"{exc.code}: {exc.reason}", EXIT_PROBLEM)
    except TransientError as exc:
        return fail(f"temporarily unavailable: {exc}{_local_services_hint(args, str(exc))}", EXIT_TRANSIENT)
    except VivaRelayError as exc:
        return fail(str(exc), EXIT_PROBLEM)
    except BrokenPipeError:
        # `viva-relay drop decrypt ... | head` closes stdout early: not an error.
        # Point stdout at /dev/null so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except Exception as exc:
        # An unexpected error is still one line (the traceback with -v), never a wall of text.
        if getattr(args, "verbose", False):
            raise
        return fail(f"unexpected error: {type(exc).__name__}: {exc} (run with -v for details)", EXIT_PROBLEM)


#: Set in the settings file `make dev` writes (devtools/dev.py).
LOCAL_SERVICES_MARKER = "VIVA_RELAY_LOCAL_SERVICES"


def _local_services_hint(args: argparse.Namespace, message: str) -> str:
    """When settings from `make dev` meet a refused connection, the cause is that its services are stopped."""
    if "refused" not in message.lower():
        return ""
    try:
        env = load_env(args)
    except ConfigError:
        return ""
    if not env.get(LOCAL_SERVICES_MARKER):
        return ""
    return "; these settings are `make dev`'s: its local services are not running (start them with `make dev`)"


class Progress:
    """A small progress line on stderr (only when stderr is a terminal, or when forced)."""

    def __init__(
        self, label: str, total: int | None = None, *, stream: TextIO | None = None, force: bool = False
    ) -> None:
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = force or self.stream.isatty()
        self.started = time.monotonic()
        self._last = 0.0

    def update(self, done: int, unit: str = "rows") -> None:
        """Redraw at most five times a second."""
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.2:
            return
        self._last = now
        rate = done / max(1e-9, now - self.started)
        if self.total:
            width = 30
            filled = int(width * min(1.0, done / self.total))
            bar = "#" * filled + "-" * (width - filled)
            text = f"\r{self.label} [{bar}] {done:,}/{self.total:,} {unit} ({rate:,.0f}/s)"
        else:
            text = f"\r{self.label} {done:,} {unit} ({rate:,.0f}/s)"
        self.stream.write(text)
        self.stream.flush()

    def close(self, done: int | None = None, unit: str = "rows") -> None:
        """End the progress line (with the final count, when given)."""
        if self.enabled:
            if done is not None:
                self._last = 0.0
                self.update(done, unit)
            self.stream.write("\n")
            self.stream.flush()


#: Width a folded last column gets at least, whatever the terminal (narrower would be unreadable).
_MIN_FOLD_WIDTH = 40


def print_table(rows: list[dict[str, Any]], columns: list[str], *, stream: TextIO | None = None) -> None:
    """A plain, aligned text table.

    Nothing is ever cut short: a long last cell (a reason, a message) folds onto continuation
    lines aligned under its column, at the terminal's width (or 120 columns when not a terminal).
    """
    out = stream or sys.stdout
    if not rows:
        out.write("(none)\n")
        return
    cells = [{c: " ".join(str(r.get(c, "")).split()) for c in columns} for r in rows]
    last = columns[-1]
    widths = {c: max(len(c), *(len(cell[c]) for cell in cells)) for c in columns}
    indent = sum(widths[c] + 2 for c in columns[:-1])
    room = max(_MIN_FOLD_WIDTH, shutil.get_terminal_size((120, 24)).columns - indent - 1)
    out.write("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip() + "\n")
    for cell in cells:
        lines = textwrap.wrap(cell[last], room, break_on_hyphens=False) or [""]
        head = "  ".join(cell[c].ljust(widths[c]) for c in columns[:-1])
        out.write(f"{head}  {lines[0]}".rstrip() + "\n")
        for more in lines[1:]:
            out.write(" " * indent + more + "\n")
