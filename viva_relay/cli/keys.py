"""``viva-relay keys ...``: one RSA-2048 key per customer tenant."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from shared.keyfolder import KeyFolder

from . import common
from .drop import _tenant


def register(sub: Any) -> None:
    """Add the ``keys`` command group."""
    parser: argparse.ArgumentParser = sub.add_parser("keys", help="per-tenant RSA keys")
    cmds = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    create = cmds.add_parser(
        "create",
        help="create a tenant's RSA-2048 key",
        description="Create an RSA-2048 key named by the tenant id. In a local key folder the file is "
        "<tenant id>.pem; --rotate keeps the previous key as <tenant id>.<version>.pem.",
    )
    create.add_argument("--tenant", required=True, type=_tenant)
    create.add_argument("--key-folder", type=Path, help="local key folder (default: KEY_FOLDER or ./keys)")
    create.add_argument("--rotate", action="store_true", help="add a new version to an existing key")
    common.add_settings_option(create)
    create.set_defaults(handler=create_command)


def create_command(args: argparse.Namespace) -> int:
    """Create a key in the local key folder."""
    folder = KeyFolder(args.key_folder or common.load_env(args).get("KEY_FOLDER", "keys"))
    version, path = folder.create(args.tenant, rotate=args.rotate)
    print(json.dumps({"tenant": args.tenant, "version": version, "path": str(path)}, indent=2))
    return common.EXIT_OK
