#!/usr/bin/env bash
# Shared set-up for up.sh and test.sh: a virtual environment with the project
# installed (extras given as arguments) and the Fashion-MNIST data set on disk.
# Idempotent: pip runs again only when pyproject.toml changed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FASHION_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
DEBIAN_DATA=/usr/share/datasets/fashion-mnist

ensure_venv() {
  local extras="$1"
  if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
  fi
  local stamp="$VENV/.installed-$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)-${extras//,/_}"
  if [ ! -f "$stamp" ]; then
    echo "==> installing fashion-serving[$extras]"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[$extras]"
    "$VENV/bin/python" -m pip check
    rm -f "$VENV"/.installed-*
    touch "$stamp"
  fi
}

ensure_data() {
  if [ -n "${FASHION_MNIST_DIR:-}" ] || [ -f "$DEBIAN_DATA/t10k-labels-idx1-ubyte.gz" ] \
     || [ -f "$HOME/.keras/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz" ]; then
    return 0
  fi
  if command -v apt-get >/dev/null 2>&1; then
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "==> installing Debian's dataset-fashion-mnist"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "==> no apt-get: the training job will look for the data set itself (see README)"
  fi
}
