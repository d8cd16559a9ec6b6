"""The README's local walkthrough, run verbatim: every line, in order, in a fresh folder, after `make dev`.

The fixture starts `make dev`'s services (``devtools.dev up``) with their state and the settings file in
a temporary folder; the block runs in one bash session there, the way a person pastes it. Each line
must exit 0 and print its key line; a README line without an expectation here fails the test, so
the two stay in step.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools import dev

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MARKER = "<!-- walkthrough:"
TENANT = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
GUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"

#: Each README line and what its output must show (regular expressions, all of them).
EXPECTED: dict[str, list[str]] = {
    "viva-relay --help": [r"usage: viva-relay", r"runs\s+start, list, show and follow"],
    f"T={TENANT}": [],
    "viva-relay keys create --tenant $T": [rf'"tenant": "{TENANT}"', r'"store": "Key Vault https://127\.0\.0\.1:\d+"'],
    "viva-relay tenants add --tenant $T --name Contoso --consent-date 2026-11-30 --replace": [
        rf"tenant {TENANT} \(Contoso\) registered"
    ],
    "viva-relay tenants show $T": [r'"display_name": "Contoso"', r'"consent_date": "2026-11-30"'],
    "viva-relay runs start --tenant $T": [rf"{TENANT}\s+Contoso\s+started\s+{GUID}"],
    "viva-relay runs follow --watch --interval 1": [
        r"\s(Queued|InProgress)\s",
        r"Succeeded\s+\w+: drop d[0-9a-f]{31} is deleted",
    ],
    "viva-relay drops list --tenant $T": [rf"d[0-9a-f]{{31}}\s+{TENANT}\s+deleted\s+1000\s"],
    "viva-relay runs list --tenant $T": [rf"{TENANT}\s+{GUID}\s+Succeeded\s+\S+\s+\S+\s+deleted"],
    "D=$(mktemp -d)": [],
    "viva-relay drop simulate --tenant $T --rows 1000 --out $D": [r'"rows": 1000', r'"where": "/'],
    "viva-relay drop decrypt $D | head -3": [r'^\{"PersonId":"'],
    "viva-relay drop simulate --tenant $T --rows 1000 --container datasets --run-id manual-1": [
        rf'"where": "datasets/manual-1/VivaInsights/{TENANT}"'
    ],
    "viva-relay drops list --tenant $T --status deleted": [rf"d[0-9a-f]{{31}}\s+{TENANT}\s+deleted"],
}


def walkthrough_lines() -> list[str]:
    """The commands of the README's walkthrough block, in order."""
    text = README.read_text(encoding="utf-8")
    assert MARKER in text, "the README lost its walkthrough block"
    block = text.split(MARKER, 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def fresh_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh folder holding only the local.settings.json `make dev` writes; its services run meanwhile."""
    work = tmp_path_factory.mktemp("walkthrough")
    state = tmp_path_factory.mktemp("dev-state")
    # A run moves on when it is read, so `runs follow --watch` sees Queued and InProgress however slow
    # the machine; the step is only the ceiling for a run nobody reads.
    dev.up(state, work / "local.settings.json", usual_ports=False, step_seconds=120.0)
    try:
        yield work
    finally:
        assert set(dev.down(state)) == {"services", "azurite"}


def run_block(lines: list[str], cwd: Path) -> list[tuple[str, int, str]]:
    """Run the lines in one bash session; (line, exit code, output) for each."""
    script = ["set -o pipefail", "exec 2>&1"]
    for i, line in enumerate(lines):
        script += [f"echo '@@start {i}@@'", line, f'echo "@@rc {i} $?@@"']
    env = {k: v for k, v in os.environ.items() if k != "VIVA_RELAY_SETTINGS"}  # read ./local.settings.json
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    scratch = cwd.parent / f"{cwd.name}-tmp"  # mktemp's folders, removed with pytest's own
    scratch.mkdir(exist_ok=True)
    env["TMPDIR"] = str(scratch)
    done = subprocess.run(
        ["bash", "-c", "\n".join(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    results = []
    for i, line in enumerate(lines):
        found = re.search(rf"@@start {i}@@\n(.*?)@@rc {i} (\d+)@@", done.stdout, re.DOTALL)
        assert found, f"line {i} ({line}) did not run:\n{done.stdout}\n{done.stderr}"
        results.append((line, int(found.group(2)), found.group(1)))
    return results


def test_every_walkthrough_line_succeeds_and_shows_its_key_line(fresh_folder: Path) -> None:
    lines = walkthrough_lines()
    assert lines == list(EXPECTED), "README walkthrough and EXPECTED differ: update both together"
    for line, code, output in run_block(lines, fresh_folder):
        assert code == 0, f"`{line}` exited {code}:\n{output}"
        for pattern in EXPECTED[line]:
            assert re.search(pattern, output, re.MULTILINE), f"`{line}` did not show /{pattern}/:\n{output}"
    # Nothing of Azurite, the stand-ins or the walkthrough is left in the folder it ran in.
    assert [p.name for p in fresh_folder.iterdir()] == ["local.settings.json"]
