"""Print the kill rate of the last mutation run (``make mutate``), from mutmut's exported counts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

STATS = Path("mutants/mutmut-cicd-stats.json")


def main() -> int:
    """Print killed / survived / untested counts and the kill rate; non-zero exit when there are no results."""
    if not STATS.exists():
        print(f"no mutation results at {STATS}: run `make mutate`", file=sys.stderr)
        return 1
    s = json.loads(STATS.read_text())
    killed = int(s["killed"]) + int(s["timeout"])
    tested = killed + int(s["survived"]) + int(s["suspicious"])
    rate = 100.0 * killed / tested if tested else 0.0
    print(
        f"mutation testing: {killed} of {tested} mutants killed ({rate:.1f}%); {s['survived']} survived,"
        f" {s['no_tests']} in code no fast test runs (not counted), {s['skipped']} skipped"
    )
    print(f"kill rate: {rate:.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
