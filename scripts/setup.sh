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
.venv/bin/python -m pip install -q --upgrade pip >&2
.venv/bin/python -m pip install -q -e ".[$extras]" >&2
