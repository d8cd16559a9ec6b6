"""Where rows go: the downstream Storage queue, stdout, or nowhere (benchmarks).

Every sink receives validated rows in order. Packed sinks share :class:`MessagePacker`, so a
replay produces the same messages; ``skip_through`` lets a resumed attempt pack (for determinism)
but not re-send the messages a previous attempt already delivered.
"""

from __future__ import annotations

import functools
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO

from azure.core.exceptions import HttpResponseError
from azure.storage.queue import QueueClient

from .errors import LeaseLost, ReplayMismatch, StoreRejected, TransientError, is_permanent_status
from .messages import Envelope, Message, MessagePacker
from .watermark import AckWatermark


class RowSink(ABC):
    """Receives a drop's rows in order; ``finish`` marks the drop complete downstream."""

    @abstractmethod
    def write(self, rows: list[bytes]) -> None:
        """Take a batch of validated rows (raw JSON object bytes)."""

    @abstractmethod
    def finish(self, summary: dict[str, Any]) -> None:
        """Everything was written and checked: deliver what is pending and the completion."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (after success or failure)."""

    @property
    def delivered_seq(self) -> int:
        """Highest message sequence number such that it and all before it are durably sent."""
        return -1

    @property
    def messages_sent(self) -> int:
        """Messages actually put (not counting skipped replays)."""
        return 0

    @property
    def delivered_rows(self) -> int:
        """Rows held by the messages up to and including ``delivered_seq``."""
        return 0


class NullSink(RowSink):
    """Counts rows and drops them (the decode path of the benchmark)."""

    def __init__(self) -> None:
        self.rows = 0

    def write(self, rows: list[bytes]) -> None:
        """Count the rows."""
        self.rows += len(rows)

    def finish(self, summary: dict[str, Any]) -> None:
        """Nothing to deliver."""


class StreamSink(RowSink):
    """Writes rows as JSON lines to a binary stream (``drop decrypt`` to stdout)."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.rows = 0

    def write(self, rows: list[bytes]) -> None:
        """Write the rows, one per line."""
        if rows:
            self.stream.write(b"\n".join(rows))
            self.stream.write(b"\n")
            self.rows += len(rows)

    def finish(self, summary: dict[str, Any]) -> None:
        """Flush the stream."""
        self.stream.flush()


class PackedSink(RowSink):
    """Packs rows into queue messages; subclasses decide what ``put`` does."""

    def __init__(
        self, envelope: Envelope, encoding: str, *, skip_through: int = -1, skip_rows: int | None = None
    ) -> None:
        self.packer = MessagePacker(envelope, encoding)
        self.skip_through = skip_through
        self.skip_rows = skip_rows
        self.skipped = 0
        self.message_bytes = 0

    @abstractmethod
    def put(self, message: Message) -> None:
        """Send one message (may be asynchronous)."""

    def flush(self) -> None:
        """Wait until every message put so far is durably sent."""

    def _emit(self, message: Message) -> None:
        if message.seq <= self.skip_through and not message.final:
            end = message.first_row + message.row_count
            if message.seq == self.skip_through and self.skip_rows is not None and end != self.skip_rows:
                # The replay does not pack as the checkpointed attempt did: skipping on would lose or
                # repeat rows, so stop and say so instead.
                raise ReplayMismatch(
                    f"resuming after message {message.seq}: it now ends at row {end}, but the checkpoint"
                    f" recorded row {self.skip_rows}; the drop must be re-sent from the start by an operator"
                )
            self.skipped += 1
            return
        self.message_bytes += len(message.payload)
        self.put(message)

    def write(self, rows: list[bytes]) -> None:
        """Pack rows; put every full message."""
        for message in self.packer.add(rows):
            self._emit(message)

    def finish(self, summary: dict[str, Any]) -> None:
        """Put the last rows, wait for them, then put the completion message and wait again."""
        for message in self.packer.finish():
            self._emit(message)
        self.flush()
        self._emit(self.packer.complete_message(summary))
        self.flush()


class CountingSink(PackedSink):
    """Packs and counts messages without sending them (the packed path of the benchmark)."""

    def __init__(self, envelope: Envelope, encoding: str) -> None:
        super().__init__(envelope, encoding)
        self.messages: int = 0
        self._last = -1

    def put(self, message: Message) -> None:
        """Count the message."""
        self.messages += 1
        self._last = message.seq

    @property
    def delivered_seq(self) -> int:
        """Everything counted is 'delivered'."""
        return self._last

    @property
    def messages_sent(self) -> int:
        """Messages packed."""
        return self.messages


class QueueSink(PackedSink):
    """Puts messages into an Azure Storage queue with a bounded number of concurrent puts.

    The watermark ``delivered_seq`` only advances over a contiguous run of acknowledged puts,
    which is what the ledger checkpoints.
    """

    def __init__(
        self,
        queue: QueueClient,
        envelope: Envelope,
        encoding: str,
        *,
        time_to_live: int = -1,
        concurrency: int = 8,
        skip_through: int = -1,
        skip_rows: int | None = None,
        before_put: Callable[[Message], None] | None = None,
    ) -> None:
        super().__init__(envelope, encoding, skip_through=skip_through, skip_rows=skip_rows)
        self._mark = AckWatermark(skip_through, skip_rows or 0)
        self.queue = queue
        self.time_to_live = time_to_live
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="queue-put")
        self._window = concurrency * 2
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # notified when a put ends
        self._outstanding = 0  # puts started (their room taken) and not yet ended
        self._error: BaseException | None = None
        self._sent = 0
        self._before_put = before_put

    def _send(self, message: Message) -> None:
        if self._before_put is not None:
            self._before_put(message)
        self._sdk_put(message)

    def _sdk_put(self, message: Message) -> None:
        """Put ``message`` with the SDK's ``send_message`` (its retries, its errors)."""
        self.queue.send_message(message.payload, time_to_live=self.time_to_live)

    def _submit(self, message: Message) -> Future[None]:
        """Start one put (on the pool); its Future completes when the queue acknowledged it."""
        return self._pool.submit(self._send, message)

    def _done(self, message: Message, future: Future[None]) -> None:
        self._put_ended(message, TransientError("queue put cancelled") if future.cancelled() else future.exception())

    def _put_ended(self, message: Message, exc: BaseException | None) -> None:
        """Record how a put ended (on any thread): the first failure, or the acknowledgement."""
        with self._lock:
            if exc is not None:
                self._error = self._error or exc
            else:
                self._sent += 1
                self._mark.ack(message.seq, message.first_row + message.row_count)
            self._free_room()

    def _free_room(self) -> None:
        """A put ended or never started: its room in the window is free (call with the lock held)."""
        self._outstanding -= 1
        self._room.notify_all()

    def _has_room_for(self, message: Message) -> bool:
        # The window bounds what runs ahead of the watermark, not only what is in flight: behind one
        # stalled put, later ones must not race on, or a resume would re-send more than the window.
        return self._error is not None or (
            self._outstanding < self._window and message.seq - self._mark.seq <= self._window
        )

    def _raise_if_failed(self) -> None:
        err = self._error
        if err is None:
            return
        if isinstance(err, HttpResponseError) and is_permanent_status(err.status_code):
            raise StoreRejected(f"the queue refused a message: HTTP {err.status_code} {err.reason}") from err
        if isinstance(err, HttpResponseError):
            raise TransientError(f"queue put failed with HTTP {err.status_code}: {err.reason}") from err
        if isinstance(err, LeaseLost):
            raise err
        # Any other failure of a put (the SDK's own errors included) leaves the message's fate
        # unknown; replaying from the checkpoint is always safe, so it is transient.
        raise TransientError(f"queue put failed: {type(err).__name__}: {err}") from err

    def put(self, message: Message) -> None:
        """Submit a put; blocks while the window is full (see :meth:`_has_room_for`); raises an earlier failure."""
        self._raise_if_failed()
        self._take_room(message)
        try:
            self._raise_if_failed()
            self._start_put(message)
        except BaseException:
            with self._lock:
                self._free_room()
            raise

    def _take_room(self, message: Message) -> None:
        """Wait until the window has room for ``message`` (or a put failed), and take it."""
        with self._room:
            if not self._has_room_for(message):
                self._before_waiting()
                self._room.wait_for(lambda: self._has_room_for(message))
            self._outstanding += 1

    def _before_waiting(self) -> None:
        """Called (under the lock) before the caller blocks on the window: a sink may start what it holds."""

    def _start_put(self, message: Message) -> None:
        """Start the put (on the pool); the room is taken."""
        self._submit(message).add_done_callback(functools.partial(self._done, message))

    def _wait_ended(self) -> None:
        """Wait until every put started has ended."""
        with self._room:
            if self._outstanding:
                self._before_waiting()
            self._room.wait_for(lambda: not self._outstanding)

    def flush(self) -> None:
        """Wait for every put in flight, then raise the first failure, if any."""
        self._wait_ended()
        self._raise_if_failed()

    def close(self) -> None:
        """Stop the put threads (waits for puts in flight; they are idempotent downstream)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    @property
    def delivered_seq(self) -> int:
        """Contiguous acknowledged watermark."""
        with self._lock:
            return self._mark.seq

    @property
    def delivered_rows(self) -> int:
        """Rows held by the messages up to the watermark."""
        with self._lock:
            return self._mark.rows

    @property
    def messages_sent(self) -> int:
        """Puts acknowledged by the queue."""
        with self._lock:
            return self._sent
