"""What is deployed: the Functions app needs only its own code, and that code needs no development tools."""

from __future__ import annotations

import ast
import fnmatch
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The deployed app: the Functions host reads these at the app root (which it puts on sys.path).
APP = ("function_app.py", "host.json", "requirements.txt", "functions", "shared")
#: Top-level packages that are development-only or the operator CLI, never imported by the app.
NOT_FOR_THE_APP = ("devtools", "tests", "viva_relay")


def imported_top_levels(path: Path) -> set[str]:
    """Top-level names a module imports (absolute imports; relative ones stay inside its package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def app_modules() -> list[Path]:
    return [
        ROOT / "function_app.py",
        *sorted((ROOT / "shared").rglob("*.py")),
        *sorted((ROOT / "functions").rglob("*.py")),
    ]


def test_the_app_imports_no_development_code() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_top_levels(path) & set(NOT_FOR_THE_APP)) for path in app_modules()
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_import_check_sees_a_development_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom devtools.tls import x\n\ndef f():\n    import tests.conftest\n")
    assert imported_top_levels(module) & set(NOT_FOR_THE_APP) == {"devtools", "tests"}


def funcignore_patterns() -> list[str]:
    lines = (ROOT / ".funcignore").read_text(encoding="utf-8").splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")]


def ignored(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def top_level_entries() -> set[str]:
    """The repository's top-level files and folders (tracked ones; without git, those .gitignore keeps)."""
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False)
    if listed.returncode == 0 and listed.stdout.strip():
        return {line.split("/")[0] for line in listed.stdout.splitlines() if line}
    untracked = [p.rstrip("/") for p in (ROOT / ".gitignore").read_text(encoding="utf-8").split() if p]
    return {p.name for p in ROOT.iterdir() if p.name != ".git" and not ignored(p.name, untracked)}


def test_funcignore_leaves_out_everything_the_app_does_not_need() -> None:
    top_level = top_level_entries()
    patterns = funcignore_patterns()
    shipped = {name for name in top_level if not ignored(name, patterns)}
    assert shipped == set(APP), f"deployed but not needed: {sorted(shipped - set(APP))}"
    assert all(ignored(name, patterns) for name in NOT_FOR_THE_APP)
    assert not any(ignored(name, patterns) for name in APP)
