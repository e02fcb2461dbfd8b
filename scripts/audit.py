"""Audit the packages installed in this venv against PyPI's vulnerability data; scripts/test.sh runs it.

Policy (README, "Dependency audit"): exit 1 only for an advisory against a dependency pyproject.toml
declares (core or extra) that has a fixed release: raise its floor. Everything else is reported on
stderr and passes: advisories of transitive packages, advisories with no fix released, and the
accepted ones listed in ACCEPTED with the reason. When the vulnerability data cannot be had (no
network, a slow index) it says so in one line and exits 0: the tests still run.

pip-audit (``-s pypi``) asks PyPI for each installed release. Where PyPI answers only for a project's
newest release (a mirror that serves /pypi/NAME/json but not /pypi/NAME/VERSION/json, as on the
machines this project is built on) pip-audit finds every package "not found" and would pass
silently; this script then reads the newest release's advisories instead, which apply to every
installed package that is at its newest release, and names the ones it could not audit.

Usage: .venv/bin/python scripts/audit.py   (env IMGSEARCH_AUDIT_TIMEOUT: seconds in all, default 120)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import tomllib
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PROJECT = "imgsearch"  # installed editable: our own code, nothing to look up
TIMEOUT_S = float(os.environ.get("IMGSEARCH_AUDIT_TIMEOUT", "120"))
REQUEST_S = 15  # one request to the index
# Advisories accepted with a reason (id -> why it does not reach imgsearch): reported, never failing.
ACCEPTED: dict[str, str] = {}
# Exact pins that cannot follow a fix: their advisories are reported as accepted with this reason.
# Name one here only with the decision recorded beside the pin in pyproject.toml.
PINNED = {
    "torch": "pinned ==2.14.1: the build these machines carry (pip constraint torch<=2.14.1); imgsearch runs "
    "only its own ResNet50/EfficientNet graphs on decoded pixels and loads --weights with weights_only=True",
    "torchvision": "pinned ==0.29.1, the release that matches torch 2.14.1",
}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def direct_dependencies(pyproject: Path = REPO / "pyproject.toml") -> set[str]:
    """Every project named in pyproject.toml's dependencies and optional extras."""
    project = tomllib.loads(pyproject.read_text())["project"]
    specs = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        specs += extra
    return {canonical(re.split(r"[\s<>=!~;\[(]", spec, maxsplit=1)[0]) for spec in specs}


def merge_aliases(vulns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per advisory: PyPI lists a GHSA and its PYSEC twin separately."""
    merged: list[dict[str, Any]] = []
    for vuln in vulns:
        ids = {vuln["id"], *vuln.get("aliases", [])}
        twin = next((m for m in merged if m["_ids"] & ids), None)
        if twin is None:
            merged.append({**vuln, "_ids": ids, "fix_versions": list(vuln.get("fix_versions", []))})
        else:
            twin["_ids"] |= ids
            twin["fix_versions"] = sorted(set(twin["fix_versions"]) | set(vuln.get("fix_versions", [])))
    return merged


def classify(packages: list[dict[str, Any]], direct: set[str]) -> tuple[list[str], list[str]]:
    """(failures, reports): one line per advisory; pip-audit's JSON shape ({name, version, vulns})."""
    failures: list[str] = []
    reports: list[str] = []
    for pkg in packages:
        name, version = pkg["name"], pkg["version"]
        for vuln in merge_aliases(pkg.get("vulns", [])):
            ids = sorted(vuln["_ids"], key=lambda i: (not i.startswith("GHSA"), i))
            cves = [i for i in ids if i.startswith("CVE-")]
            label = ids[0] + (f" ({', '.join(cves)})" if cves and not ids[0].startswith("CVE-") else "")
            what = " ".join((vuln.get("description") or "").split())[:160]
            fixes = vuln["fix_versions"]
            line = f"{name} {version} {label}: {what}"
            accepted = next((ACCEPTED[i] for i in ids if i in ACCEPTED), None) or PINNED.get(canonical(name))
            if accepted:
                reports.append(f"accepted  {line} | {accepted}")
            elif fixes and canonical(name) in direct:
                failures.append(f"FIX       {line} | fixed in {', '.join(fixes)}: raise the floor in pyproject.toml")
            else:
                why = "fixed in " + ", ".join(fixes) if fixes else "no fixed release"
                kind = "direct" if canonical(name) in direct else "transitive"
                reports.append(f"report    {line} | {kind}, {why}")
    return failures, reports


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=REQUEST_S) as resp:
        return json.load(resp)


def newest_release_vulns(packages: list[dict[str, str]], deadline: float) -> tuple[list[dict[str, Any]], list[str]]:
    """Advisories of the installed packages that are their project's newest release, from
    /pypi/NAME/json ("vulnerabilities" there is the newest release's); and the names left unaudited."""

    def one(pkg: dict[str, str]) -> tuple[dict[str, Any] | None, str | None]:
        if time.monotonic() > deadline:
            return None, f"{pkg['name']} (out of time)"
        try:
            data = _get_json(f"https://pypi.org/pypi/{canonical(pkg['name'])}/json")
        except Exception:
            return None, f"{pkg['name']} (no answer)"
        if data["info"]["version"] != pkg["version"]:
            return None, f"{pkg['name']} {pkg['version']} (newest {data['info']['version']})"
        vulns = [
            {
                "id": v["id"],
                "aliases": v.get("aliases") or [],
                "fix_versions": v.get("fixed_in") or [],
                "description": v.get("summary") or v.get("details") or "",
            }
            for v in data.get("vulnerabilities", [])
            if not v.get("withdrawn")
        ]
        return {"name": pkg["name"], "version": pkg["version"], "vulns": vulns}, None

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, packages))
    return [r for r, _ in results if r], [u for _, u in results if u]


def run_pip_audit(seconds: float) -> dict[str, Any]:
    """pip-audit's JSON report of this interpreter's environment; raises RuntimeError with one line."""
    cmd = [sys.executable, "-m", "pip_audit", "-s", "pypi", "--skip-editable", "-f", "json"]
    cmd += ["--progress-spinner", "off", "--timeout", str(REQUEST_S)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds, check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"no answer from the vulnerability index within {seconds:.0f} s") from None
    try:
        return json.loads(done.stdout)
    except ValueError:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise RuntimeError(lines[-1].strip()[:200] if lines else f"pip-audit exited {done.returncode}") from None


def main() -> int:
    start = time.monotonic()
    deadline = start + TIMEOUT_S
    say = lambda text: print(f"audit: {text}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        import pip_audit  # noqa: F401
    except ImportError:
        say("skipped: pip-audit is not installed (it comes with the test extra: pip install -e '.[test]')")
        return 0
    try:
        report = run_pip_audit(TIMEOUT_S)
    except RuntimeError as err:
        say(f"skipped: the vulnerability index cannot be reached ({err}); the tests run unaudited")
        return 0
    deps = [d for d in report.get("dependencies", []) if canonical(d["name"]) != PROJECT]
    audited = [d for d in deps if "skip_reason" not in d]
    unaudited = [d for d in deps if "skip_reason" in d]
    source = f"pip-audit, PyPI's advisories for each installed release: {len(audited)} packages"
    left: list[str] = [d["name"] for d in unaudited]
    if unaudited and len(unaudited) == len(deps):
        # PyPI answered "not found" for every release: only the newest-release pages are served here
        installed = [{"name": d["name"], "version": d.get("version") or _version(d)} for d in unaudited]
        audited, left = newest_release_vulns(installed, deadline)
        if not audited and all(u.endswith("(no answer)") for u in left):
            say("skipped: the vulnerability index cannot be reached (PyPI did not answer); the tests run unaudited")
            return 0
        source = f"PyPI's advisories for each project's newest release: {len(audited)} packages at their newest"
    direct = direct_dependencies()
    failures, reports = classify(audited, direct)
    left.sort(key=lambda u: canonical(u.split()[0]) not in direct)  # declared ones first
    took = time.monotonic() - start
    say(f"{source} checked in {took:.1f} s")
    if left:
        shown = ", ".join(left[:12]) + (f" and {len(left) - 12} more" if len(left) > 12 else "")
        why = "PyPI here answers only for newest releases" if "newest" in source else "see pip-audit"
        say(f"not audited ({len(left)}; {why}): {shown}")
    for line in reports + failures:
        say(line)
    if failures:
        say(f"FAILED: {len(failures)} advisory(ies) fixed upstream in declared dependencies; raise their floors")
        return 1
    say(f"passed: {len(reports)} advisory(ies) reported, none fixable in a declared dependency")
    return 0


def _version(dep: dict[str, Any]) -> str:
    """pip-audit leaves "version" out of skipped entries; its reason names it: "NAME (VERSION)"."""
    found = re.search(r"\(([^()]+)\)\s*$", dep.get("skip_reason", ""))
    return found.group(1) if found else ""


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as err:  # the audit must never stop the tests with a traceback
        print(f"audit: skipped: the audit itself failed ({type(err).__name__}: {err})", file=sys.stderr)
