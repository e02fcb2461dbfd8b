"""scripts/audit.py, the dependency audit scripts/test.sh runs: its policy, its silence without a network,
and the floors in pyproject.toml that keep declared dependencies past their advisories."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
import tomllib

import pytest
from conftest import REPO
from packaging.requirements import Requirement
from packaging.version import Version

_spec = importlib.util.spec_from_file_location("audit", REPO / "scripts" / "audit.py")
audit = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(audit)  # type: ignore[union-attr]

# first releases past the advisories named beside each floor in pyproject.toml
FIXED = {
    "pillow": "13.0",
    "pillow-heif": "1.8.1",
    "jinja2": "3.1.6",
    "starlette": "1.3.1",
    "python-multipart": "0.0.31",
}


def _vuln(id_: str, fixes: list[str], aliases: list[str] | None = None) -> dict:
    return {"id": id_, "aliases": aliases or [], "fix_versions": fixes, "description": f"bug {id_}\nsecond line"}


def test_floors_stay_past_the_advisories() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + [s for extra in project["optional-dependencies"].values() for s in extra]
    floors: dict[str, Version] = {}
    for spec in map(Requirement, specs):
        for clause in spec.specifier:
            if clause.operator in (">=", "=="):
                floors[audit.canonical(spec.name)] = Version(clause.version)
    for name, fixed in FIXED.items():
        assert floors[name] >= Version(fixed), f"{name} floor {floors[name]} allows releases before {fixed}"
    assert "torch==2.14.1" in project["dependencies"] and "torchvision==0.29.1" in project["dependencies"]


def test_policy_fails_only_on_a_fixed_advisory_of_a_declared_dependency(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit, "ACCEPTED", {"GHSA-acc": "not reached: we never call it"})
    packages = [
        {
            "name": "Pillow",
            "version": "12.0",
            "vulns": [_vuln("GHSA-fix", ["13.0"], ["CVE-1", "PYSEC-1"]), _vuln("PYSEC-1", ["13.0"], ["GHSA-fix"])],
        },
        {"name": "chromadb", "version": "1.5.9", "vulns": [_vuln("GHSA-open", [])]},
        {"name": "onnx", "version": "1.0", "vulns": [_vuln("GHSA-acc", ["2.0"])]},
        {"name": "torch", "version": "2.14.1", "vulns": [_vuln("GHSA-pin", ["2.15"])]},
        {"name": "urllib3", "version": "1.0", "vulns": [_vuln("GHSA-dep", ["2.0"])]},
    ]
    failures, reports = audit.classify(packages, {"pillow", "chromadb", "torch", "onnx"})
    assert len(failures) == 1 and "Pillow 12.0 GHSA-fix (CVE-1)" in failures[0] and "fixed in 13.0" in failures[0]
    assert any("GHSA-open" in r and "direct, no fixed release" in r for r in reports)
    assert any(r.startswith("accepted") and "GHSA-acc" in r and "we never call it" in r for r in reports)
    assert any(r.startswith("accepted") and "GHSA-pin" in r and "pinned ==2.14.1" in r for r in reports)
    assert any("GHSA-dep" in r and "transitive, fixed in 2.0" in r for r in reports)
    assert all("\n" not in line for line in failures + reports)
    # a GHSA and its PYSEC twin are one advisory
    assert len(audit.merge_aliases([_vuln("GHSA-a", [], ["CVE-9"]), _vuln("PYSEC-a", ["2"], ["CVE-9"])])) == 1


def test_declared_dependencies_include_the_extras() -> None:
    direct = audit.direct_dependencies()
    assert {"torch", "chromadb", "pillow-heif", "starlette", "python-multipart", "pip-audit"} <= direct
    assert "imgsearch" not in direct and "anyio" not in direct


def test_without_the_index_it_skips_in_one_line() -> None:
    dead = "http://127.0.0.1:9"  # nothing listens: every request to the index fails at once
    env = {**os.environ, "HTTPS_PROXY": dead, "https_proxy": dead, "IMGSEARCH_AUDIT_TIMEOUT": "60"}
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "audit.py")], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0 and done.stdout == ""
    assert re.fullmatch(
        r"audit: skipped: the vulnerability index cannot be reached \(.*\); the tests run unaudited\n", done.stderr
    )
    assert "Traceback" not in done.stderr and time.monotonic() - start < 60
