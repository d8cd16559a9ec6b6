"""`make demo` keeps working: the whole weekly cycle on a small drop, in a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_delivers_and_prints_what_a_partner_wants_to_see() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "devtools.demo"],
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
        cwd=ROOT,
        env={**os.environ, "DEMO_ROWS": "700"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert re.search(r"run\s+[0-9a-f-]{36} started by the schedule timer", out)
    assert "pipeline  Queued -> InProgress -> Succeeded" in out
    assert re.search(r"drop\s+datasets/[0-9a-f-]{36}/VivaInsights/[0-9a-f-]{36} \(2 blobs", out)
    assert re.search(r"drop id\s+d[0-9a-f]{31}", out)
    assert re.search(r"state\s+delivered", out)
    assert "landing   0 blobs left for this drop" in out
    assert "700 delivered of 700 in Metadata.json" in out
    assert re.search(r"messages\s+\d+ row messages \+ 1 completion", out)
    assert re.search(r"speed\s+[\d.]+ MB/s", out)
    assert out.count('"PersonId"') == 3  # three decoded rows read back from the queue
    assert "followed  run Succeeded, its drop deleted" in out
    drops_table = out.split("$ viva-relay drops list", 1)[1].split("$ viva-relay runs list", 1)[0]
    assert re.search(r"d[0-9a-f]{31}\s+[0-9a-f-]{36}\s+deleted\s+700\s", drops_table)
    runs_table = out.split("$ viva-relay runs list", 1)[1]
    assert re.search(r"[0-9a-f-]{36}\s+Succeeded\s+\S+\s+\S+\s+deleted", runs_table)
