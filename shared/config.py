"""Typed settings, read once from the environment (app settings / local.settings.json).

Every name here is listed in ``local.settings.json.example`` and set by ``infra/main.json``.
Connections follow the Functions convention: a setting named after the connection holds a
connection string, or ``<name>__blobServiceUri`` / ``__queueServiceUri`` / ``__tableServiceUri``
(or ``__serviceUri``/``__accountName``) select managed identity via ``DefaultAzureCredential``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from .encodings import ENCODINGS
from .errors import ConfigError
from .preflight import check_vault_url

#: Connection names used by the triggers (``connection=`` on the decorators) and by the library.
LANDING_CONNECTION: Final = "LandingStorage"
RELAY_CONNECTION: Final = "RelayStorage"

MESSAGE_ENCODINGS: Final = tuple(ENCODINGS)  # the registry in shared/encodings.py, default first
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
    # Fleet health (shared/health.py): thresholds of the rules and the alerts' repeat window.
    consent_warn_days: int = 30
    key_warn_days: int = 30
    run_late_hours: int = 24
    drop_waiting_alert_hours: int = 12
    queue_backlog_alert_messages: int = 50000
    queue_age_alert_hours: int = 24
    health_repeat_hours: int = 72
    health_table: str = "VivaRelayHealth"
    env: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    # Data contract and row transforms (docs/contract.md); read by _contract_settings below.
    schema_check: bool = True
    schema_policy: str = "report"
    schema_check_every: int = 256
    typed_rows: bool = False
    row_columns: Mapping[str, tuple[str, ...]] = field(default_factory=dict, compare=False)
    pseudonymise: bool = False
    pseudonym_secret_name: str = "viva-relay-pseudonym"  # noqa: S105 - a secret's name, not a secret

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
        key_source = parse_key_source(get("KEY_SOURCE", d.key_source))
        if not key_source:  # set but empty: the app needs a choice (the CLI may infer one)
            raise ConfigError("KEY_SOURCE must be keyvault or folder, not ''")
        vault = get("KEY_VAULT_URL", "").strip()
        if vault:
            check_vault_url(vault, "KEY_VAULT_URL")
        algorithms = parse_unwrap_algorithms(get("UNWRAP_ALGORITHMS", ",".join(d.unwrap_algorithms)))
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
            **_health_settings(get, d),
            env=dict(e),
            **_contract_settings(e),
        )


# -- the parsing rules the settings and the CLI share (one home each) ----------------------------------


def parse_key_source(value: str) -> str:
    """KEY_SOURCE, lower-cased: keyvault, folder, or "" when unset; ConfigError for anything else."""
    source = value.strip().lower()
    if source and source not in KEY_SOURCES:
        raise ConfigError(f"KEY_SOURCE must be keyvault or folder, not {source!r}")
    return source


def parse_unwrap_algorithms(text: str) -> tuple[str, ...]:
    """UNWRAP_ALGORITHMS: comma-separated RSA paddings, in order; ConfigError for an unknown one or none."""
    algorithms = tuple(a.strip().upper() for a in text.split(",") if a.strip())
    for a in algorithms:
        if a not in KNOWN_UNWRAP_ALGORITHMS:
            raise ConfigError(f"UNWRAP_ALGORITHMS: unknown algorithm {a!r}")
    if not algorithms:
        raise ConfigError("UNWRAP_ALGORITHMS must name at least one algorithm")
    return algorithms


# --- Reference consumer (queue -> PostgreSQL); off unless CONSUMER_DATABASE_URL is set ---------------

#: Scope of the Entra access token that Azure Database for PostgreSQL accepts as a password.
POSTGRES_ENTRA_SCOPE: Final = "https://ossrdbms-aad.database.windows.net/.default"


@dataclass(frozen=True)
class ConsumerSettings:
    """Settings of the reference consumer (``consume_rows`` and ``viva-relay consume``)."""

    database_url: str = ""
    entra_auth: bool = False
    queue: str = "viva-insights-rows"
    batch_messages: int = 32
    visibility_timeout_seconds: int = 300

    @property
    def enabled(self) -> bool:
        """The consumer runs only when a database is configured."""
        return bool(self.database_url)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ConsumerSettings:
        """Read ``CONSUMER_*`` settings (the queue is ``DOWNSTREAM_QUEUE``); raise :class:`ConfigError`."""
        e = os.environ if env is None else env
        return cls(
            database_url=e.get("CONSUMER_DATABASE_URL", "").strip(),
            entra_auth=_bool("CONSUMER_DATABASE_ENTRA_AUTH", e.get("CONSUMER_DATABASE_ENTRA_AUTH", "false")),
            queue=_name("DOWNSTREAM_QUEUE", e.get("DOWNSTREAM_QUEUE", cls.queue), _QUEUE_RE, "queue"),
            batch_messages=min(32, _int("CONSUMER_BATCH_MESSAGES", e.get("CONSUMER_BATCH_MESSAGES", "32"), minimum=1)),
            visibility_timeout_seconds=_int(
                "CONSUMER_VISIBILITY_TIMEOUT_SECONDS", e.get("CONSUMER_VISIBILITY_TIMEOUT_SECONDS", "300"), minimum=1
            ),
        )


# -- fleet health ------------------------------------------------------------------------------
def _health_settings(get: Callable[[str, str], str], d: Settings) -> dict[str, Any]:
    """The thresholds of the health rules (``viva-relay status`` and the ``health_check`` timer)."""

    def whole(name: str, default: int, minimum: int) -> int:
        return _int(name, get(name, str(default)), minimum=minimum)

    return {
        "consent_warn_days": whole("CONSENT_WARN_DAYS", d.consent_warn_days, 0),
        "key_warn_days": whole("KEY_WARN_DAYS", d.key_warn_days, 0),
        "run_late_hours": whole("RUN_LATE_HOURS", d.run_late_hours, 1),
        "drop_waiting_alert_hours": whole("DROP_WAITING_ALERT_HOURS", d.drop_waiting_alert_hours, 1),
        "queue_backlog_alert_messages": whole("QUEUE_BACKLOG_ALERT_MESSAGES", d.queue_backlog_alert_messages, 1),
        "queue_age_alert_hours": whole("QUEUE_AGE_ALERT_HOURS", d.queue_age_alert_hours, 1),
        "health_repeat_hours": whole("HEALTH_REPEAT_HOURS", d.health_repeat_hours, 1),
        "health_table": _name("HEALTH_TABLE", get("HEALTH_TABLE", d.health_table), _TABLE_RE, "table"),
    }


# --- data contract and row transforms (docs/contract.md) ---------------------------------------

SCHEMA_POLICIES: Final = ("report", "fail")
_SECRET_NAME_RE = re.compile(r"^[0-9A-Za-z-]{1,127}$")


def _row_columns(raw: str) -> dict[str, tuple[str, ...]]:
    """``ROW_COLUMNS``: a JSON object of TableName -> list of column names (names may hold commas)."""
    if not raw.strip():
        return {}
    try:
        doc = json.loads(raw)
    except ValueError:
        raise ConfigError('ROW_COLUMNS must be a JSON object such as {"<TableName>": ["<column>", ...]}') from None
    if not isinstance(doc, dict) or not all(
        isinstance(v, list) and v and all(isinstance(c, str) and c for c in v) for v in doc.values()
    ):
        raise ConfigError("ROW_COLUMNS must map each TableName to a non-empty list of column names")
    allowlists = {str(k): tuple(dict.fromkeys(v)) for k, v in doc.items()}
    from .transforms import check_allowlists

    problems = check_allowlists(allowlists)
    if problems:
        raise ConfigError("ROW_COLUMNS names columns the dataset does not have: " + "; ".join(problems))
    return allowlists


def _contract_settings(e: Mapping[str, str]) -> dict[str, Any]:
    """The contract and transform settings, validated (a bad one is a ConfigError at start)."""
    policy = e.get("SCHEMA_POLICY", "report").strip().lower()
    if policy not in SCHEMA_POLICIES:
        raise ConfigError(f"SCHEMA_POLICY must be report or fail, not {policy!r}")
    secret_name = e.get("PSEUDONYM_SECRET_NAME", Settings.pseudonym_secret_name).strip()
    if not _SECRET_NAME_RE.match(secret_name):
        raise ConfigError(f"PSEUDONYM_SECRET_NAME={secret_name!r} is not a valid Key Vault secret name")
    return {
        "schema_check": _bool("SCHEMA_CHECK", e.get("SCHEMA_CHECK", "true")),
        "schema_policy": policy,
        "schema_check_every": _int("SCHEMA_CHECK_EVERY", e.get("SCHEMA_CHECK_EVERY", "256"), minimum=1),
        "typed_rows": _bool("TYPED_ROWS", e.get("TYPED_ROWS", "false")),
        "row_columns": _row_columns(e.get("ROW_COLUMNS", "")),
        "pseudonymise": _bool("PSEUDONYMISE", e.get("PSEUDONYMISE", "false")),
        "pseudonym_secret_name": secret_name,
    }


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
