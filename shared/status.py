"""One list of outcome statuses, and one mapping from a status to the CLI's exit code.

Ingest, reprocess, cleanup, the pipeline runs and the CLI report what happened with these values.
They are ``StrEnum`` members, so a status still equals (and prints, logs and serialises as) the string
it always was: ``Status.DELIVERED == "delivered"``.

The exit codes the CLI returns live here too. :data:`EXIT_CODES` gives each status its code; a
command that reads some statuses differently says so in :data:`COMMAND_EXIT_CODES`, which is the only
other place an exit code is chosen for an outcome. A new status needs an entry in :data:`EXIT_CODES`
(a test checks it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import IntEnum, StrEnum


class ExitCode(IntEnum):
    """The CLI's exit codes."""

    OK = 0
    PROBLEM = 1  # a bad drop, a failed check, something found wrong
    USAGE = 2  # argparse's own code for bad arguments
    CONFIG = 3  # missing or invalid settings
    TRANSIENT = 4  # Azure unreachable or throttled: try again later


class Status(StrEnum):
    """What one ingest, reprocess, cleanup or pipeline-run step did."""

    # ingest (and reprocess, which runs the ingest)
    DELIVERED = "delivered"  # every row is in the queue
    SKIPPED = "skipped"  # nothing to do: already settled, or not ours (claimed elsewhere, not yet due)
    WAITING = "waiting"  # not ready (parts or the key missing): the re-check timer tries again
    RETRYING = "retrying"  # a transient failure: the lease is given back, the re-check timer resumes it
    FAILED = "failed"  # the drop is bad (or the pipeline run failed): a person must act
    ERROR = "error"  # this attempt could not even record its result; the next run retries
    IGNORED = "ignored"  # the event is not about a drop (another container, not a Metadata.json)
    # reprocess
    REFUSED = "refused"  # asked for something the drop's state does not allow; nothing changed
    NOT_FOUND = "not_found"  # no such drop
    # cleanup
    DELETED = "deleted"
    WOULD_DELETE = "would_delete"  # dry run
    # pipeline runs (runs start / runs follow)
    STARTED = "started"
    UNCHANGED = "unchanged"
    PROGRESS = "progress"  # a new non-final Data Factory status
    SUCCEEDED = "succeeded"
    CANCELLED = "cancelled"
    LOST = "lost"  # Data Factory no longer knows the run
    DROP_FOUND = "drop_found"
    NO_DROP_ALERT = "no_drop_alert"  # the run succeeded but no drop arrived in time
    WAITING_FOR_DROP = "waiting_for_drop"
    DROP = "drop"  # runs watch: the state of a run's drops changed


#: The exit code of a command whose outcome has this status (the worst one counts; see exit_code).
EXIT_CODES: Mapping[Status, ExitCode] = {
    Status.DELIVERED: ExitCode.OK,
    Status.SKIPPED: ExitCode.OK,
    Status.WAITING: ExitCode.TRANSIENT,
    Status.RETRYING: ExitCode.TRANSIENT,
    Status.FAILED: ExitCode.PROBLEM,
    Status.ERROR: ExitCode.TRANSIENT,
    Status.IGNORED: ExitCode.TRANSIENT,
    Status.REFUSED: ExitCode.PROBLEM,
    Status.NOT_FOUND: ExitCode.PROBLEM,
    Status.DELETED: ExitCode.OK,
    Status.WOULD_DELETE: ExitCode.OK,
    Status.STARTED: ExitCode.OK,
    Status.UNCHANGED: ExitCode.OK,
    Status.PROGRESS: ExitCode.OK,
    Status.SUCCEEDED: ExitCode.OK,
    Status.CANCELLED: ExitCode.OK,
    Status.LOST: ExitCode.PROBLEM,
    Status.DROP_FOUND: ExitCode.OK,
    Status.NO_DROP_ALERT: ExitCode.PROBLEM,
    Status.WAITING_FOR_DROP: ExitCode.OK,
    Status.DROP: ExitCode.OK,
}

_EVERY_STATUS_BUT_DELIVERED: Mapping[Status, ExitCode] = {
    s: ExitCode.PROBLEM for s in Status if s is not Status.DELIVERED
}

#: Where a command reads a status differently from EXIT_CODES (kept exactly as the commands behaved
#: before the statuses had one home). Commands not listed use EXIT_CODES alone.
COMMAND_EXIT_CODES: Mapping[str, Mapping[Status, ExitCode]] = {
    # "exit 0 only when it is delivered": a skipped or waiting reprocess still needs a person.
    "drops reprocess": _EVERY_STATUS_BUT_DELIVERED,
    # a storage or ledger error during cleanup is reported as a problem to look at
    "drops cleanup": {Status.ERROR: ExitCode.PROBLEM},
    "drops delete-orphans": {Status.ERROR: ExitCode.PROBLEM, Status.REFUSED: ExitCode.OK},
    # a poll that could not check a run is a problem of this poll
    "runs follow": {Status.ERROR: ExitCode.PROBLEM},
}

#: Which code wins when outcomes disagree: a problem a person must fix outranks "try again later".
_SEVERITY = (ExitCode.OK, ExitCode.TRANSIENT, ExitCode.PROBLEM, ExitCode.CONFIG, ExitCode.USAGE)


def exit_code(statuses: Iterable[str], command: str = "") -> ExitCode:
    """The exit code for a command whose outcomes have ``statuses`` (OK when there is none).

    ``command`` names the command (e.g. ``"drops reprocess"``) so that its entry in
    COMMAND_EXIT_CODES, if any, is applied. An unknown status is a ValueError: every status has a code.
    """
    special = COMMAND_EXIT_CODES.get(command, {})
    codes = [special.get(Status(s), EXIT_CODES[Status(s)]) for s in statuses]
    return max(codes, key=_SEVERITY.index, default=ExitCode.OK)
