"""``viva-relay``: the operator CLI. Each command group lives in its own module."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from shared import __version__
from shared.errors import ConfigError
from shared.runtime import TEST_TOKEN_SETTING

from . import common

#: Each top-level command and the module that defines it, in ``--help`` order. A run imports only its
#: own command's module (and the SDKs that one needs): ``drops list`` does not pay for PostgreSQL's driver.
COMMANDS: dict[str, str] = {
    "drop": "drop",
    "keys": "keys",
    "consent-link": "consent",
    "drops": "drops",
    "runs": "runs",
    "tenants": "tenants",
    "status": "status",
    "consume": "consume",
}


def command_of(argv: Sequence[str]) -> str | None:
    """The top-level command ``argv`` runs, or None (no command, ``--help``, or an unknown one)."""
    # The top-level options take no values, so the first word that is not an option is the command.
    first = next((word for word in argv if not word.startswith("-")), None)
    return first if first in COMMANDS else None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command tree: every command, or with ``only`` that one command's (what a run of it needs)."""
    parser = argparse.ArgumentParser(
        prog="viva-relay",
        description="Operate Viva Relay: tenant keys, consent links, drops, pipeline runs.",
    )
    parser.add_argument("--version", action="version", version=f"viva-relay {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log what Viva Relay does (to stderr); -vv also logs the Azure SDK's HTTP requests",
    )
    sub = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    for command, module in COMMANDS.items():
        if only in (None, command):
            importlib.import_module(f"{__package__}.{module}").register(sub)
    return parser


def configure_logging(verbosity: int) -> None:
    """No -v: only the commands' own output. -v: Viva Relay's log. -vv: the Azure SDK's too (HTTP)."""
    logging.basicConfig(
        level=logging.INFO if verbosity else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The SDK logs every request and response header at INFO: only with -vv.
    logging.getLogger("azure").setLevel(logging.INFO if verbosity >= 2 else logging.ERROR)
    if not verbosity:
        # Commands report outcomes themselves in one line; the library's log repeats them (see -v).
        logging.getLogger("viva_relay").setLevel(logging.CRITICAL)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(command_of(words))
    if not words:
        parser.print_help()
        return common.EXIT_OK
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    _install_development_credentials(args)
    handler: common.Handler = args.handler
    return common.run_handler(handler, args)


def _install_development_credentials(args: argparse.Namespace) -> None:
    """With ``VIVA_RELAY_TEST_TOKEN`` set (tests, demo, ``make dev``: local stand-ins), use the development token hook.

    The setting may come from the environment or from the settings file the command reads (``make dev``
    writes it into local.settings.json). The hook lives in devtools/ (a checkout's development tools),
    never in the deployed app, and only ever sends its token to loopback stand-ins.
    """
    try:
        env = common.load_env(args)
    except ConfigError:
        return  # the command itself reports the unreadable settings file
    if env.get(TEST_TOKEN_SETTING, "").strip():
        from devtools.testtoken import install_if_requested

        install_if_requested(env)


if __name__ == "__main__":
    raise SystemExit(main())
