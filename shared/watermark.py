"""The checkpoint watermark: the end of the contiguous run of acknowledged messages.

Puts run concurrently and are acknowledged in any order; a resume may only skip the messages that
it and every message before it were acknowledged, so the watermark is the highest ``seq`` of the
contiguous acknowledged prefix (never simply the highest acknowledged ``seq``), and the rows it
covers are the rows up to the end of that message.
"""

from __future__ import annotations


class AckWatermark:
    """Tracks acknowledgements and the contiguous prefix they form (not thread-safe: lock around it)."""

    def __init__(self, seq: int = -1, rows: int = 0) -> None:
        self.seq = seq  # every message up to and including this one is acknowledged
        self.rows = rows  # rows held by the messages up to ``seq``
        self._pending: dict[int, int] = {}  # acknowledged beyond the prefix: seq -> end row

    def ack(self, seq: int, end_row: int) -> None:
        """Record that message ``seq`` (whose rows end at ``end_row``) was acknowledged."""
        if seq <= self.seq:
            return  # a replayed or duplicate acknowledgement changes nothing
        self._pending[seq] = end_row
        while self.seq + 1 in self._pending:
            self.seq += 1
            self.rows = self._pending.pop(self.seq)
