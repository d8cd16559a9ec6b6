"""The background process of ``make dev``: Key Vault and Data Factory stand-ins plus event delivery.

Started by :mod:`devtools.dev` with Azurite's connection string; writes ``services.json`` (the
app settings that reach it) into its state folder once it serves, and removes it on SIGTERM.
Its log is ``services.log`` beside it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from .localcloud import EventDelivery, LocalCloud

SERVICES_FILE = "services.json"


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m devtools.devservices", description=__doc__)
    parser.add_argument("--dir", type=Path, required=True, help="state folder (services.json, CA bundle)")
    parser.add_argument("--connection-string", required=True, help="Azurite's connection string")
    parser.add_argument("--container", default="datasets", help="the landing container (LANDING_CONTAINER)")
    parser.add_argument("--rows", type=int, default=1000, help="rows in each pipeline run's drop")
    parser.add_argument(
        "--step-seconds", type=float, default=5.0, help="how long a new run stays Queued, and then at least InProgress"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    state = args.dir.resolve()
    with LocalCloud(
        args.connection_string,
        landing_container=args.container,
        rows=args.rows,
        step_seconds=args.step_seconds,
        state_dir=state,
    ) as cloud:
        settings = cloud.settings()
        os.environ.update(settings)  # the ingest function reads its settings from the environment
        events = EventDelivery().start()
        target = state / SERVICES_FILE
        partial = target.with_suffix(".tmp")
        partial.write_text(json.dumps({"pid": os.getpid(), "settings": settings}, indent=2))
        partial.replace(target)
        logging.info("serving: Key Vault %s, Data Factory %s", cloud.vault.url, cloud.factory.url)
        stop.wait()
        target.unlink(missing_ok=True)
        events.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
