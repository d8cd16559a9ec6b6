"""A real consumer process for the fault tests: ``viva-relay consume --once`` that stops at a chosen point.

At the point named by ``argv[1]`` it prints ``AT <point>`` and sleeps, so the test can SIGKILL it there:

* ``mid-copy``: inside the staging COPY, after the first message's data was written (transaction open);
* ``before-publish``: a drop's staging is committed and the drop is ready, its publish not started;
* ``during-publish``: inside the publish transaction, after the rows were upserted, before the commit.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import psycopg

import shared.consumer.runner
import shared.consumer.store
from viva_relay.cli.main import main as cli_main

POINT = sys.argv[1] if len(sys.argv) > 1 else ""


def _stop_here() -> None:
    print(f"AT {POINT}", flush=True)
    time.sleep(600)


def _install() -> None:
    if POINT == "mid-copy":
        write = psycopg.Copy.write

        def write_then_stop(self: psycopg.Copy, buffer: Any) -> None:
            write(self, buffer)
            _stop_here()

        psycopg.Copy.write = write_then_stop  # type: ignore[method-assign]
    elif POINT == "before-publish":
        publish = shared.consumer.store.publish

        def stop_before(conn: psycopg.Connection, drop_id: str) -> Any:
            _stop_here()
            return publish(conn, drop_id)

        setattr(shared.consumer.runner, "publish", stop_before)  # noqa: B010 - not re-exported on purpose
    elif POINT == "during-publish":
        execute = psycopg.Connection.execute

        def execute_then_stop(self: psycopg.Connection, query: Any, *args: Any, **kwargs: Any) -> Any:
            # The publish transaction removes the staging rows right after its upsert.
            if isinstance(query, str) and query.startswith("DELETE FROM viva_relay.staging WHERE drop_id = %s"):
                _stop_here()
            return execute(self, query, *args, **kwargs)

        psycopg.Connection.execute = execute_then_stop  # type: ignore[method-assign,assignment]


if __name__ == "__main__":
    _install()
    raise SystemExit(cli_main(["consume", "--once", "--json"]))
