#!/usr/bin/env bash
# The main job on a fresh machine: install, fetch the data, train and publish a
# model if the repository has none, then serve it on 127.0.0.1:50051 (Ctrl-C stops).
# Extra arguments go to fashion-serve, e.g. ./scripts/up.sh --port 6000
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"

# train: fashion-train; client: what README "Calling the server" uses (tritonclient).
ensure_venv train,client
ensure_data
export FASHION_MODEL_REPO="${FASHION_MODEL_REPO:-$ROOT/models}"
if ! ls "$FASHION_MODEL_REPO/fashion" 2>/dev/null | grep -qE '^[1-9][0-9]*$'; then
  # The one measured figure lives in the published run's report (docs/TRAINING.md "Results" quotes it).
  report="$ROOT/docs/training/course_cnn_v2/report.md"
  seconds="$(sed -n 's/^- \*\*training seconds\*\*: \([0-9]*\).*/\1/p' "$report" 2>/dev/null || true)"
  echo "==> no model in $FASHION_MODEL_REPO: training one (the published run took ${seconds:-?} s on 2 cores)"
  "$VENV/bin/fashion-train" --model-repo "$FASHION_MODEL_REPO"
fi
echo "==> serving $FASHION_MODEL_REPO (default: gRPC 127.0.0.1:50051, REST http://127.0.0.1:8000/v2, metrics http://127.0.0.1:9090/metrics; extra flags: ${*:-none})"
exec "$VENV/bin/fashion-serve" --model-repo "$FASHION_MODEL_REPO" "$@"
