"""``viva-relay consume``: run the reference consumer as a worker, from the queue into PostgreSQL.

The same library as the ``consume_rows`` Function (``shared.consumer``). ``--once`` drains the queue
and exits; without it the worker keeps polling until interrupted. ``--migrate`` applies the database
migrations first (with ``--migrate`` alone and no queue work, use ``--migrate --no-drain``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from shared.config import ConsumerSettings
from shared.consumer import Consumer, DrainReport, drain
from shared.errors import ConfigError
from shared.runtime import Runtime

from . import common


def register(sub: Any) -> None:
    """Add the ``consume`` command."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "consume",
        help="consume the downstream queue into PostgreSQL (the reference consumer)",
        description="Read the downstream queue (DOWNSTREAM_QUEUE in RelayStorage) and write every row once into "
        "PostgreSQL (CONSUMER_DATABASE_URL); a drop becomes visible in its published table only when complete. "
        "See docs/consumer.md.",
    )
    parser.add_argument("--once", action="store_true", help="drain the queue, publish what is ready, then exit")
    parser.add_argument("--migrate", action="store_true", help="apply the database migrations first")
    parser.add_argument("--no-drain", action="store_true", help="do not read the queue (e.g. with --migrate)")
    parser.add_argument("--progress", action="store_true", help="show progress even when stderr is not a terminal")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    common.add_settings_option(parser)
    parser.set_defaults(handler=consume_command)


def _summary(report: DrainReport) -> dict[str, Any]:
    published = [p for p in report.published if p.status == "published"]
    return {
        "messages": report.messages,
        "staged": report.applied.staged,
        "rows_staged": report.applied.rows_staged,
        "duplicates": report.applied.duplicates,
        "poisoned": report.applied.poisoned,
        "published_drops": [p.drop for p in published],
        "published_rows": sum(p.rows for p in published),
        "failed_drops": [p.drop for p in report.published if p.status == "failed"],
        "seconds": round(report.seconds, 3),
    }


def consume_command(args: argparse.Namespace) -> int:
    """Migrate and/or drain the queue; one summary line at the end."""
    env = common.load_env(args)
    settings = ConsumerSettings.from_env(env)
    if not settings.enabled:
        raise ConfigError("CONSUMER_DATABASE_URL is not set (a libpq connection string of the PostgreSQL database)")
    consumer = Consumer(settings)
    try:
        if args.migrate:
            applied = consumer.migrate()
            print(f"migrations applied: {', '.join(applied) if applied else 'none (up to date)'}", file=sys.stderr)
        else:
            missing = consumer.pending_migrations()
            if missing:
                raise ConfigError(
                    f"the database lacks migrations {', '.join(missing)}: run `viva-relay consume --migrate`"
                )
        if args.no_drain:
            return common.EXIT_OK
        runtime = common.runtime_from(args)
        report = _drain(consumer, runtime, settings, args)
    finally:
        consumer.close()
    summary = _summary(report)
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"consumed {summary['messages']} messages: {summary['staged']} staged ({summary['rows_staged']} rows),"
            f" {summary['duplicates']} duplicates, {summary['poisoned']} poison;"
            f" published {len(summary['published_drops'])} drops ({summary['published_rows']} rows)"
            + (f"; failed {', '.join(summary['failed_drops'])}" if summary["failed_drops"] else "")
        )
    return common.EXIT_PROBLEM if summary["failed_drops"] else common.EXIT_OK


def _drain(consumer: Consumer, runtime: Runtime, settings: ConsumerSettings, args: argparse.Namespace) -> DrainReport:
    queue = runtime.queue_named(settings.queue)
    progress = common.Progress("consume", force=args.progress)

    def show(report: DrainReport) -> None:
        progress.update(report.messages, "messages")

    try:
        report = drain(consumer, queue, once=args.once, on_progress=show)
    except KeyboardInterrupt:
        progress.close()
        raise
    progress.close(report.messages, "messages")
    return report
