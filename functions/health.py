"""Timer: check the whole fleet daily and log one structured event per open problem (de-duplicated)."""

from __future__ import annotations

import logging

import azure.functions as func

from shared.alerts import announce, announcement_store
from shared.health import check_fleet
from shared.runtime import get_runtime

bp = func.Blueprint()  # type: ignore[no-untyped-call]
log = logging.getLogger("viva_relay")


@bp.function_name("health_check")
@bp.timer_trigger(arg_name="timer", schedule="%HEALTH_SCHEDULE%", run_on_startup=False, use_monitor=True)
def health_check(timer: func.TimerRequest) -> None:
    """Evaluate the health rules; announce new, changed or due problems and the resolved ones."""
    rt = get_runtime()
    health = check_fleet(rt)
    result = announce(health.problems, announcement_store(rt), rt.settings.health_repeat_hours)
    log.info(
        "health_check: %d tenant(s), %d open problem(s): %d announced, %d resolved, %d already announced (past_due=%s)",
        len(health.tenants),
        len(health.problems),
        len(result.announced),
        len(result.resolved),
        result.still_quiet,
        timer.past_due,
    )
