"""A small run of the benchmark script (``make bench`` itself is not part of ``make test``)."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
from pathlib import Path

from devtools.bench import ROOT
from devtools.simulate import generate_rows

SUMMARY = re.compile(
    r"^bench: ratio_to_floor=(\d+\.\d\d) packed_ratio_to_floor=(\d+\.\d\d) peak_rss_mib=(\d+(?:\.\d+)?) rows=(\d+)"
    r" contract_ratio_to_floor=(\d+\.\d\d) transform_ratio_to_floor=(\d+\.\d\d) put_cpu_ms=(\d+\.\d\d|n/a)$"
)
VARIANTS = (
    "floor",
    "naive",
    "decode",
    "packed-json",
    "packed-base64",
    "packed-gzip-base64",
    "packed-gzip-base64-thread",
    "contract",
    "transformed",
)


def run_bench(workdir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """The benchmark on a 2 MB drop, without Azurite, one run of each variant."""
    command = [sys.executable, "-m", "devtools.bench", "--sizes", "2MB", "--no-azurite", "--repeat", "1"]
    return subprocess.run(
        [*command, "--workdir", str(workdir), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_small_benchmark_run_prints_every_variant_and_the_summary(tmp_path: Path) -> None:
    done = run_bench(tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    summary = SUMMARY.match(lines[-1])
    assert summary, lines[-1]
    ratio, packed_ratio, peak_rss, rows, contract_ratio, transform_ratio, put_cpu = summary.groups()
    assert put_cpu == "n/a"  # no delivery into Azurite in this run
    assert int(rows) == sum(1 for _ in generate_rows(size=2_000_000))
    assert float(ratio) > 0 and float(packed_ratio) > 0 and 0 < float(peak_rss) < 1024
    assert float(contract_ratio) > 0 and float(transform_ratio) > 0

    table = {line.split()[0]: line.split() for line in lines if line.split() and line.split()[0] in VARIANTS}
    assert set(table) == set(VARIANTS)
    # Packed variants say how many messages they made; the others have none.
    packed = [v for v in VARIANTS if v.startswith("packed-") or v == "transformed"]
    assert all(table[v][4].isdigit() and int(table[v][4]) > 0 for v in packed)
    assert int(table["packed-gzip-base64"][4]) * 3 < int(table["packed-json"][4])
    # Packing on its own thread makes the same messages as packing inline.
    assert table["packed-gzip-base64"][4] == table["packed-gzip-base64-thread"][4]

    # The drop's file key stays in a private file and is never printed.
    secret = json.loads((tmp_path / "drops" / "2MB" / "file.key").read_text())
    assert stat.S_IMODE((tmp_path / "drops" / "2MB" / "file.key").stat().st_mode) == 0o600
    assert secret["key"] not in done.stdout + done.stderr

    # A second run reuses the cached drop.
    again = run_bench(tmp_path, "--no-naive")
    assert again.returncode == 0, again.stderr
    assert "reusing the drop" in again.stderr
    assert SUMMARY.match(again.stdout.strip().splitlines()[-1])
