"""Timers of the pull model: start every tenant's pipeline run weekly, follow the runs until they end."""

from __future__ import annotations

import logging

import azure.functions as func

from shared.runs import follow_runs, start_runs, summarise
from shared.runtime import get_runtime

bp = func.Blueprint()  # type: ignore[no-untyped-call]
log = logging.getLogger("viva_relay")


@bp.function_name("start_pipeline_runs")
@bp.timer_trigger(arg_name="timer", schedule="%PIPELINE_SCHEDULE%", run_on_startup=False, use_monitor=True)
def start_pipeline_runs(timer: func.TimerRequest) -> None:
    """Start one pipeline run per enabled tenant; one failing tenant never stops the others."""
    if timer.past_due:
        # The host fires once for any number of missed occurrences; starting once is the catch-up.
        log.warning("start_pipeline_runs is past due: starting each tenant's run once now")
    outcomes = start_runs(get_runtime())
    log.info("start_pipeline_runs: %s (past_due=%s)", summarise(outcomes) or "no tenants", timer.past_due)


@bp.function_name("follow_pipeline_runs")
@bp.timer_trigger(arg_name="timer", schedule="%RUN_POLL_SCHEDULE%", run_on_startup=False, use_monitor=True)
def follow_pipeline_runs(timer: func.TimerRequest) -> None:
    """Record how each unfinished run ended, and alert on a succeeded run that brought no drop."""
    outcomes = follow_runs(get_runtime())
    log.info("follow_pipeline_runs: %s (past_due=%s)", summarise(outcomes) or "nothing to follow", timer.past_due)
