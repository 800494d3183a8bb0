#!/usr/bin/env bash
# The whole test suite on a fresh machine: install (with the train and dev extras),
# fetch the data, then two pytest sessions: tests/ and tests_tritonclient/
# (tritonclient's protobuf messages cannot share a process with the server's).
# Arguments, if any, are passed to a single pytest session instead, e.g.
#   ./scripts/test.sh tests/unit -q
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"

ensure_venv train,dev
ensure_data
ensure_container_tools
ensure_perf_analyzer  # tests_tritonclient runs Triton's perf_analyzer against the server
ensure_kserve_client  # tests_tritonclient runs KServe's REST client against the server
cd "$ROOT"
if [ "$#" -gt 0 ]; then
  exec "$VENV/bin/python" -m pytest "$@"
fi
# One small model, trained once by the first session, reused by the second.
TEST_MODEL_REPO_DIR="$(mktemp -d)"
export TEST_MODEL_REPO_DIR
trap 'rm -rf "$TEST_MODEL_REPO_DIR"' EXIT
"$VENV/bin/python" -m pytest tests_tritonclient
"$VENV/bin/python" -m pytest tests
