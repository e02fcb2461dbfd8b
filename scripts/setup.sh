#!/usr/bin/env bash
# Create .venv and install imgsearch into it (idempotent). Usage: scripts/setup.sh [EXTRAS]
# EXTRAS defaults to "efficientnet" (the offline backbone); the test script adds "test".
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-efficientnet}"
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv ..." >&2
  python3 -m venv .venv
fi
echo "installing imgsearch[$extras] into .venv (torch comes from this machine's disk when it has it) ..." >&2
log=.venv/install.log
if ! { .venv/bin/python -m pip install --upgrade pip && .venv/bin/python -m pip install -e ".[$extras]"; } >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  echo "setup failed; the whole pip log is in $log" >&2
  exit 1
fi
