#!/usr/bin/env bash
# The whole job in one command: set up, ingest the bundled library (593 images, 15 categories),
# search it with the 30 held-out query images, print each query's top-5 with scores, write report.html.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh efficientnet
export IMGSEARCH_DB="${IMGSEARCH_DB:-./demo-db}"

# ResNet50 (the default backbone) needs its ImageNet weights: --weights FILE / IMGSEARCH_WEIGHTS,
# torch's cache, or a download. Without them the demo uses the offline EfficientNet-Lite0.
model=$(.venv/bin/python - <<'PY'
import sys
from imgsearch.core.backbones import ModelUnavailable, load_embedder
try:
    load_embedder("resnet50")
    print("resnet50")
except ModelUnavailable as err:
    print(f"ResNet50 weights unavailable, so the demo uses efficientnet-lite0 instead:\n{err}\n", file=sys.stderr)
    print("efficientnet-lite0")
PY
)
if .venv/bin/imgsearch stats --json >/dev/null 2>&1; then
  recorded=$(.venv/bin/imgsearch stats --json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["model"]["model"])')
  if [ "$recorded" != "$model" ]; then
    echo "$IMGSEARCH_DB was built with $recorded; starting it afresh with $model" >&2
    rm -rf "$IMGSEARCH_DB"
  fi
fi
echo "== ingest examples/library with $model into $IMGSEARCH_DB" >&2
.venv/bin/imgsearch ingest examples/library --model "$model"
echo "== search: each held-out query image (none of them is in the library), top-5" >&2
.venv/bin/imgsearch search examples/queries/*.png -k 5
echo "== report" >&2
report=$(.venv/bin/imgsearch report --queries examples/queries -k 5 --out report.html)
echo "open $report in a browser to see every query beside its top-5 thumbnails and scores" >&2
