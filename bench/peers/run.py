"""``python -m bench.peers``: fashion-serve, PyTriton, MLServer, the grpc.aio floor and
in-process onnxruntime, back to back in one run, on the same published model.

1. Installs PyTriton and MLServer into ``.venv-pytriton`` / ``.venv-mlserver`` (once).
2. Strips the in-graph preprocessing off the model for them (FP32 input, as a Keras model
   is served there) and checks parity with ours on real Fashion-MNIST test images.
3. Drives each server with the same load generator and points (``fashion-bench``'s): ours over
   Predict, ModelInfer (UINT8), PredictStream and ModelStreamInfer; the peers over ModelInfer
   with FP32 (and PyTriton's ModelStreamInfer); bench.echo over the same unary APIs.
4. Optionally ``perf_analyzer`` against each (``--perf-analyzer``), a second yardstick.
5. Writes peers.json, peers.md and peers.png to ``--out``. With ``--rounds R`` (R >= 2) it
   makes R such passes, every other one in the opposite order, writes each to
   ``OUT/pass-K/`` and judges each target on its median over the passes
   (``OUT/rounds.md``, :mod:`bench.peers.rounds`): one pass measures each server once, and
   this machine drifts between servers.

Every server is started here and stopped by PID at the end, whatever happens in between.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import inprocess
from bench.cli import git_state, machine
from bench.loadgen import LoadGenerator
from bench.peers import rounds, servers, surgery, table, venvs
from bench.point import Target, measure
from bench.serverproc import memory_mib, start_echo, start_server
from client.testset import load_test_split

# (api, images per request, concurrency) driven against each server.
OURS = [
    *((api, size, conc) for api in ("oip", "predict") for size, conc in ((1, 1), (1, 32), (32, 8))),
    ("stream", 1, 32),
    ("oip-stream", 1, 32),
]
# The floor's stream: what one grpc.aio message costs on a stream (the streamed ceiling).
FLOOR = [*((api, 1, conc) for api in ("oip", "predict") for conc in (1, 32)), ("stream", 1, 32)]
PEER_UNARY = [("oip-fp32", 1, 1), ("oip-fp32", 1, 32), ("oip-fp32", 32, 8)]
# In-process batch sizes: 1 and 4 (one-thread session: the model's CPU per image at the
# small batches of 1 image x 32) and 32 (the 32 x 8 point's limit).
INPROCESS_BATCHES = (1, 4, 32)
PEERS = {"pytriton": [*PEER_UNARY, ("oip-fp32-stream", 1, 32)], "mlserver": PEER_UNARY}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__)
    p.add_argument("--model-repo", type=Path, default=Path("models"))
    p.add_argument("--model-version", type=int, default=0, help="0 = the newest")
    p.add_argument("--out", type=Path, default=Path("docs/perf/peers"))
    p.add_argument("--work", type=Path, default=Path("bench-out/peers"), help="models, logs")
    p.add_argument("--duration-s", type=float, default=6.0, help="measured time per point")
    p.add_argument("--warmup-s", type=float, default=1.5)
    p.add_argument("--processes", type=int, default=2, help="load-generator processes")
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--threads", type=int, default=0, help="onnxruntime threads everywhere")
    p.add_argument("--base-port", type=int, default=18000, help="peers' fixed ports from here")
    p.add_argument("--parity-images", type=int, default=2000, help="test images for parity")
    p.add_argument(
        "--only",
        default="ours,workers,floor,pytriton,mlserver",
        help="servers to run, in this order (reverse it for a second run); workers = "
        "fashion-serve --workers N",
    )
    p.add_argument("--workers", type=int, default=2, help="N of the 'workers' server (--workers N)")
    p.add_argument("--perf-analyzer", action="store_true", help="also perf_analyzer each")
    p.add_argument("--no-install", action="store_true", help="use the peer venvs as they are")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="passes over every server, every other one in reverse order; with 2 or more, "
        "each pass is written to OUT/pass-K and each target judged on its median "
        "(OUT/rounds.md, bench.peers.rounds)",
    )
    return p


def _loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _log(message: str) -> None:
    print(f"bench.peers: {message}", file=sys.stderr, flush=True)


def _point(load: LoadGenerator, target: Target, step: tuple[str, int, int], args: Any) -> dict:
    api, size, conc = step
    point = measure(
        load,
        target,
        api=api,
        size=size,
        concurrency=conc,
        connections=args.connections,
        warmup_s=args.warmup_s,
        duration_s=args.duration_s,
    )
    _log(
        f"  {api:16} {size:2} x conc {conc:2}: {point['images_per_s']:8.0f} img/s, "
        f"p50 {point['latency_ms']['p50']} ms, errors {point['errors']}, "
        f"bad {point['bad_responses']}, server cpu {point['server_cpu_cores']}"
    )
    return point


def _died(server: Any, point: dict[str, Any]) -> bool:
    """The server's process exited, or it answered nothing but errors for a whole point.

    The others catch a peer whose serving child died under a live parent: PyTriton's
    tritonserver segfaulting leaves its Python process running, the calls UNAVAILABLE.
    """
    exited = server.process.poll() is not None
    nothing_but_errors = point["requests"] == 0 and point["errors"] > 0
    # The tree's CPU shrank (bench.point: None) while calls failed: a child died mid-point.
    child_died = point["errors"] > 0 and point["server_cpu_cores"] is None
    return exited or nothing_but_errors or child_died


def _perf_analyzer(name: str, target: str) -> dict[str, Any]:
    from bench import triton_perf

    binary = triton_perf.find_binary()
    if binary is None:
        return {"error": "perf_analyzer not installed (scripts/bootstrap.sh ensure_perf_analyzer)"}
    out: dict[str, Any] = {"runs": {}}
    lines = []
    for mode, flags in (("unary, 1 image", []), ("unary, -b 8", ["-b", "8"])):
        argv = triton_perf.command(binary, target, flags, concurrency="1:32:31", interval_ms=2000)
        code, output = triton_perf.run(argv)
        if code != 0:
            last = [line for line in output.splitlines() if line.strip()][-1:] or ["(no output)"]
            return {"error": f"perf_analyzer exited {code} against {name}: {last[0]}"}
        points = triton_perf.parse(output)
        out["runs"][mode] = [
            {"concurrency": p.concurrency, "throughput": p.throughput, "latency_us": p.latency_us}
            for p in points
        ]
        lines += [
            f"| {mode} | {p.concurrency} | {p.throughput:,.0f} | {p.latency_us} |" for p in points
        ]
    out["table"] = "\n".join(
        ["| mode | concurrency | images/s | client latency (us) |", "|---|---|---|---|", *lines]
    )
    return out


def _with_server(
    results: dict[str, Any],
    name: str,
    start: Callable[[], Any],
    target_of: Callable[[Any], Target],
    plan: Sequence[tuple[str, int, int]],
    load: LoadGenerator,
    args: Any,
) -> None:
    _log(f"{name}: starting")
    server = start()
    entry: dict[str, Any] = {
        "cold_start_s": round(server.cold_start_s, 3),
        "pid": server.pid,
        "points": [],
    }
    results["servers"][name] = entry
    try:
        for step in plan:
            # A server that dies mid-point is reported (the crash and the failed point) and
            # restarted, so what follows (perf_analyzer too) meets a live one; the point is
            # measured once more on the fresh process, and a second crash keeps its errors.
            for attempt in (1, 2):
                point = _point(load, target_of(server), step, args)
                if attempt == 2:
                    point["retried_after_crash"] = True
                if not _died(server, point):
                    break
                crash = {"during": list(step), "exit_code": server.process.poll(), "failed": point}
                entry.setdefault("crashes", []).append(crash)
                _log(f"{name} died during {step} (exit {crash['exit_code']}); restarting")
                server.stop()
                server = start()
            entry["points"].append(point)
        entry["memory_end"] = memory_mib(server.pid)
        if args.perf_analyzer and name != "floor":
            results.setdefault("perf_analyzer", {})[name] = _perf_analyzer(name, server.target)
    finally:
        entry["exit_code"] = server.stop()
        _log(f"{name}: stopped (exit {entry['exit_code']})")


def run(args: argparse.Namespace, argv: Sequence[str]) -> list[dict[str, Any]]:
    """``--rounds`` passes over the servers (one by default), each pass's results."""
    order = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(order) - {"ours", "workers", "floor", "pytriton", "mlserver"}
    if unknown:
        raise SystemExit(f"bench.peers: unknown server(s) in --only: {sorted(unknown)}")
    if args.rounds < 1:
        raise SystemExit("bench.peers: --rounds must be 1 or more")
    only = set(order)
    args.work = args.work.resolve()  # the peers run with other working directories
    threads = args.threads or len(os.sched_getaffinity(0))
    original = inprocess.model_path(args.model_repo, args.model_version)
    fp32 = surgery.write_fp32_model(original, args.work / "fashion-fp32.onnx")
    test_images, _, _ = load_test_split()
    parity = surgery.check_parity(original, fp32, test_images[: args.parity_images])
    _log(f"FP32 model {fp32}: parity {parity}")
    if not parity.ok:
        raise SystemExit("bench.peers: the stripped model does not match ours; not measuring")
    if not args.no_install:
        for name in ("pytriton", "mlserver"):
            if name in only:
                _log(f"ensuring .venv-{name}")
                venvs.ensure(venvs.ENVS[name], args.work / f"install-{name}.log")
    server_args = [f"--threads={threads}"]
    if args.model_version:
        server_args.append(f"--model-version={args.model_version}")
    peer_target = lambda s: Target(s.target, None, s.pid)  # noqa: E731
    plans: dict[str, tuple[str, Callable[[], Any], Callable[[Any], Target], Any]] = {
        "ours": (
            "fashion-serve",
            lambda: start_server(args.model_repo, server_args),
            lambda s: Target(s.target, f"127.0.0.1:{s.metrics_port}", s.pid),
            OURS,
        ),
        # N workers behind one port, the CPUs shared out as their onnxruntime threads;
        # The load generator opens --connections connections per process (4 by default):
        # the kernel spreads connections, not calls, over the workers.
        "workers": (
            f"fashion-serve --workers {args.workers}",
            lambda: start_server(
                args.model_repo,
                [
                    f"--workers={args.workers}",
                    f"--threads={max(1, threads // args.workers)}",
                    *server_args[1:],
                ],
            ),
            lambda s: Target(s.target, f"127.0.0.1:{s.metrics_port}", s.pid),
            OURS,
        ),
        "floor": ("floor", start_echo, peer_target, FLOOR),
        "pytriton": (
            "pytriton",
            lambda: servers.start_pytriton(fp32, args.base_port, args.work, threads),
            peer_target,
            PEERS["pytriton"],
        ),
        "mlserver": (
            "mlserver",
            lambda: servers.start_mlserver(fp32, args.base_port, args.work, threads),
            peer_target,
            PEERS["mlserver"],
        ),
    }
    passes = []
    for k in range(args.rounds):
        # Every other pass in reverse: a machine drifting through the run favours no server.
        names = order if k % 2 == 0 else order[::-1]
        if args.rounds > 1:
            _log(f"pass {k + 1} of {args.rounds}: {', '.join(names)}")
        results = _pass(args, argv, [plans[key] for key in names], original, threads)
        results["parity"] = {**parity.__dict__, "ok": parity.ok, "model": str(original)}
        if args.rounds > 1:
            results["pass"] = {"index": k + 1, "of": args.rounds}
        passes.append(results)
    return passes


def _pass(
    args: argparse.Namespace,
    argv: Sequence[str],
    plans: Sequence[tuple[str, Callable[[], Any], Callable[[Any], Target], Any]],
    original: Path,
    threads: int,
) -> dict[str, Any]:
    """One pass: in-process onnxruntime, every server in ``plans``' order, in-process again."""
    t0 = time.monotonic()
    results: dict[str, Any] = {
        "command": " ".join(["python -m bench.peers", *argv]),
        "machine": machine(),
        "git": git_state(),
        "loadavg_before": _loadavg(),
        "threads": threads,
        "duration_s": args.duration_s,
        "warmup_s": args.warmup_s,
        "servers": {},
    }
    before = inprocess.measure(original, INPROCESS_BATCHES, threads, duration_s=2.0)
    with LoadGenerator(args.processes) as load:
        for name, start, target_of, plan in plans:
            _with_server(results, name, start, target_of, plan, load, args)
    after = inprocess.measure(original, INPROCESS_BATCHES, threads, duration_s=2.0)
    results["inprocess_runs"] = {"before": before, "after": after}
    # The better of the two for each: the limit is what the machine allowed at its best.
    results["inprocess_images_per_s"] = {
        str(n): max(before[n]["images_per_s"], after[n]["images_per_s"]) for n in before
    }
    results["inprocess_cpu_ms_per_image"] = {
        str(n): min(before[n]["cpu_ms_per_image"], after[n]["cpu_ms_per_image"]) for n in before
    }
    results["loadavg_after"] = _loadavg()
    results["wall_s"] = round(time.monotonic() - t0, 1)  # the pass's measuring, setup excluded
    return results


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    passes = run(args, argv)
    if len(passes) == 1:
        written = table.write(passes[0], args.out)
    else:
        written = rounds.write(passes, args.out, " ".join(["python -m bench.peers", *argv]))
    for path in written:
        _log(f"wrote {path}")
    if len(passes) == 1:
        print(table.ratios_table(table.ratios(passes[0])))
    else:
        print(rounds.rows_table(rounds.targets(passes), len(passes)))
    return 0 if all(table.our_errors(results) == 0 for results in passes) else 1
