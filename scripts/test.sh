#!/usr/bin/env bash
# Set up everything the tests need (Debian's chromium for the browser tests, the venv with the
# test extras), audit the installed packages and run the whole suite. Extra arguments go to pytest;
# IMGSEARCH_AUDIT=off skips the audit.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium (headless browser tests) ..." >&2
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >&2
    apt-get clean  # the downloaded .debs are not needed once installed; the venv needs the disk
  else
    echo "note: chromium is not installed (apt-get install chromium); the browser test will be skipped" >&2
  fi
fi
scripts/setup.sh "efficientnet,serve,test"
# Dependency audit (README, "Dependency audit"): fails only on a fixed advisory against a declared
# dependency, reports the rest; skips in one line without the index. The tests run either way.
audit=0
if [ "${IMGSEARCH_AUDIT:-on}" != off ]; then
  timeout 180 .venv/bin/python scripts/audit.py || audit=$?
  if [ "$audit" -gt 1 ]; then  # 1 is the policy's failure; anything else is the audit's own trouble
    [ "$audit" -eq 124 ] && why="still running after 180 s" || why="it stopped with exit code $audit"
    echo "audit: skipped: $why" >&2
    audit=0
  fi
fi
status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "$audit" -ne 0 ]; then
  echo "audit: FAILED (see the audit lines before the tests): raise the floors it names in pyproject.toml" >&2
  [ "$status" -ne 0 ] || status=$audit
fi
exit "$status"
