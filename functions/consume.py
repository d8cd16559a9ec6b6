"""Queue trigger: the reference consumer, from the downstream queue into PostgreSQL (docs/consumer.md).

Registered only when ``CONSUMER_DATABASE_URL`` is set. A database outage raises, so the host makes the
message visible again and retries it; nothing is acknowledged before its transaction has committed.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping

import azure.functions as func

from shared.config import RELAY_CONNECTION
from shared.consumer import Consumer

bp = func.Blueprint()  # type: ignore[no-untyped-call]
log = logging.getLogger("viva_relay")

_consumer: Consumer | None = None
_lock = threading.Lock()


def get_consumer() -> Consumer:
    """The worker's one consumer; the migrations are applied when it is first used."""
    global _consumer  # noqa: PLW0603 - one consumer (and connection) per worker process
    with _lock:
        if _consumer is None:
            consumer = Consumer.from_env()
            consumer.migrate()
            _consumer = consumer
        return _consumer


@bp.function_name("consume_rows")
@bp.queue_trigger(arg_name="message", queue_name="%DOWNSTREAM_QUEUE%", connection=RELAY_CONNECTION)
def consume_rows(message: func.QueueMessage) -> None:
    """Apply one message (the host has already Base64-decoded it), then publish its drop if it is ready."""
    consumer = get_consumer()
    applied = consumer.apply([message.get_body()])
    # Every ready drop, not only this message's: one left unpublished by a worker that died is picked up.
    published = consumer.publish_ready()
    log.info(
        "consume %s",
        json.dumps(
            {
                "staged": applied.staged,
                "duplicates": applied.duplicates,
                "poisoned": applied.poisoned,
                "published": [p.drop for p in published if p.status == "published"],
            }
        ),
    )


def blueprints(env: Mapping[str, str] | None = None) -> tuple[func.Blueprint, ...]:
    """This blueprint when the consumer's database is configured, else none (the consumer is off)."""
    # Only the one setting is read here: a bad consumer setting must not stop the app from indexing.
    url = (os.environ if env is None else env).get("CONSUMER_DATABASE_URL", "")
    return (bp,) if url.strip() else ()
