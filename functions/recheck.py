"""Timer: re-check waiting drops (Metadata.json not ready) and drops whose attempt died."""

from __future__ import annotations

import logging

import azure.functions as func

from shared.ingest import recheck_drops as recheck
from shared.runtime import get_runtime

bp = func.Blueprint()  # type: ignore[no-untyped-call]
log = logging.getLogger("viva_relay")


@bp.function_name("recheck_drops")
@bp.timer_trigger(arg_name="timer", schedule="%RECHECK_SCHEDULE%", run_on_startup=False, use_monitor=True)
def recheck_drops(timer: func.TimerRequest) -> None:
    """Run every waiting or stranded drop again; one failing drop never stops the others."""
    outcomes = recheck(get_runtime())
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    log.info("recheck: %s (past_due=%s)", counts or "nothing to do", timer.past_due)
