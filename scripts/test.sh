#!/usr/bin/env bash
# Set up everything the tests need (Debian's chromium for the browser tests, the venv with the
# test extras) and run the whole suite. Extra arguments go to pytest.
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
exec .venv/bin/python -m pytest "$@"
