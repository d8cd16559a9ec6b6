"""`make demo`'s consumer step: a relay drop consumed into PostgreSQL and read back with a partner's query."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_consumer_shows_rows_from_the_published_table() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "devtools.demo_consumer"],
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
        cwd=ROOT,
        env={**os.environ, "DEMO_CONSUMER_ROWS": "350"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert re.search(r"-> 350 rows published in 1 drop\(s\), 0 duplicates, 0 poison", out)
    assert "published 350 rows for tenant" in out
    assert "FROM viva_relay.vivainsightsdataset_personreport_v1" in out
    assert len(re.findall(r"^\s+[0-9a-f-]{36}\s+2024-01-\d\d\s+[\d.]+\s+d[0-9a-f]{31}$", out, re.M)) == 3
