#!/usr/bin/env bash
# On a lent device machine, in the repository root (the device tool's `run`, with
# carry [".devkit"] packed here beforehand by `python -m bench.devkit`): install the kit's
# wheels into a folder of their own, check that the benchmark imports with them, record
# the machine and whether the tree sent is the one the kit was packed from, then run
# bench.scaling at the issue's worker counts, servers and clients on separate cores.
# Its tables go to $OUT/scaling (bench-out/scaling without $OUT). Arguments go on to
# bench.scaling (e.g. --workers 1,2 --server-cores 0-1 --client-cores 2-3 to try it small).
set -euo pipefail
PY=${PYTHON:-python3}
KIT=${KIT:-.devkit}
SITE=${SITE:-/tmp/devkit-site}
RESULTS=${OUT:-bench-out}/scaling
[ -d "$KIT/wheels" ] || { echo "no $KIT/wheels: run python -m bench.devkit here first" >&2; exit 2; }
rm -rf "$SITE"  # a warm machine's earlier install never mixes with this kit
"$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir \
    --target "$SITE" "$KIT"/wheels/*.whl
export PYTHONPATH="$SITE:$PWD" PYTHONUNBUFFERED=1
"$PY" - <<'PYEOF'
import grpc, numpy, onnxruntime, server.app, bench.scaling  # all that the run imports
print(f"python {__import__('sys').version.split()[0]}, grpcio {grpc.__version__}, "
      f"numpy {numpy.__version__}, onnxruntime {onnxruntime.__version__}")
PYEOF
mkdir -p "$RESULTS"
# Whether "servers on 0-7, clients on 8-15" means separate physical cores here: SMT
# siblings, and a sandbox whose affinity is only recorded, would share them.
{ uname -a; nproc; lscpu 2>/dev/null || true
  grep -H . /sys/devices/system/cpu/cpu*/topology/thread_siblings_list 2>/dev/null || true
} > "$RESULTS/machine.txt"
"$PY" -m bench.devkit --kit "$KIT" --verify "$RESULTS/source.json" \
    || echo "measuring anyway; the results are not those of the kit's commit" >&2
"$PY" -m bench.scaling --model-repo "$KIT/models" --no-pytriton --work /tmp/scaling-work \
    --out "$RESULTS" "$@"
