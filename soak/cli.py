"""``fashion-soak``: start a server on a private copy of a model repository, drive steady
mixed traffic for a fixed time, inject a hot reload (next to repository entries it must
step over: names that are not versions, a symlinked alias, a newer version with unreadable
metadata) and a client cancellation storm in the middle, and check: zero unexpected
errors, every valid answer correct, resident memory growth under 10 % over the steady
traffic after the reload (and the reload's own step under 30 %). With --flip-s, version
policies and labels are then flipped under the same traffic for that long
(soak/flip_phase.py): no request may fail and canary answers come from the canary; the
memory step over the phase is reported. With --hostile-http, the
REST attacks of soak/hostile_http.py follow, each with health p99 < 1 s.
Prints (and optionally writes) a JSON report; exit status 1 when a check fails."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort

from bench.serverproc import memory_mib, start_server
from client.testset import load_test_split
from server.contract import INPUT_NAME, METADATA_FILE, MODEL_FILE, MODEL_NAME, OUTPUT_NAME
from server.repository import latest_version, read_version, sha256_file
from soak import hostile_grpc
from soak.flip_phase import flip_phase
from soak.hostile_phase import soak_phase
from soak.report import emit
from soak.traffic import Traffic


def publish_copy(repo: Path) -> int:
    """Publish the newest version again as a new version (atomic rename), like training does."""
    current = latest_version(repo)
    assert current is not None
    source = read_version(repo, current)
    staged = repo / MODEL_NAME / f".tmp-soak-{os.getpid()}"
    shutil.copytree(source.path, staged)
    metadata = dict(
        source.metadata, version=current + 1, model_sha256=sha256_file(staged / MODEL_FILE)
    )
    (staged / METADATA_FILE).write_text(json.dumps(metadata))
    os.rename(staged, repo / MODEL_NAME / str(current + 1))
    return current + 1


# A reload may keep one model's worth of memory (~25 MiB on ~125 MiB): more is a regression.
MAX_RELOAD_STEP_PCT = 30

# Repository entries a reload must step over (docs/RELIABILITY.md, issue #17 items 4, 5, 11):
# names that are not versions, and a newer version whose metadata cannot be parsed.
NOT_VERSIONS = ("99999999999999999999", "\u00b2", "\uff17")


def plant_hostile_entries(repo: Path, valid: int) -> list[str]:
    """Copies of version ``valid`` under names that are not versions, a symlinked alias and
    version ``valid + 1`` with metadata nested too deeply to parse. Returns what was planted."""
    model_dir = repo / MODEL_NAME
    planted = []
    for name in NOT_VERSIONS:
        shutil.copytree(model_dir / str(valid), model_dir / name)
        planted.append(name)
    (model_dir / str(valid + 2)).symlink_to(model_dir / str(valid))  # records `valid`: refused
    broken = model_dir / f".tmp-soak-broken-{os.getpid()}"
    shutil.copytree(model_dir / str(valid), broken)
    (broken / METADATA_FILE).write_text("[" * 100_000 + "]" * 100_000)
    os.rename(broken, model_dir / str(valid + 1))
    return [*planted, str(valid + 2), str(valid + 1)]


async def run(args: argparse.Namespace, repo: Path) -> dict[str, Any]:
    test_images, _, _ = load_test_split(args.data_dir)
    images = test_images[: args.images]
    session = ort.InferenceSession(str(read_version(repo, latest_version(repo) or 1).model_path))
    (probabilities,) = session.run([OUTPUT_NAME], {INPUT_NAME: images})
    labels = probabilities.argmax(axis=1)
    server = start_server(
        repo,
        ["--metrics-port", "-1", "--poll-interval-s", "0", "--log-level", "info", *args.server_arg],
    )
    report: dict[str, Any] = {"duration_s": args.duration_s, "clients": args.clients}
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            traffic = Traffic(channel, images, labels, seed=args.seed)
            stop = asyncio.Event()
            workers = [asyncio.create_task(traffic.worker(stop)) for _ in range(args.clients)]
            await asyncio.sleep(args.warmup_s)
            rss_start = memory_mib(server.pid)["rss_mib"]
            await asyncio.sleep(args.duration_s / 4)
            published = publish_copy(repo)
            # Hostile entries above and beside it: the reload must still take `published`.
            report["hostile_entries"] = plant_hostile_entries(repo, published)
            report["reloaded_to_version"] = published
            server.process.send_signal(signal.SIGHUP)
            # Its own connection: channels with equal arguments would share one.
            own = [("grpc.use_local_subchannel_pool", 1)]
            async with grpc.aio.insecure_channel(server.target, options=own) as storm:
                await traffic.cancellation_storm(args.storm, storm)
            await asyncio.sleep(args.duration_s / 4)
            # Leaks are measured from here: a reload has a one-time cost of its own (below).
            rss_reloaded = memory_mib(server.pid)["rss_mib"]
            await asyncio.sleep(args.duration_s / 2)
            rss_end = memory_mib(server.pid)["rss_mib"]
            if args.flip_s > 0:  # after the leak window: a second loaded version adds memory
                report["flips"] = await flip_phase(
                    repo, MODEL_NAME, server, traffic,
                    old=published - 1, new=published, seconds=args.flip_s,
                )  # fmt: skip
                rss_flipped = memory_mib(server.pid)["rss_mib"]
                report["flips"]["rss_mib_after"] = rss_flipped
                report["flips"]["rss_step_pct"] = round(100 * (rss_flipped - rss_end) / rss_end, 2)
            stop.set()
            await asyncio.gather(*workers)
        if args.hostile_s > 0:  # issue #28: hostile gRPC clients, after the steady traffic
            report["hostile_grpc"] = await hostile_grpc.run_all(
                server.target, server.pid, list(hostile_grpc.attacks(server.target)),
                args.hostile_s, rss_budget_mib=768.0, health_p99_ms=1000.0,
            )  # fmt: skip
        if args.hostile_http:  # after the steady traffic: its clients would starve the probe
            report["hostile_http"] = await soak_phase(
                "127.0.0.1", server.port, server.http_port, server.pid
            )
    finally:
        report["server_exit_code"] = server.stop()
    tally = traffic.tally
    lat = np.array(tally.latencies_s) * 1000
    report.update(
        sent=dict(tally.sent),
        ok=dict(tally.ok),
        expected_errors=dict(tally.expected_errors),
        unexpected_errors=dict(tally.unexpected),
        unexpected_details=tally.unexpected_details,
        wrong_answers=tally.wrong_answers,
        cancelled_by_client=tally.cancelled_by_client,
        versions_seen=sorted(tally.versions_seen),
        requests_per_s=round(sum(tally.sent.values()) / (args.duration_s + args.warmup_s), 1),
        latency_ms={
            "p50": round(float(np.percentile(lat, 50)), 2),
            "p99": round(float(np.percentile(lat, 99)), 2),
            "max": round(float(lat.max()), 2),
        },
        rss_mib={"after_warmup": rss_start, "after_reload": rss_reloaded, "end": rss_end},
        rss_growth_pct=round(100 * (rss_end - rss_start) / rss_start, 2),
        # Steady traffic after the reload: what a leak per request would show.
        rss_growth_after_reload_pct=round(100 * (rss_end - rss_reloaded) / rss_reloaded, 2),
        # One reload's cost: in about half the runs the new version's onnxruntime memory
        # lands in a new ~25 MiB region that stays (docs/RELIABILITY.md). A version that
        # is never freed is caught exactly by tests/reliability/test_hot_reload.py.
        rss_reload_step_pct=round(100 * (rss_reloaded - rss_start) / rss_start, 2),
    )
    report["passed"] = (
        not tally.unexpected
        and tally.wrong_answers == 0
        and report["rss_growth_after_reload_pct"] < 10
        and report["rss_reload_step_pct"] < MAX_RELOAD_STEP_PCT
        and report["server_exit_code"] == 0
        and str(report["reloaded_to_version"]) in tally.versions_seen
        and all(
            set(r["during"]["health_checks"]) == {"SERVING"}
            for r in report.get("hostile_grpc", {}).values()
        )
        and report.get("hostile_http", {}).get("passed", True)
        # The flips' memory step is reported, not judged: see soak/flip_phase.py.
        and report.get("flips", {}).get("passed", True)
    )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fashion-soak", description=__doc__)
    p.add_argument(
        "--model-repo",
        type=Path,
        default=Path(os.environ.get("FASHION_MODEL_REPO", "models")),
        help="repository to copy (never modified)",
    )
    p.add_argument("--duration-s", type=float, default=180.0, help="measured traffic time")
    p.add_argument("--warmup-s", type=float, default=5.0)
    p.add_argument("--clients", type=int, default=16, help="concurrent closed-loop clients")
    p.add_argument("--storm", type=int, default=200, help="calls in the cancellation storm")
    p.add_argument("--images", type=int, default=2000, help="test images to draw from")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None, help="also write the JSON report here")
    p.add_argument(
        "--flip-s",
        type=float,
        default=0.0,
        help="then flip version policies and labels under the traffic this long (0 = none; "
        "soak/flip_phase.py), reported under flips",
    )
    p.add_argument(
        "--hostile-s",
        type=float,
        default=0.0,
        help="then run each hostile gRPC attack (soak/hostile_grpc.py) this long (0 = none); "
        "reported under hostile_grpc, health must stay SERVING",
    )
    p.add_argument(
        "--hostile-http",
        action="store_true",
        help="then attack the REST port (soak/hostile_http.py): health p99 < 1 s during "
        "each attack, memory and descriptors back after",
    )
    p.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra fashion-serve argument (repeatable), e.g. --server-arg=--threads=1",
    )
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fashion-soak-") as tmp:
        repo = Path(tmp) / "repo"
        shutil.copytree(
            args.model_repo / MODEL_NAME,
            repo / MODEL_NAME,
            ignore=shutil.ignore_patterns(".tmp-*"),
        )
        t0 = time.monotonic()
        report = asyncio.run(run(args, repo))
        report["wall_s"] = round(time.monotonic() - t0, 1)
    emit(report, args.out)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
