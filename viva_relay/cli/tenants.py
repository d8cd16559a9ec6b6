"""``viva-relay tenants ...``: the registry of onboarded customer tenants (Azure Table ``TENANT_TABLE``)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from typing import Any

from shared.errors import KeyNotFound, VivaRelayError
from shared.runs import tenant_registry
from shared.tenants import Tenant, TenantRegistry

from . import common
from .drop import _tenant
from .keysource import key_source


def _consent_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _param(text: str) -> tuple[str, Any]:
    """``KEY=VALUE``; VALUE is read as JSON when it is a JSON number, true/false, object or array."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    value: Any = raw
    stripped = raw.strip()
    if stripped and (stripped[0] in "-0123456789[{" or stripped in ("true", "false")):
        try:
            value = json.loads(stripped)
        except ValueError:
            value = raw
    return key.strip(), value


def register(sub: Any) -> None:
    """Add the ``tenants`` command group."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "tenants",
        help="onboard, list, disable and remove customer tenants",
        description="The tenant registry: which customer tenants get a pipeline run on each schedule.",
    )
    cmds = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    add = cmds.add_parser(
        "add",
        help="onboard a tenant",
        description="Register a customer tenant. Factory options left out use the DATA_FACTORY_* settings.",
    )
    add.add_argument("--tenant", required=True, type=_tenant, help="customer tenant id (GUID)")
    add.add_argument("--name", required=True, help="display name (for lists and logs)")
    add.add_argument("--factory-subscription", default="", help="subscription id of the tenant's Data Factory")
    add.add_argument("--factory-resource-group", default="", help="resource group of the tenant's Data Factory")
    add.add_argument("--factory-name", default="", help="name of the tenant's Data Factory")
    add.add_argument("--pipeline", default="", help="pipeline name (default: DATA_FACTORY_PIPELINE)")
    add.add_argument(
        "--param",
        action="append",
        type=_param,
        default=[],
        metavar="KEY=VALUE",
        help="extra pipeline parameter (repeatable); numbers, true/false and JSON objects are passed as JSON",
    )
    add.add_argument("--include-directory", action="store_true", help="also copy the directory users dataset")
    add.add_argument("--consent-date", type=_consent_date, help="when the tenant's admin approved (YYYY-MM-DD)")
    add.add_argument("--disabled", action="store_true", help="register it disabled (no runs until enabled)")
    add.add_argument("--replace", action="store_true", help="overwrite an existing registration")
    add.add_argument("--json", action="store_true", help="print the stored registration as JSON")
    common.add_settings_option(add)
    add.set_defaults(handler=add_command)

    lst = cmds.add_parser(
        "list",
        help="list registered tenants",
        description="One line per tenant: enabled, factory, pipeline, directory dataset, consent expiry.",
    )
    lst.add_argument("--enabled-only", action="store_true", help="hide disabled tenants")
    lst.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    common.add_settings_option(lst)
    lst.set_defaults(handler=list_command)

    show = cmds.add_parser(
        "show",
        help="show one tenant's registration as JSON",
        description="Print a tenant's registration (factory, parameters, consent, enabled) as JSON.",
    )
    _add_tenant_id(show)
    common.add_settings_option(show)
    show.set_defaults(handler=show_command)

    disable = cmds.add_parser(
        "disable",
        help="stop starting runs for a tenant (history is kept)",
        description="Keep the registration but start no more runs for the tenant until `tenants enable`.",
    )
    _add_tenant_id(disable)
    disable.add_argument("--reason", default="", help="why (shown by tenants list and runs start)")
    common.add_settings_option(disable)
    disable.set_defaults(handler=disable_command)

    enable = cmds.add_parser(
        "enable",
        help="start runs for a disabled tenant again",
        description="Start runs for the tenant again, from the next schedule (or `runs start`).",
    )
    _add_tenant_id(enable)
    common.add_settings_option(enable)
    enable.set_defaults(handler=enable_command)

    remove = cmds.add_parser(
        "remove",
        help="delete a tenant's registration (its run history is kept)",
        description="Delete the tenant's registration. Its runs, drops and key are kept (remove the key with"
        " the keys commands).",
    )
    _add_tenant_id(remove)
    common.add_settings_option(remove)
    remove.set_defaults(handler=remove_command)


def _add_tenant_id(parser: argparse.ArgumentParser) -> None:
    """TENANT_ID, positional like the ids of `drops show` and `runs show` (``--tenant`` still works)."""
    parser.add_argument("tenant_id", metavar="TENANT_ID", nargs="?", type=_tenant, help="customer tenant id (GUID)")
    parser.add_argument("--tenant", dest="tenant_flag", type=_tenant, metavar="TENANT_ID", help="the same as TENANT_ID")


def _tenant_of(args: argparse.Namespace) -> str:
    """The tenant id given positionally or with --tenant; a usage error when neither (or two different)."""
    given = {t for t in (args.tenant_id, args.tenant_flag) if t}
    if len(given) != 1:
        raise common.UsageError("give one tenant id: TENANT_ID (or --tenant TENANT_ID)")
    return str(given.pop())


def _registry(args: argparse.Namespace) -> TenantRegistry:
    return tenant_registry(common.runtime_from(args))


def _print(tenant: Tenant) -> None:
    print(json.dumps(tenant.as_dict(), indent=2))


def add_command(args: argparse.Namespace) -> int:
    """Register (or with --replace, overwrite) a tenant."""
    tenant = Tenant(
        tenant_id=args.tenant,
        display_name=args.name.strip(),
        factory_subscription_id=args.factory_subscription.strip(),
        factory_resource_group=args.factory_resource_group.strip(),
        factory_name=args.factory_name.strip(),
        pipeline=args.pipeline.strip(),
        parameters=dict(args.param),
        include_directory=args.include_directory,
        enabled=not args.disabled,
        consent_date=args.consent_date,
    )
    stored = _registry(args).add(tenant, replace_existing=args.replace)
    for warning in _onboarding_gaps(args, stored):
        print(f"viva-relay: warning: {warning}", file=sys.stderr)
    expires = stored.consent_expires()
    if expires is not None and expires <= date.today():
        # Registered all the same (the record is right), but runs will fail until the admin approves again.
        print(
            f"viva-relay: warning: the consent given on {stored.consent_date} expired on {expires}; send the"
            " customer's admin a new consent link (viva-relay consent-link)",
            file=sys.stderr,
        )
    if args.json:
        _print(stored)
    else:
        print(f"tenant {stored.tenant_id} ({stored.display_name}) registered{'' if stored.enabled else ', disabled'}")
    return common.EXIT_OK


def _onboarding_gaps(args: argparse.Namespace, tenant: Tenant) -> list[str]:
    """What a registered tenant still lacks for its runs to work: its key, a consent date."""
    gaps: list[str] = []
    where = "the key store"
    try:
        source = key_source(args)
        where = source.describe()
        with source.store() as store:
            store.export_public(tenant.tenant_id)
    except KeyNotFound:
        gaps.append(
            f"{where} has no key for tenant {tenant.tenant_id}: its drops cannot be decrypted until"
            f" `viva-relay keys create --tenant {tenant.tenant_id}` (or keys import)"
        )
    except VivaRelayError as exc:
        gaps.append(f"could not check the tenant's key: {exc}")
    if tenant.consent_date is None:
        gaps.append(
            "no --consent-date: the admin's approval lasts 180 days and its expiry cannot be tracked; give"
            " --consent-date YYYY-MM-DD (the day the customer's admin approved) with tenants add --replace"
        )
    return gaps


def list_command(args: argparse.Namespace) -> int:
    """List tenants."""
    tenants = list(_registry(args).list(enabled_only=args.enabled_only))
    if args.json:
        for t in tenants:
            sys.stdout.write(json.dumps(t.as_dict()) + "\n")
        return common.EXIT_OK
    rows = []
    for t in tenants:
        d = t.as_dict()
        rows.append(
            {
                "tenant": t.tenant_id,
                "name": t.display_name,
                "enabled": "yes" if t.enabled else f"no {t.disabled_reason}".strip(),
                "factory": t.factory_name or "(default)",
                "pipeline": t.pipeline or "(default)",
                "directory": "yes" if t.include_directory else "no",
                "consent_expires": d["consent_expires"] or "",
            }
        )
    common.print_table(rows, ["tenant", "name", "enabled", "factory", "pipeline", "directory", "consent_expires"])
    return common.EXIT_OK


def show_command(args: argparse.Namespace) -> int:
    """Show one tenant."""
    _print(_registry(args).require(_tenant_of(args)))
    return common.EXIT_OK


def disable_command(args: argparse.Namespace) -> int:
    """Disable a tenant."""
    tenant = _registry(args).disable(_tenant_of(args), args.reason.strip())
    print(f"tenant {tenant.tenant_id} ({tenant.display_name}) disabled")
    return common.EXIT_OK


def enable_command(args: argparse.Namespace) -> int:
    """Enable a tenant."""
    tenant = _registry(args).enable(_tenant_of(args))
    print(f"tenant {tenant.tenant_id} ({tenant.display_name}) enabled")
    return common.EXIT_OK


def remove_command(args: argparse.Namespace) -> int:
    """Remove a tenant's registration."""
    tenant = _registry(args).remove(_tenant_of(args))
    print(f"tenant {tenant.tenant_id} ({tenant.display_name}) removed; its run history is kept")
    return common.EXIT_OK
