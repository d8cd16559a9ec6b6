"""Typed settings, read once from the environment (app settings / local.settings.json).

Every name here is listed in ``local.settings.json.example`` and set by ``infra/main.json``.
Connections follow the Functions convention: a setting named after the connection holds a
connection string, or ``<name>__blobServiceUri`` / ``__queueServiceUri`` / ``__tableServiceUri``
(or ``__serviceUri``/``__accountName``) select managed identity via ``DefaultAzureCredential``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from .errors import ConfigError

#: Connection names used by the triggers (``connection=`` on the decorators) and by the library.
LANDING_CONNECTION: Final = "LandingStorage"
RELAY_CONNECTION: Final = "RelayStorage"

MESSAGE_ENCODINGS: Final = ("gzip-base64", "base64", "json")
KEY_SOURCES: Final = ("keyvault", "folder")
#: Key Vault's names for the RSA paddings we may try (SPEC.md: unconfirmed which one MGDC uses).
KNOWN_UNWRAP_ALGORITHMS: Final = ("RSA-OAEP-256", "RSA-OAEP", "RSA1_5")

_CONTAINER_RE = re.compile(r"^(?!-)(?!.*--)[a-z0-9-]{3,63}(?<!-)$")
_QUEUE_RE = _CONTAINER_RE
_TABLE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,62}$")


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name} must be true or false, not {raw!r}")


def _int(name: str, raw: str, *, minimum: int | None = None) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, not {value}")
    return value


def _name(name: str, raw: str, pattern: re.Pattern[str], what: str) -> str:
    value = raw.strip()
    if not pattern.match(value):
        raise ConfigError(f"{name}={value!r} is not a valid {what} name")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything Viva Relay reads from its environment, validated."""

    landing_container: str = "datasets"
    downstream_queue: str = "viva-insights-rows"
    message_encoding: str = "gzip-base64"
    message_ttl_seconds: int = -1
    put_concurrency: int = 8
    ledger_table: str = "VivaRelayDrops"
    tenant_table: str = "VivaRelayTenants"
    run_table: str = "VivaRelayRuns"
    key_source: str = "keyvault"
    key_vault_url: str = ""
    key_folder: str = "keys"
    unwrap_algorithms: tuple[str, ...] = ("RSA-OAEP-256", "RSA-OAEP")
    drop_lease_seconds: int = 600
    checkpoint_every_messages: int = 64
    waiting_give_up_hours: int = 24
    delete_after_delivery: bool = True
    failed_retention_days: int = 0
    orphan_grace_hours: int = 72
    data_factory_subscription_id: str = ""
    data_factory_resource_group: str = ""
    data_factory_name: str = ""
    data_factory_pipeline: str = "ExportO365DataEvents"
    data_factory_base_url: str = ""
    run_no_drop_alert_hours: int = 24
    env: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def require_key_vault(self) -> str:
        """The vault URL; ConfigError when KEY_SOURCE=keyvault has none (checked where keys are used)."""
        if not self.key_vault_url:
            raise ConfigError(
                "KEY_VAULT_URL must be the vault's https:// URI when KEY_SOURCE=keyvault"
                " (set KEY_SOURCE=folder for local runs)"
            )
        return self.key_vault_url

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``env`` (default ``os.environ``); raise :class:`ConfigError`."""
        e = os.environ if env is None else env
        d = cls()

        def get(key: str, default: str) -> str:
            return e.get(key, default)

        encoding = get("DOWNSTREAM_MESSAGE_ENCODING", d.message_encoding).strip().lower()
        if encoding not in MESSAGE_ENCODINGS:
            raise ConfigError(
                f"DOWNSTREAM_MESSAGE_ENCODING must be one of {', '.join(MESSAGE_ENCODINGS)}, not {encoding!r}"
            )
        key_source = get("KEY_SOURCE", d.key_source).strip().lower()
        if key_source not in KEY_SOURCES:
            raise ConfigError(f"KEY_SOURCE must be keyvault or folder, not {key_source!r}")
        vault = get("KEY_VAULT_URL", "").strip()
        if vault and not vault.startswith("https://"):
            raise ConfigError(f"KEY_VAULT_URL must be the vault's https:// URI, not {vault!r}")
        algorithms = tuple(
            a.strip().upper().replace("RSA1_5", "RSA1_5")
            for a in get("UNWRAP_ALGORITHMS", ",".join(d.unwrap_algorithms)).split(",")
            if a.strip()
        )
        for a in algorithms:
            if a not in KNOWN_UNWRAP_ALGORITHMS:
                raise ConfigError(f"UNWRAP_ALGORITHMS: unknown algorithm {a!r}")
        if not algorithms:
            raise ConfigError("UNWRAP_ALGORITHMS must name at least one algorithm")
        allow_rsa15 = _bool("ALLOW_RSA1_5", get("ALLOW_RSA1_5", "false"))
        if "RSA1_5" in algorithms and not allow_rsa15:
            raise ConfigError("UNWRAP_ALGORITHMS lists RSA1_5: set ALLOW_RSA1_5=true to allow it")
        if allow_rsa15 and "RSA1_5" not in algorithms:
            algorithms = (*algorithms, "RSA1_5")
        ttl = _int("DOWNSTREAM_MESSAGE_TTL_SECONDS", get("DOWNSTREAM_MESSAGE_TTL_SECONDS", "-1"))
        if ttl == 0 or ttl < -1:
            raise ConfigError("DOWNSTREAM_MESSAGE_TTL_SECONDS must be -1 (never expire) or positive")
        return cls(
            landing_container=_name(
                "LANDING_CONTAINER",
                get("LANDING_CONTAINER", d.landing_container),
                _CONTAINER_RE,
                "container",
            ),
            downstream_queue=_name("DOWNSTREAM_QUEUE", get("DOWNSTREAM_QUEUE", d.downstream_queue), _QUEUE_RE, "queue"),
            message_encoding=encoding,
            message_ttl_seconds=ttl,
            put_concurrency=_int("DOWNSTREAM_PUT_CONCURRENCY", get("DOWNSTREAM_PUT_CONCURRENCY", "8"), minimum=1),
            ledger_table=_name("LEDGER_TABLE", get("LEDGER_TABLE", d.ledger_table), _TABLE_RE, "table"),
            tenant_table=_name("TENANT_TABLE", get("TENANT_TABLE", d.tenant_table), _TABLE_RE, "table"),
            run_table=_name("RUN_TABLE", get("RUN_TABLE", d.run_table), _TABLE_RE, "table"),
            key_source=key_source,
            key_vault_url=vault.rstrip("/"),
            key_folder=get("KEY_FOLDER", d.key_folder),
            unwrap_algorithms=algorithms,
            drop_lease_seconds=_int(
                "DROP_LEASE_SECONDS", get("DROP_LEASE_SECONDS", str(d.drop_lease_seconds)), minimum=2
            ),
            checkpoint_every_messages=_int(
                "CHECKPOINT_EVERY_MESSAGES",
                get("CHECKPOINT_EVERY_MESSAGES", str(d.checkpoint_every_messages)),
                minimum=1,
            ),
            waiting_give_up_hours=_int("WAITING_GIVE_UP_HOURS", get("WAITING_GIVE_UP_HOURS", "24"), minimum=1),
            delete_after_delivery=_bool("DELETE_AFTER_DELIVERY", get("DELETE_AFTER_DELIVERY", "true")),
            failed_retention_days=_int("FAILED_DROP_RETENTION_DAYS", get("FAILED_DROP_RETENTION_DAYS", "0"), minimum=0),
            orphan_grace_hours=_int("ORPHAN_GRACE_HOURS", get("ORPHAN_GRACE_HOURS", "72"), minimum=0),
            data_factory_subscription_id=get("DATA_FACTORY_SUBSCRIPTION_ID", "").strip(),
            data_factory_resource_group=get("DATA_FACTORY_RESOURCE_GROUP", "").strip(),
            data_factory_name=get("DATA_FACTORY_NAME", "").strip(),
            data_factory_pipeline=get("DATA_FACTORY_PIPELINE", d.data_factory_pipeline).strip(),
            data_factory_base_url=get("DATA_FACTORY_BASE_URL", "").strip(),
            run_no_drop_alert_hours=_int("RUN_NO_DROP_ALERT_HOURS", get("RUN_NO_DROP_ALERT_HOURS", "24"), minimum=1),
            env=dict(e),
        )


# -- Limits on hostile input (docs/reliability.md lists every limit, its default and its effect) ----------


#: Blank (white-space only) plaintext one data file may hold before the drop fails as implausible.
MAX_BLANK_LINE_BYTES_SETTING: Final = "MAX_BLANK_LINE_BYTES"
DEFAULT_MAX_BLANK_LINE_BYTES: Final = 1024 * 1024


@dataclass(frozen=True)
class InputLimits:
    """The limits an operator may tune; the others are constants (see docs/reliability.md)."""

    max_blank_line_bytes: int = DEFAULT_MAX_BLANK_LINE_BYTES


def input_limits(env: Mapping[str, str]) -> InputLimits:
    """The input limits set in ``env`` (defaults for those not set); ConfigError for a bad value."""
    raw = env.get(MAX_BLANK_LINE_BYTES_SETTING, str(DEFAULT_MAX_BLANK_LINE_BYTES))
    return InputLimits(max_blank_line_bytes=_int(MAX_BLANK_LINE_BYTES_SETTING, raw, minimum=0))
