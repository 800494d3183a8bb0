#!/usr/bin/env bash
# Shared set-up for up.sh and test.sh: a virtual environment with the project
# installed (extras given as arguments) and the Fashion-MNIST data set on disk.
# Idempotent: pip runs again only when pyproject.toml changed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FASHION_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
DEBIAN_DATA=/usr/share/datasets/fashion-mnist
# Triton's perf_analyzer: PyPI's perf-analyzer is a placeholder; the real binary ships in
# tritonclient 2.41's wheel (bin/perf_analyzer), installed without its Python dependencies.
PERF_VENV="${FASHION_PERF_VENV:-$ROOT/.venv-perf}"
PERF_PACKAGES=(tritonclient==2.41.0 nvidia-cuda-runtime-cu12==12.9.79)
# KServe's own Python REST client, for tests_tritonclient/test_http_kserve.py. A venv of its
# own: kserve 0.21 needs psutil<6, the dev extra pins psutil 7 (docs/DEVELOPMENT.md).
KSERVE_VENV="$ROOT/.venv-kserve"
KSERVE_PACKAGES=(kserve==0.21.0)

# Debian packages, as root or through sudo.
apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# A virtual environment with pip in DIR. `python3 -m venv` needs ensurepip, which Debian
# ships apart (python3-venv): without it venv fails, yet leaves DIR/bin/python behind.
make_venv() {
  local dir="$1"
  if ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
    if command -v apt-get >/dev/null 2>&1; then
      echo "==> installing Debian's python3-venv (ensurepip, for virtual environments)"
      apt_install python3-venv
    fi
    if ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
      echo "error: $PYTHON has no ensurepip: install its venv package (Debian: python3-venv)" >&2
      return 1
    fi
  fi
  "$PYTHON" -m venv "$dir"  # in place: also completes one a failed attempt left
}

ensure_venv() {
  local extras="$1"
  # pip, not bin/python: a venv that failed half way has the one without the other.
  if ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    echo "==> creating virtual environment $VENV"
    make_venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
  fi
  local hash
  hash="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
  local stamp="$VENV/.installed-$hash-${extras//,/_}"
  if [ ! -f "$stamp" ]; then
    echo "==> installing fashion-serving[$extras]"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[$extras]"
    "$VENV/bin/python" -m pip check
    # Stamps of an older pyproject.toml are stale; those of other extras with the same
    # pyproject stay valid (pip never removes packages), so up.sh and test.sh do not
    # reinstall each time one follows the other.
    find "$VENV" -maxdepth 1 -name '.installed-*' ! -name ".installed-$hash-*" -delete
    touch "$stamp"
  fi
}

ensure_data() {
  if [ -n "${FASHION_MNIST_DIR:-}" ] || [ -f "$DEBIAN_DATA/t10k-labels-idx1-ubyte.gz" ] \
     || [ -f "$HOME/.keras/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz" ]; then
    return 0
  fi
  if command -v apt-get >/dev/null 2>&1; then
    echo "==> installing Debian's dataset-fashion-mnist"
    apt_install dataset-fashion-mnist
  else
    echo "==> no apt-get: the training job will look for the data set itself (see docs/TRAINING.md)"
  fi
}

# perf_analyzer in a venv of its own (its tritonclient would clash with the dev extra's).
# It links Debian's libb64 and libcudart.so.12 even on CPU: the latter comes from PyPI's
# nvidia-cuda-runtime-cu12, put on LD_LIBRARY_PATH by a wrapper. Exports PERF_ANALYZER
# (that wrapper); tests_tritonclient runs it. Idempotent.
ensure_perf_analyzer() {
  if ! ldconfig -p 2>/dev/null | grep -q 'libb64\.so\.0d'; then
    echo "==> installing Debian's libb64-0d (for perf_analyzer)"
    apt_install libb64-0d
  fi
  local stamp="$PERF_VENV/.installed-$(echo "${PERF_PACKAGES[*]}" | sha256sum | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    echo "==> installing perf_analyzer (${PERF_PACKAGES[*]}) into $PERF_VENV"
    rm -rf "$PERF_VENV"
    make_venv "$PERF_VENV"
    "$PERF_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
      "${PERF_PACKAGES[@]}"
    local cudart  # relative to the venv, so the wrapper survives a moved checkout
    cudart="$("$PERF_VENV/bin/python" -c 'import nvidia.cuda_runtime as c, os, sys
print(os.path.relpath(os.path.join(c.__path__[0], "lib"), sys.prefix))')"
    cat >"$PERF_VENV/perf_analyzer" <<WRAPPER
#!/bin/sh
venv="\$(cd "\$(dirname "\$0")" && pwd)"
LD_LIBRARY_PATH="\$venv/$cudart\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "\$venv/bin/perf_analyzer" "\$@"
WRAPPER
    chmod +x "$PERF_VENV/perf_analyzer"
    "$PERF_VENV/perf_analyzer" --version >/dev/null
    touch "$stamp"
  fi
  export PERF_ANALYZER="$PERF_VENV/perf_analyzer"
}

ensure_kserve_client() {
  local stamp="$KSERVE_VENV/.installed-$(echo "${KSERVE_PACKAGES[*]}" | sha256sum | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    echo "==> installing KServe's client (${KSERVE_PACKAGES[*]}) into $KSERVE_VENV"
    rm -rf "$KSERVE_VENV"
    make_venv "$KSERVE_VENV"
    "$KSERVE_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
      "${KSERVE_PACKAGES[@]}"
    "$KSERVE_VENV/bin/python" -c 'import kserve'
    touch "$stamp"
  fi
  export KSERVE_PYTHON="$KSERVE_VENV/bin/python"
}

# The container tests (tests/deploy/test_containers.py) build and run the images with podman
# (runc as the runtime), make their stand-in base image with mmdebstrap, and lint /metrics
# with promtool (Debian's prometheus). Installed with apt-get when missing and root (or
# password-less sudo); anywhere else the tests skip saying what is missing (with CI=true
# they fail instead).
ensure_container_tools() {
  local missing=() tool
  # curl: the REST API's tests send what curl sends (tests/e2e/curl.py).
  for tool in podman:podman runc:runc mmdebstrap:mmdebstrap promtool:prometheus curl:curl; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool#*:}")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo="sudo -n"
    else
      echo "==> not root: not installing ${missing[*]} (the container tests will skip)"
      return 0
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "==> no apt-get: not installing ${missing[*]} (the container tests will skip)"
    return 0
  fi
  echo "==> installing ${missing[*]} (container tests)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}
