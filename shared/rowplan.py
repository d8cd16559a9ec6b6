"""Which row stages a drop gets: the settings in force now, or those recorded at its first attempt.

The one place that turns settings into a :class:`~shared.contract.ContractCheck` and the
:class:`~shared.transforms.RowStage` list that :func:`shared.ingest.stream_drop` runs, and that
turns a schema report into the ledger's ``SchemaDrift``/``SchemaReport`` columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from .contract import ContractCheck, report_json
from .ledger import WAITING, DropRecord
from .metadata import DropMetadata
from .runtime import Runtime
from .transforms import RowSettings, RowStage, RowTransformer, row_columns_for

#: The drop record's field holding the recorded :class:`RowSettings` of a drop (column RowSettings).
RECORDED = "row_settings"


@dataclass
class RowPlan:
    """The contract check (or None) and the transforms of one drop's attempt."""

    settings: RowSettings
    check: ContractCheck | None = None
    stages: list[RowStage] = field(default_factory=list)


def settings_now(rt: Runtime, table: str) -> RowSettings:
    """The row settings in force for a new drop of ``table``.

    With pseudonymisation on this reads the partner secret (its current version): a missing secret is
    a ConfigError before the drop is touched.
    """
    s = rt.settings
    version = rt.pseudonymiser().version if s.pseudonymise else ""
    return RowSettings(
        policy=s.schema_policy,
        check=s.schema_check,
        check_every=s.schema_check_every,
        typed=s.typed_rows,
        columns=row_columns_for(table, s.row_columns),
        pseudonymise=s.pseudonymise,
        secret_name=s.pseudonym_secret_name if s.pseudonymise else "",
        secret_version=version,
    )


def recorded_or(record: DropRecord, current: RowSettings) -> RowSettings:
    """The settings recorded on the drop, else ``current`` (its first attempt)."""
    text = record.row_settings
    return RowSettings.from_json(text) if text else current


def adopt_current_policy(rt: Runtime, record: DropRecord) -> DropRecord | None:
    """Before an operator's reprocess: the drop keeps its recorded row settings but takes today's
    ``SCHEMA_POLICY`` (the policy changes no row, so the re-sent messages stay identical), so that a
    drop failed under ``fail`` can be accepted with ``report``."""
    text = record.row_settings
    if not text:
        return record
    wanted = replace(RowSettings.from_json(text), policy=rt.settings.schema_policy).to_json()
    return rt.ledger.update_if(record, lambda row: row.state == WAITING, {RECORDED: wanted})


def plan_for(rt: Runtime | None, md: DropMetadata, settings: RowSettings) -> RowPlan:
    """Build the check and the stages ``settings`` ask for."""
    check = ContractCheck(md, policy=settings.policy, sample_every=settings.check_every) if settings.check else None
    stages: list[RowStage] = []
    if settings.transforms:
        pseudonymiser = None
        if settings.pseudonymise:
            if rt is None:
                raise ValueError("pseudonymisation needs the runtime's secret")
            pseudonymiser = rt.pseudonymiser(settings.secret_version)
        stages.append(RowTransformer(md.table_name, settings, pseudonymiser))
    return RowPlan(settings, check, stages)


def schema_columns(report: dict[str, Any] | None) -> dict[str, Any]:
    """The drop record's fields for a schema report (none when the check was off)."""
    if report is None:
        return {}
    return {"schema_drift": bool(report.get("drift")), "schema_report": report_json(report)}
