#!/usr/bin/env bash
# The whole test suite on a fresh machine: install (with the train and dev extras),
# fetch the data, then pytest. Extra arguments go to pytest, e.g. -m "not slow".
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"

ensure_venv train,dev
ensure_data
cd "$ROOT"
exec "$VENV/bin/python" -m pytest "$@"
