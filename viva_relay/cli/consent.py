"""``viva-relay consent-link``: the admin-center link a customer's admin opens to approve the app."""

from __future__ import annotations

import argparse
from typing import Any

from shared.ids import is_guid

from . import common

#: Microsoft 365 admin center page where a customer approves a partner's Viva Insights app (SPEC.md).
CONSENT_URL = "https://admin.microsoft.com/Adminportal/Home#/Settings/MGDCAdminCenter/{app_tenant}/{app_id}"


def _guid(what: str) -> Any:
    def parse(text: str) -> str:
        if not is_guid(text.strip()):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what} (a GUID)")
        return text.strip().lower()

    return parse


def consent_link(app_tenant: str, app_id: str) -> str:
    """The consent URL for the partner's app registration (the same for every customer)."""
    return CONSENT_URL.format(app_tenant=app_tenant, app_id=app_id)


def register(sub: Any) -> None:
    """Add the ``consent-link`` command."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "consent-link",
        help="print the admin-center link customers open to approve the app",
        description="Print the Microsoft 365 admin center link that a customer's global admin opens to approve "
        "your Viva Insights app (Settings > Microsoft Graph Data Connect). The link is the same for every "
        "customer; an approval lasts 180 days. Only the URL goes to stdout.",
    )
    parser.add_argument(
        "--app-tenant",
        required=True,
        type=_guid("a tenant id"),
        help="the tenant id of YOUR app registration (the partner tenant, not the customer's)",
    )
    parser.add_argument(
        "--app-id",
        required=True,
        type=_guid("an application (client) id"),
        help="the application (client) id of your multi-tenant app registration",
    )
    parser.set_defaults(handler=consent_command)


def consent_command(args: argparse.Namespace) -> int:
    """Print the consent link."""
    print(consent_link(args.app_tenant, args.app_id))
    return common.EXIT_OK
