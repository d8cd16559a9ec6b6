"""Timer: delete delivered drops the immediate pass missed (and failed ones past retention); report orphans."""

from __future__ import annotations

import json
import logging

import azure.functions as func

from shared.cleanup import cleanup_drops as run_cleanup
from shared.runtime import get_runtime
from shared.status import Status

bp = func.Blueprint()  # type: ignore[no-untyped-call]
log = logging.getLogger("viva_relay")


@bp.function_name("cleanup_drops")
@bp.timer_trigger(arg_name="timer", schedule="%CLEANUP_SCHEDULE%", run_on_startup=False, use_monitor=True)
def cleanup_drops(timer: func.TimerRequest) -> None:
    """Run the cleanup; one problem drop never stops the others. Orphans are logged, never deleted."""
    report = run_cleanup(get_runtime())
    log.info("cleanup: %s (past_due=%s)", json.dumps(report.counts()), timer.past_due)
    for o in report.orphans:
        log.warning(
            "orphan drop %s (%s) at %s/%s: %d blob(s), %d bytes, modified %s; not deleted (drops delete-orphans)",
            o.drop_id,
            o.kind,
            o.container,
            o.metadata_path,
            o.blobs,
            o.bytes,
            o.last_modified.isoformat(),
        )
    for f in report.strays:
        log.warning(
            "stray blobs in %s/%s (no drop accounts for them): %d blob(s), %d bytes, newest %s; not deleted",
            f.container,
            f.folder,
            len(f.blobs),
            f.bytes,
            f.newest.isoformat(),
        )
    if not report.ok:
        problems = [d.as_dict() for d in report.drops if d.status in (Status.REFUSED, Status.ERROR)]
        log.error("cleanup problems: %s %s", json.dumps(problems, default=str), report.orphan_error)
