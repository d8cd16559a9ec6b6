"""A real ingest worker process for the fault-injection tests.

Runs ``ingest_metadata_blob`` with the settings in its environment, printing ``PUT <seq>`` just
before each queue put so the test can SIGKILL it at a chosen point. The puts themselves are real.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta

from devtools.clock import ShiftedClock
from shared.config import Settings
from shared.delivery import AsyncQueueSink, InlineQueueSink
from shared.ingest import ingest_metadata_blob
from shared.messages import Message
from shared.runtime import Runtime
from shared.sinks import QueueSink

_send = QueueSink._send
_send_async = AsyncQueueSink._send_async
_start_inline = InlineQueueSink._start_put
#: Seconds this worker's clock runs ahead of the wall clock (past the leases of the workers killed before it).
CLOCK_SHIFT_SETTING = "FAULT_WORKER_CLOCK_SHIFT_S"


def _traced_send(self: QueueSink, message: Message) -> None:
    print(f"PUT {message.seq}", flush=True)
    _send(self, message)


async def _traced_send_async(self: AsyncQueueSink, message: Message) -> None:
    print(f"PUT {message.seq}", flush=True)
    await _send_async(self, message)


def _traced_start_inline(self: InlineQueueSink, message: Message) -> None:
    print(f"PUT {message.seq}", flush=True)
    _start_inline(self, message)


def main() -> int:
    QueueSink._send = _traced_send  # type: ignore[method-assign]
    AsyncQueueSink._send_async = _traced_send_async  # type: ignore[method-assign]
    InlineQueueSink._start_put = _traced_start_inline  # type: ignore[method-assign]
    container, blob = sys.argv[1], sys.argv[2]
    clock = ShiftedClock(timedelta(seconds=float(os.environ.get(CLOCK_SHIFT_SETTING, "0"))))
    outcome = ingest_metadata_blob(Runtime(Settings.from_env(), clock=clock), container, blob)
    print(f"OUTCOME {outcome.status} {outcome.reason}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
