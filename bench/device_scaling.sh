#!/usr/bin/env bash
# On a lent device machine, in the repository root (the device tool's `run`, with
# carry [".devkit"] packed here beforehand by `python -m bench.devkit`): install the kit's
# wheels into a folder of their own, check that the server imports with them, then run
# bench.scaling at the issue's worker counts, servers and clients on separate cores.
# Its tables go to $OUT/scaling (bench-out/scaling without $OUT). Arguments go on to
# bench.scaling (e.g. --workers 1,2 --server-cores 0-1 --client-cores 2-3 to try it small).
set -euo pipefail
PY=${PYTHON:-python3}
KIT=${KIT:-.devkit}
SITE=${SITE:-/tmp/devkit-site}
RESULTS=${OUT:-bench-out}/scaling
[ -d "$KIT/wheels" ] || { echo "no $KIT/wheels: run python -m bench.devkit here first" >&2; exit 2; }
"$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$KIT"/wheels/*.whl
export PYTHONPATH="$SITE:$PWD" PYTHONUNBUFFERED=1
"$PY" - <<'PYEOF'
import grpc, numpy, onnxruntime, server.app  # the server's imports, with the kit's wheels
print(f"python {__import__('sys').version.split()[0]}, grpcio {grpc.__version__}, "
      f"numpy {numpy.__version__}, onnxruntime {onnxruntime.__version__}")
PYEOF
echo "cpus: $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
mkdir -p "$RESULTS"
cp "$KIT/source.json" "$RESULTS/source.json"
"$PY" -m bench.scaling --model-repo "$KIT/models" --no-pytriton --work /tmp/scaling-work \
    --out "$RESULTS" "$@"
