#!/usr/bin/env bash
# Create .venv and install imgsearch into it (idempotent). Usage: scripts/setup.sh [EXTRAS]
# EXTRAS defaults to "efficientnet" (the offline backbone); the test script adds "test".
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-efficientnet}"
# torch 2.14.1 for x86_64 Linux is a CUDA build: with its nvidia-* libraries a fresh .venv is ~6.5 GB.
need_mb=7000
if [ ! -x .venv/bin/python ]; then
  free_mb=$(df -Pm . | awk 'NR==2 {print $4}')
  if [ "${free_mb:-0}" -lt "$need_mb" ]; then
    echo "warning: ${free_mb} MB free here; a fresh .venv needs about ${need_mb} MB (torch's CUDA build)." >&2
    echo "         pip will likely stop with 'No space left on device'; free some disk first." >&2
  fi
  echo "creating .venv ..." >&2
  python3 -m venv .venv
fi
echo "installing imgsearch[$extras] into .venv (torch comes from this machine's disk when it has it) ..." >&2
log=.venv/install.log
pip=(.venv/bin/python -m pip --no-cache-dir)  # nothing kept twice: the wheels are not cached as well
if ! { "${pip[@]}" install --upgrade pip && "${pip[@]}" install -e ".[$extras]"; } >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  if grep -q "No space left on device" "$log"; then
    echo "the disk filled up ($(df -Pm . | awk 'NR==2 {print $4}') MB free now, ~${need_mb} MB needed):" \
      "free some space, then run this again." >&2
  fi
  echo "setup failed; the whole pip log is in $log" >&2
  exit 1
fi
