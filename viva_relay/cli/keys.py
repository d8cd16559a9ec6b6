"""``viva-relay keys ...``: one RSA-2048 key per customer tenant, in Key Vault or a local key folder."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import Any

from shared.keycheck import (
    DEFAULT_EXPIRY_DAYS,
    DEFAULT_SOON_DAYS,
    MAX_EXPIRY_DAYS,
    KeyReport,
    PassphraseNeeded,
    read_pem_file,
)
from shared.keyrotation import KeyNeeds, key_needs, plan_retirement, retire

from . import common
from .drop import _tenant
from .keysource import add_key_source_options, key_source


def _days(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days") from None
    if not 1 <= value <= MAX_EXPIRY_DAYS:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_EXPIRY_DAYS} days, not {value}")
    return value


def _soon(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more days")
    return value


def _add_expiry(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--expires-in",
        type=_days,
        default=DEFAULT_EXPIRY_DAYS,
        metavar="DAYS",
        help=f"days until the key expires (default {DEFAULT_EXPIRY_DAYS})",
    )


def register(sub: Any) -> None:
    """Add the ``keys`` command group."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "keys",
        help="per-tenant RSA keys: create, import, check, rotate, retire, export-public",
        description="Each customer tenant needs its own RSA-2048 key, named by the tenant id, with an expiry "
        "date, never shared with another tenant. These commands work on Key Vault (--vault-url, or "
        "KEY_VAULT_URL) or on a local key folder (--key-folder, or KEY_FOLDER with KEY_SOURCE=folder).",
    )
    cmds = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    create = cmds.add_parser(
        "create",
        help="create a tenant's RSA-2048 key",
        description="Create an RSA-2048 key named by the tenant id, with an expiry date. In Key Vault the key is "
        "generated inside the vault and its private part never leaves it (role: Key Vault Crypto Officer). "
        "In a local key folder the file is <tenant id>.pem. A tenant that already has a key is refused unless "
        "--rotate, which adds a new version and keeps the old one for drops still in flight.",
    )
    create.add_argument("--tenant", required=True, type=_tenant, help="customer tenant id (the key's name)")
    _add_expiry(create)
    create.add_argument("--rotate", action="store_true", help="add a new version to an existing key")
    add_key_source_options(create)
    create.set_defaults(handler=create_command)

    imp = cmds.add_parser(
        "import",
        help="import an externally generated private key (PEM) as a tenant's key",
        description="Import an RSA-2048 private key generated elsewhere (PEM: PKCS#1 'RSA PRIVATE KEY' or "
        "PKCS#8, with or without a passphrase), e.g. from `openssl genrsa -aes256 -out key.pem 2048`. The "
        "JWK fields Key Vault needs (n, e, d, p, q, dp, dq, qi) are derived from the PEM. Refused when the "
        "key is not RSA-2048, or when any tenant's key in the store already has the same modulus. The "
        "passphrase comes from --password-env VAR or a prompt, never from the command line.",
    )
    imp.add_argument("--tenant", required=True, type=_tenant, help="customer tenant id (the key's name)")
    imp.add_argument("--pem", required=True, metavar="FILE", help="the private key file (PEM)")
    imp.add_argument(
        "--password-env",
        metavar="VAR",
        help="name of an environment variable holding the PEM's passphrase (default: prompt if needed)",
    )
    _add_expiry(imp)
    imp.add_argument("--rotate", action="store_true", help="add it as a new version of an existing key")
    add_key_source_options(imp)
    imp.set_defaults(handler=import_command)

    check = cmds.add_parser(
        "check",
        help="list every tenant key and flag what is wrong (non-zero exit for monitoring)",
        description="List every version of every tenant key with its expiry and days left, and flag: an "
        "expired or soon-expiring current key, a disabled current key, a key without an expiry date, a size "
        "other than 2048 bits, and the same key (modulus) under two tenants. Exit 0 when all is well, 1 when "
        "something is wrong, 3 for a configuration problem, 4 when the store is unreachable.",
    )
    check.add_argument(
        "--soon-days",
        type=_soon,
        default=DEFAULT_SOON_DAYS,
        metavar="DAYS",
        help=f"flag current keys expiring within DAYS (default {DEFAULT_SOON_DAYS})",
    )
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    add_key_source_options(check)
    check.set_defaults(handler=check_command)

    rotate = cmds.add_parser(
        "rotate",
        help="give a tenant a new key version; older versions stay enabled for drops in flight",
        description="Create a new RSA-2048 version of the tenant's key (it becomes the current one). Older versions "
        "stay enabled: a drop encrypted with one of them (its PublicKeyVersion) must still decrypt. Retire them "
        "with `keys retire` once no unsettled drop needs them (the status command points them out).",
    )
    rotate.add_argument("--tenant", required=True, type=_tenant, help="customer tenant id (the key's name)")
    _add_expiry(rotate)
    add_key_source_options(rotate)
    rotate.set_defaults(handler=rotate_command)

    retire_cmd = cmds.add_parser(
        "retire",
        help="disable older key versions no unsettled drop needs",
        description="Disable the tenant's older key versions that no waiting, in-progress or failed drop names "
        "(PublicKeyVersion); the key files and Key Vault versions are kept, only disabled. With --version, "
        "exactly those versions; one a drop still needs is refused unless --force. The current version is "
        "never retired.",
    )
    retire_cmd.add_argument("--tenant", required=True, type=_tenant, help="customer tenant id (the key's name)")
    retire_cmd.add_argument("--version", action="append", default=[], metavar="VERSION", help="a version to retire")
    retire_cmd.add_argument("--force", action="store_true", help="retire a --version even if a drop needs it")
    retire_cmd.add_argument("--dry-run", action="store_true", help="only show what would be retired")
    add_key_source_options(retire_cmd)
    retire_cmd.set_defaults(handler=retire_command)

    export = cmds.add_parser(
        "export-public",
        help="print a tenant's public key as PEM and JWK",
        description="Print the tenant's current public key (never the private key) as PEM and/or as a JSON Web "
        "Key (kty, n, e, kid).",
    )
    export.add_argument("--tenant", required=True, type=_tenant, help="customer tenant id (the key's name)")
    export.add_argument(
        "--format", choices=("both", "pem", "jwk"), default="both", help="what to print (default: PEM, then the JWK)"
    )
    add_key_source_options(export)
    export.set_defaults(handler=export_command)


def create_command(args: argparse.Namespace) -> int:
    """Create (or rotate) a tenant's key."""
    source = key_source(args)
    with source.store() as store:
        created = store.create_key(args.tenant, expires_in_days=args.expires_in, rotate=args.rotate)
    print(json.dumps({**created.as_dict(), "store": store.describe(), "rotated": bool(args.rotate)}, indent=2))
    return common.EXIT_OK


def _password(args: argparse.Namespace) -> bytes | None:
    name = args.password_env
    if not name:
        return None
    value = common.load_env(args).get(name)
    if not value:
        raise PassphraseNeeded(f"--password-env names {name}, but that environment variable is not set or empty")
    return value.encode("utf-8")


def import_command(args: argparse.Namespace) -> int:
    """Import a PEM private key as a tenant's key."""
    pem = read_pem_file(args.pem)
    password = _password(args)
    source = key_source(args)
    with source.store() as store:
        try:
            created = store.import_pem(args.tenant, pem, password, expires_in_days=args.expires_in, rotate=args.rotate)
        except PassphraseNeeded:
            if password is not None or not sys.stdin.isatty():
                raise PassphraseNeeded(
                    f"{args.pem} is encrypted: give --password-env VAR naming an environment variable that"
                    " holds its passphrase (or run in a terminal to be prompted)"
                ) from None
            password = getpass.getpass(f"Passphrase for {args.pem}: ").encode("utf-8")
            created = store.import_pem(args.tenant, pem, password, expires_in_days=args.expires_in, rotate=args.rotate)
    print(json.dumps({**created.as_dict(), "store": store.describe(), "imported_from": args.pem}, indent=2))
    return common.EXIT_OK


def _print_report(report: KeyReport) -> None:
    now = report.checked_at
    rows = []
    for k in report.keys:
        days = k.days_left(now)
        rows.append(
            {
                "tenant": k.tenant,
                "version": k.version,
                "current": "yes" if k.current else "",
                "size": k.size or "?",
                "enabled": "yes" if k.enabled else "no",
                "expires": k.expires_on.date().isoformat() if k.expires_on else "never",
                "days_left": "" if days is None else days,
                "status": "; ".join(k.problems) if k.problems else "ok",
            }
        )
    common.print_table(rows, ["tenant", "version", "current", "size", "enabled", "expires", "days_left", "status"])


def check_command(args: argparse.Namespace) -> int:
    """Report on every tenant key; exit 1 when something is wrong."""
    source = key_source(args)
    folder = Path(source.folder or "keys")
    if not source.vault_url and not folder.is_dir():
        # An empty report would look healthy to monitoring: a missing folder is a configuration error.
        return common.fail(f"the key folder {folder} does not exist", common.EXIT_CONFIG)
    with source.store() as store:
        report = store.check(soon_days=args.soon_days)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        _print_report(report)
    summary = (
        f"{len(report.keys)} key version(s) of {len(report.tenants)} tenant(s) in {report.store};"
        f" {len(report.problems)} problem(s)"
    )
    if report.ignored:
        summary += f"; ignored {len(report.ignored)} key(s) not named by a tenant id"
    print(f"viva-relay: {summary}", file=sys.stderr)
    return common.EXIT_OK if report.ok else common.EXIT_PROBLEM


def export_command(args: argparse.Namespace) -> int:
    """Print a tenant's public key."""
    source = key_source(args)
    with source.store() as store:
        pem, jwk = store.export_public(args.tenant)
    if args.format in ("both", "pem"):
        sys.stdout.write(pem)
    if args.format in ("both", "jwk"):
        print(json.dumps(jwk, indent=2))
    return common.EXIT_OK


def _needs(args: argparse.Namespace, tenant: str) -> KeyNeeds:
    """Which key versions the tenant's unsettled drops name (from the drop ledger)."""
    rt = common.runtime_from(args)
    return key_needs(rt.ledger.list(tenant=tenant))


def rotate_command(args: argparse.Namespace) -> int:
    """Create a new current version; report the older versions kept and why."""
    source = key_source(args)
    with source.store() as store:
        created = store.create_key(args.tenant, expires_in_days=args.expires_in, rotate=True)
        older = [k for k in store.inventory() if k.tenant == created.tenant and not k.current and k.enabled]
    needs = _needs(args, created.tenant)
    kept = {k.version: needs.drops_needing(k.tenant, k.version) for k in older}
    print(json.dumps({**created.as_dict(), "store": store.describe(), "kept_enabled": kept}, indent=2))
    return common.EXIT_OK


def retire_command(args: argparse.Namespace) -> int:
    """Disable older versions no unsettled drop needs (or the named ones)."""
    source = key_source(args)
    needs = _needs(args, args.tenant)
    with source.store() as store:
        plan = plan_retirement(args.tenant, store.inventory(), needs, versions=args.version, force=args.force)
        if not args.dry_run:
            retire(store, plan)
    print(json.dumps({**plan.as_dict(), "dry_run": bool(args.dry_run), "store": store.describe()}, indent=2))
    return common.EXIT_OK
