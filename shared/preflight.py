"""Causes an operator can act on: settings checked before any call, sign-in and permission failures.

* :func:`check_vault_url` and :func:`check_subscription_id` refuse placeholder and malformed values
  at once, as configuration errors, instead of letting a call fail later as something else.
* :func:`signin_error` turns "no credential could get a token" into "not signed in" and says how to
  sign in; :func:`missing_role` names the identity a service refused and the role it lacks.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from azure.core.credentials import TokenCredential
from azure.core.exceptions import ClientAuthenticationError

from .errors import ConfigError

#: DNS suffixes of Key Vault (and Managed HSM) in the Azure clouds.
VAULT_SUFFIXES = (
    ".vault.azure.net",
    ".vault.azure.cn",
    ".vault.usgovcloudapi.net",
    ".vault.microsoftazure.de",
    ".managedhsm.azure.net",
)
_VAULT_NAME = re.compile(r"^[a-z](?!.*--)[a-z0-9-]{1,22}[a-z0-9]$")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

SIGN_IN_HINT = (
    "sign in with `az login` (then `az account set --subscription <id>`), or give an app identity through"
    " AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET; to try Viva Relay without Azure, run"
    " `make dev` (local stand-ins, no sign-in)"
)


class NotSignedIn(ConfigError):
    """No credential could get a token: nobody is signed in (or no managed identity is available)."""


def check_vault_url(vault_url: str, name: str = "the Key Vault URL") -> str:
    """The vault URL without a trailing slash; ConfigError unless it is ``https://<vault>.vault.azure.net``.

    Loopback addresses (``https://127.0.0.1:<port>``, the local stand-in) are accepted too.
    """
    url = (vault_url or "").strip().rstrip("/")
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme != "https" or not host:
        raise ConfigError(f"{name} must be the vault's https:// URI, not {vault_url!r}")
    if host in _LOOPBACK:
        return url
    suffix = next((s for s in VAULT_SUFFIXES if host.endswith(s)), None)
    if suffix is None or not _VAULT_NAME.match(host[: -len(suffix)]) or parts.path not in ("", "/") or parts.query:
        raise ConfigError(
            f"{name} {vault_url!r} is not a Key Vault URI: expected https://<vault name>.vault.azure.net"
            " (the vault's 'Vault URI'; az keyvault show -n <vault> --query properties.vaultUri)"
        )
    return url


def vault_scope(vault_url: str) -> str:
    """The token scope of a vault: ``https://vault.azure.net/.default`` in the public cloud."""
    host = (urlsplit(vault_url).hostname or "").lower()
    suffix = next((s for s in VAULT_SUFFIXES if host.endswith(s)), VAULT_SUFFIXES[0])
    return f"https://{suffix.lstrip('.')}/.default"


def check_subscription_id(value: str, name: str = "DATA_FACTORY_SUBSCRIPTION_ID") -> str:
    """The subscription id; ConfigError for a malformed one or the example's all-zero placeholder."""
    text = value.strip().lower()
    if not _GUID.match(text):
        raise ConfigError(f"{name}={value!r} is not a subscription id (a GUID)")
    if set(text.replace("-", "")) == {"0"}:
        raise ConfigError(
            f"{name} is the example's placeholder {value}: set your subscription id"
            " (az account show --query id -o tsv), or run `make dev` to use the local stand-ins"
        )
    return text


def is_signin_failure(exc: BaseException) -> bool:
    """True when no token could be had at all (nothing reached the service)."""
    return isinstance(exc, ClientAuthenticationError) and getattr(exc, "response", None) is None


def signin_error(target: str, exc: BaseException) -> NotSignedIn:
    """The "not signed in" error for ``target`` (what needed the token), saying how to sign in."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return NotSignedIn(
        f"not signed in to Azure: no credential could get a token for {target} ({first}); {SIGN_IN_HINT}"
    )


def caller_of(message: str) -> str:
    """The identity an Azure authorisation error names, as text ('' when it names none)."""
    arm = re.search(r"client '([^']+)' with object id '([^']+)'", message)
    if arm:
        return f"'{arm.group(1)}' (object id {arm.group(2)})"
    kv = re.search(r"Caller:\s*([^\r\n]+)", message)
    if kv:
        fields = dict(p.split("=", 1) for p in kv.group(1).split(";") if "=" in p)
        who = fields.get("upn") or fields.get("appid") or ""
        oid = fields.get("oid", "")
        return f"'{who}' (object id {oid})" if who and oid else (who or oid or kv.group(1).strip())
    return ""


def missing_role(message: str, role: str, scope: str) -> str:
    """'the identity X needs the role R on S', naming X from the service's message when it does."""
    who = caller_of(message)
    identity = f"the identity {who}" if who else "the signed-in identity (az account show; in Azure, the app's)"
    return f"{identity} needs the '{role}' role on {scope}"


def require_sign_in(credential: TokenCredential, scope: str, target: str) -> None:
    """NotSignedIn (with how to sign in) when ``credential`` cannot get a token for ``scope``; else nothing."""
    try:
        credential.get_token(scope)
    except ClientAuthenticationError as exc:
        raise signin_error(target, exc) from None
