#!/usr/bin/env bash
# Experiment behind docs/PERFORMANCE.md's "--workers N" answer: does a second server process
# on the same port (SO_REUSEPORT, the kernel spreading connections over the processes) raise
# single-image unary throughput on this machine?
#
#   bench/experiments/workers.sh MODEL_REPO VERSION OUT_DIR [WORKER_COUNTS]
#
# For each worker count (default "1 2"): start that many `fashion-serve` processes on one
# port, each with its own session, batcher and metrics port; run `fashion-bench --target`
# (1 image, Predict and ModelInfer, concurrency 1 and 32, 16 connections so the kernel has
# connections to spread); stop them; write OUT_DIR/wN/ (fashion-bench's files) and one line
# per count to OUT_DIR/summary.txt with the CPU of all server processes together.
#
# fashion-serve turns SO_REUSEPORT off on purpose (a second server must not silently share
# the port), so this launcher switches it back on for the experiment only. It is not a
# product mode: fashion-bench's "server CPU" and "mean batch" columns are the first
# process's; summary.txt has the sum.
set -euo pipefail
if [ "$#" -lt 3 ]; then
  echo "usage: $0 MODEL_REPO VERSION OUT_DIR [WORKER_COUNTS]" >&2
  exit 2
fi
VERSION=$2 COUNTS=${4:-1 2}
mkdir -p "$3"
REPO="$(cd "$1" && pwd)" OUT="$(cd "$3" && pwd)"  # absolute: the script cds to the root
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PY="$ROOT/.venv/bin/python"
PORT=50161 METRICS_BASE=9310
: > "$OUT/summary.txt"

# Servers started here never outlive the script (failure, Ctrl-C): with SO_REUSEPORT on, a
# leftover one would silently share the port with the next run.
pids=()
stop_servers() {
  if [ "${#pids[@]}" -gt 0 ]; then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  fi
  pids=()
}
trap stop_servers EXIT
trap "exit 130" INT TERM

LAUNCH='import sys
import server.app as app
options = app.grpc_options
app.grpc_options = lambda s: [(k, 1 if k == "grpc.so_reuseport" else v) for k, v in options(s)]
from server.main import main
sys.exit(main())'

cpu_seconds() {  # CPU seconds of the given pids together (fashion-bench's own reader)
  "$PY" -c 'import sys
from bench.serverproc import cpu_seconds
print(sum(cpu_seconds(int(pid)) for pid in sys.argv[1:]))' "$@"
}

cd "$ROOT"
for n in $COUNTS; do
  for i in $(seq 1 "$n"); do
    "$PY" -c "$LAUNCH" --host 127.0.0.1 --port "$PORT" --metrics-port $((METRICS_BASE + i)) --http-port -1 \
      --model-repo "$REPO" --model-version "$VERSION" > "$OUT/server-$n-$i.log" 2>&1 &
    pids+=("$!")
  done
  for i in $(seq 1 "$n"); do
    log="$OUT/server-$n-$i.log"
    for _ in $(seq 1 120); do
      grep -q "serving on port" "$log" && break
      kill -0 "${pids[$((i - 1))]}" 2>/dev/null || { cat "$log" >&2; exit 1; }
      sleep 0.25
    done
    grep -q "serving on port" "$log" || { echo "server $i of $n not ready in 30 s: $log" >&2; exit 1; }
  done
  start_cpu=$(cpu_seconds "${pids[@]}")
  start_s=$(date +%s.%N)
  "$PY" -m bench.cli --target "127.0.0.1:$PORT" --target-metrics "127.0.0.1:$((METRICS_BASE + 1))" \
    --target-pid "${pids[0]}" --duration-s 10 --warmup-s 2 --concurrency 1,32 --sizes 1 \
    --apis predict,oip --processes 2 --connections 16 --out "$OUT/w$n" 2>&1 | tee "$OUT/bench-$n.log"
  end_cpu=$(cpu_seconds "${pids[@]}")
  end_s=$(date +%s.%N)
  stop_servers
  "$PY" - "$n" "$start_cpu" "$end_cpu" "$start_s" "$end_s" >> "$OUT/summary.txt" <<'EOF'
import sys
n, (c0, c1, s0, s1) = int(sys.argv[1]), map(float, sys.argv[2:6])
cores = (c1 - c0) / (s1 - s0)
print(f"workers={n}: all server processes used {cores:.2f} cores on average over the run")
EOF
done
cat "$OUT/summary.txt"
