"""The house's map is true: every repository path the docs, comments and scripts name exists, and no
module imports one that imports it back (directly or round a longer loop, lazy and type-only imports
included)."""

from __future__ import annotations

import ast
import re
import subprocess
import tomllib
from pathlib import Path

from conftest import REPO

# named on purpose though absent: README's example of the error a missing query gives
ABSENT_ON_PURPOSE = {"examples/queries/nope.png"}
TEXT = (".md", ".py", ".sh", ".toml", ".yml", ".yaml", ".html", ".css")


def _files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    ).stdout.split()
    return [f for f in out if (REPO / f).is_file()]


def _exists(path: str) -> bool:
    """A file or folder; a glob (``dupes/*.py``); or an output stem (``--out docs/regions-bench``)."""
    if "*" in path:
        return any(REPO.glob(path))
    target = REPO / path
    return target.exists() or any(target.parent.glob(f"{target.name}.*"))


def test_every_repository_path_named_exists() -> None:
    files = _files()
    tops = sorted({f.split("/")[0] for f in files if "/" in f})
    # a path that starts at one of the repository's top folders, not inside a longer path or a URL
    alternatives = "|".join(map(re.escape, tops))
    named = re.compile(rf"(?<![\w./~$@:-])((?:{alternatives})/[\w./*-]*[\w*])")
    missing = []
    for name in files:
        if not name.endswith(TEXT):
            continue
        for n, line in enumerate((REPO / name).read_text(errors="replace").splitlines(), 1):
            for match in named.finditer(line):
                path = match.group(1).rstrip(".")
                placeholder = any(part.split(".")[0].isupper() for part in path.split("/"))  # bench/NAME.py
                if not placeholder and path not in ABSENT_ON_PURPOSE and not _exists(path):
                    missing.append(f"{name}:{n}: {path}")
    assert missing == [], "named but absent:\n" + "\n".join(missing)


def _modules() -> dict[str, Path]:
    """Our modules by dotted name, from the package layout pyproject.toml declares."""
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = {pkg: REPO / tool.get("package-dir", {}).get(pkg, pkg.replace(".", "/")) for pkg in tool["packages"]}
    out = {}
    for pkg, folder in roots.items():
        for path in folder.glob("*.py"):
            out[pkg if path.stem == "__init__" else f"{pkg}.{path.stem}"] = path
    return out


def _imported(path: Path, module: str, ours: set[str]) -> set[str]:
    """Our modules ``module`` imports anywhere in its file: inside functions and for type checking too (a
    type-only import is a dependency all the same)."""
    package = module if path.stem == "__init__" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: up from the module's package
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {n for n in names if n in ours and n != module}


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {m: _imported(p, m, set(modules)) for m, p in modules.items()}
    # a package's __init__ is imported on the way to each of its modules: that is no cycle of ours
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(" -> ".join([*path[path.index(n) :], n]))
            elif n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


def test_every_source_folder_is_the_package_of_its_name() -> None:
    """README's rule: each top-level folder holding Python modules (``X/__init__.py``) installs as
    ``imgsearch.X``, from ``X/``; ``imgsearch/`` itself holds only the public face (``__init__.py``, ``api.py``)."""
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"imgsearch"}
    assert {f"imgsearch.{f}" for f in folders} | {"imgsearch"} == set(tool["packages"])
    assert tool["package-dir"] == {f"imgsearch.{f}": f for f in folders}
    assert sorted(p.name for p in (REPO / "imgsearch").glob("*.py")) == ["__init__.py", "api.py"]
    assert not any(p.is_dir() and p.name != "__pycache__" for p in (REPO / "imgsearch").iterdir())
