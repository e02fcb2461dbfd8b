"""Architecture guards: imports only run down the layers, and the CLI starts without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO

# package -> packages it may import (bottom to top: imgsearch core, ingest, search, cli)
ALLOWED = {
    "imgsearch": {"imgsearch"},
    "ingest": {"imgsearch", "ingest"},
    "search": {"imgsearch", "ingest", "search"},
    "cli": {"imgsearch", "ingest", "search", "cli"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & set(ALLOWED)


def test_imports_only_run_down_the_layers() -> None:
    bad = []
    for package, allowed in ALLOWED.items():
        for path in (REPO / package).rglob("*.py"):
            for name in _imports(path) - allowed:
                bad.append(f"{path.relative_to(REPO)} imports {name}")
    assert bad == []


PROBE = """
import sys
from cli.main import app
try:
    app(sys.argv[1:])
except SystemExit:
    pass
print(sorted(m for m in ("torch", "torchvision", "chromadb") if m in sys.modules), file=sys.stderr)
"""


def _heavy_modules(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=REPO)
    return proc.stderr.strip().splitlines()[-1]


def test_help_imports_neither_torch_nor_chromadb() -> None:
    assert _heavy_modules("--help") == "[]"
    assert _heavy_modules("search", "--help") == "[]"


def test_stats_never_imports_torch(tmp_path: Path) -> None:
    assert _heavy_modules("stats", "--db", str(tmp_path / "none")) == "['chromadb']"
