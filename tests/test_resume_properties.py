"""Checkpoint and resume as properties: the watermark is the contiguous acknowledged prefix; resumes skip no row."""

from __future__ import annotations

import json
import random
from typing import Any

from hypothesis import event, given, note, settings
from hypothesis import strategies as st

from shared.messages import Envelope, Message, decode_message
from shared.sinks import PackedSink
from shared.watermark import AckWatermark

ENVELOPE = Envelope("t", "d", "tbl")
FAST = settings(max_examples=100, deadline=None)


def contiguous_prefix(acked: set[int]) -> int:
    seq = -1
    while seq + 1 in acked:
        seq += 1
    return seq


@FAST
@given(data=st.data(), n=st.integers(min_value=0, max_value=40))
def test_the_watermark_is_always_the_contiguous_acknowledged_prefix(data: st.DataObject, n: int) -> None:
    order = data.draw(st.permutations(range(n)))
    failed = data.draw(st.sets(st.sampled_from(range(n))) if n else st.just(set()))
    ends = {seq: (seq + 1) * 10 for seq in range(n)}
    mark = AckWatermark()
    acked: set[int] = set()
    for seq in order:
        if seq in failed:
            continue  # this put failed: never acknowledged
        mark.ack(seq, ends[seq])
        acked.add(seq)
        expected = contiguous_prefix(acked)
        assert mark.seq == expected
        assert mark.rows == (ends[expected] if expected >= 0 else 0)


@FAST
@given(start=st.integers(min_value=-1, max_value=5), extra=st.lists(st.integers(min_value=-1, max_value=12)))
def test_a_watermark_resumed_from_a_checkpoint_only_moves_forward(start: int, extra: list[int]) -> None:
    mark = AckWatermark(start, 7)
    for seq in extra:
        before = mark.seq
        mark.ack(seq, 100 + seq)
        assert mark.seq >= before
    assert mark.seq >= start


class RecordingSink(PackedSink):
    """A sink whose puts succeed or fail as the test decides; the watermark follows what was acknowledged."""

    def __init__(self, encoding: str, outcomes: list[bool] | None = None, **kw: Any) -> None:
        super().__init__(ENVELOPE, encoding, **kw)
        self.outcomes = outcomes
        self.acked: list[Message] = []
        self.mark = AckWatermark(kw.get("skip_through", -1), kw.get("skip_rows") or 0)

    def put(self, message: Message) -> None:
        # Outcomes drawn for the first puts; every put after them is acknowledged.
        ok = self.outcomes.pop(0) if self.outcomes else True
        if ok:
            self.acked.append(message)
            self.mark.ack(message.seq, message.first_row + message.row_count)

    @property
    def delivered_seq(self) -> int:
        return self.mark.seq


def row_bytes(i: int, width: int) -> bytes:
    # Incompressible padding (fixed per row), so that gzip messages fill up as quickly as the others.
    return json.dumps({"i": i, "pad": random.Random(i).randbytes(width).hex()}).encode()


@settings(max_examples=100, deadline=None)
@given(
    data=st.data(),
    n_rows=st.integers(min_value=50, max_value=400),
    width=st.sampled_from([40, 400, 1500, 4000]),
    batch=st.integers(min_value=1, max_value=97),
    encoding=st.sampled_from(["json", "base64", "gzip-base64"]),
)
def test_a_resume_from_the_checkpoint_never_skips_a_row(
    data: st.DataObject, n_rows: int, width: int, batch: int, encoding: str
) -> None:
    rows = [row_bytes(i, width if i % 3 else width // 7) for i in range(n_rows)]
    # Attempt 1: some puts fail, and the worker dies after some batches.
    outcomes = data.draw(st.lists(st.sampled_from([True, True, True, False]), max_size=60))
    died_after = data.draw(st.one_of(st.integers(0, n_rows), st.integers(n_rows // 2, n_rows)))
    first = RecordingSink(encoding, outcomes=list(outcomes))
    for start in range(0, died_after, batch):
        first.write(rows[start : min(start + batch, died_after)])
    checkpoint = (first.mark.seq, first.mark.rows)
    note(f"checkpoint {checkpoint}")
    event("resumed after a checkpoint" if checkpoint[0] >= 0 else "resumed from the start")

    # Attempt 2 resumes from the checkpoint with every put succeeding.
    second = RecordingSink(
        encoding, skip_through=checkpoint[0], skip_rows=checkpoint[1] if checkpoint[0] >= 0 else None
    )
    for start in range(0, n_rows, batch):
        second.write(rows[start : start + batch])
    second.finish({})

    assert all(m.seq > checkpoint[0] or m.final for m in second.acked)  # nothing checkpointed is re-sent
    delivered: dict[int, list[Any]] = {}
    for m in first.acked + second.acked:
        if not m.final:
            delivered.setdefault(m.seq, decode_message(m.payload)["rows"])
    final = [m for m in second.acked if m.final]
    assert len(final) == 1 and sorted(delivered) == list(range(final[0].seq))  # every seq, once
    got = [row for seq in sorted(delivered) for row in delivered[seq]]
    assert got == [json.loads(r) for r in rows]  # every row, in order, none skipped
