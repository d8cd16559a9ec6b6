"""``viva-relay``: the operator CLI. Each command group lives in its own module."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from shared import __version__

from . import common, consent, drop, drops, keys, runs, status, tenants

GROUPS = (drop, keys, consent, drops, runs, tenants, status)


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    parser = argparse.ArgumentParser(
        prog="viva-relay",
        description="Operate Viva Relay: tenant keys, consent links, drops, pipeline runs.",
    )
    parser.add_argument("--version", action="version", version=f"viva-relay {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens (to stderr)")
    sub = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = build_parser()
    if not (sys.argv[1:] if argv is None else list(argv)):
        parser.print_help()
        return common.EXIT_OK
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        logging.getLogger("azure").setLevel(logging.ERROR)
        # Commands report outcomes themselves in one line; the library's log repeats them (see -v).
        logging.getLogger("viva_relay").setLevel(logging.CRITICAL)
    handler: common.Handler = args.handler
    return common.run_handler(handler, args)


if __name__ == "__main__":
    raise SystemExit(main())
