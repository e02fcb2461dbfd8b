"""Architecture guards: imports only run down the layers, and the CLI starts without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO

# layer -> the layers its modules may import. Bottom to top: the core (core/: files, decode, the backbones,
# the batched decode -> model stage, the store); ingest/ and search/, siblings that never import each other;
# dupes/ (duplicate finding, on the core alone); reports/ (presentation); the Python API (imgsearch/api.py, a
# facade over ingest, search and dupes) and the package's public face (imgsearch/__init__.py, which
# re-exports the API lazily); service/ and evaluation/, which may use both; the CLI on top. A layer is its
# folder, except in imgsearch/, whose two files are two layers (FILES).
ALLOWED = {
    "core": {"core"},
    "ingest": {"core", "ingest"},
    "search": {"core", "search"},
    "dupes": {"core", "dupes"},
    "reports": {"core", "search", "dupes", "reports"},
    "api": {"core", "ingest", "search", "dupes", "api"},
    "face": {"api"},
    "service": {"core", "ingest", "search", "reports", "dupes", "api", "face", "service"},
    "evaluation": {"core", "ingest", "search", "evaluation"},
    "cli": {"core", "ingest", "search", "reports", "service", "evaluation", "dupes", "api", "face", "cli"},
}
FILES = {"imgsearch/__init__.py": "face", "imgsearch/api.py": "api"}
FOLDERS = [f for f in ALLOWED if (REPO / f).is_dir()] + ["imgsearch"]
LAYERS = set(ALLOWED) - {"face"}  # imgsearch.X for each of these; plain `imgsearch` is the face


def _layer(module: str) -> str | None:
    """The layer an absolute module name belongs to (imgsearch.search.query -> search), None if not ours."""
    parts = module.split(".")
    if parts[0] in LAYERS:  # a top-level `search`, `cli`, ...: only the installed namespace is allowed
        return f"top-level {parts[0]}"
    if parts[0] != "imgsearch":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "face"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {f"{node.module}.{a.name}" for a in node.names} if node.module == "imgsearch" else {node.module}
    return {layer for name in names if (layer := _layer(name)) is not None}


def test_imports_only_run_down_the_layers() -> None:
    bad = []
    for folder in FOLDERS:
        for path in (REPO / folder).rglob("*.py"):
            name = path.relative_to(REPO).as_posix()
            for layer in _imports(path) - ALLOWED[FILES.get(name, folder)]:
                bad.append(f"{name} imports {layer}")
    assert bad == []
    assert all((REPO / name).is_file() for name in FILES)


def test_one_installed_namespace(tmp_path: Path) -> None:
    """The folders install under imgsearch.*: `import search` from elsewhere fails, imgsearch.search works."""
    probe = "import importlib.util as u; print([u.find_spec(m) is not None for m in ('search', 'cli', 'ingest')])"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert run.stdout.strip() == "[False, False, False]", run.stderr
    run = subprocess.run(
        [sys.executable, "-c", "import imgsearch.search.query, imgsearch.service.app, imgsearch.cli.main"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr


PROBE = """
import sys
from imgsearch.cli.main import app
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
