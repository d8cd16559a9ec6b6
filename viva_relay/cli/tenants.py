"""`viva-relay tenants ...` (commands are added by the issue that owns this group)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add the `tenants` command group."""
    parser: argparse.ArgumentParser = sub.add_parser("tenants", help="tenants commands")
    parser.set_defaults(handler=lambda _args: parser.print_help() or 0)
    parser.add_subparsers(dest="command", metavar="COMMAND")
