"""Where the time goes in a single-image request: py-spy on the server under load.

The load is 1-image Predict at concurrency 1. py-spy samples every thread of the
server (``--native``: C/C++ frames of grpc core, protobuf and onnxruntime too). Native
stacks need the process paused for each sample (it slows the server; shares stay
meaningful) and py-spy then reports waiting threads too: samples whose innermost
frame is a wait (epoll, poll, futex, condition variable) are counted as idle and left
out of the shares. ``--nonblocking`` (Python frames only) gave torn stacks here.
The output is collapsed stacks (``--format raw``).
:func:`summarise` turns them into shares of the sampled (non-idle) time.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.loadgen import LoadGenerator, percentiles_ms
from bench.point import Target

RATE_HZ = 250
# A sample is idle when one of its innermost frames waits (the leaf itself is often an
# unnamed address inside libc's futex wrapper).
WAIT_FRAME = re.compile(
    r"^(epoll_wait|epoll_pwait|poll|ppoll|select|pthread_cond_\w*wait|sem_\w*wait|"
    r"__futex\w*|nanosleep|clock_nanosleep|accept|take_gil|PyThread_acquire_lock\w*) "
)
# Inclusive buckets: the first pattern found in a stack (leaf first) names the sample.
BUCKETS: tuple[tuple[str, str], ...] = (
    ("onnxruntime session.run", r"onnxruntime|OrtRun|InferenceSession|run \(onnxruntime"),
    ("decode request (codec)", r"prepare_images|decode_images|decode_encoded|decode_infer_request"),
    ("encode response (codec)", r"encode_predictions|encode_infer_response|encode_stream_response"),
    ("prometheus metrics", r"prometheus_client|count_predictions|observe_batch"),
    ("batcher scheduling", r"\(server/batcher\.py|batcher\.py"),
    ("servicer + status wrapper", r"servicer\.py|status\.py|oip\.py|dataplane\.py|readiness\.py"),
    ("protobuf (de)serialisation", r"protobuf|_message|upb_|SerializeToString|FromString"),
    ("asyncio event loop", r"asyncio/|base_events|_run_once|uvloop"),
    ("grpc core / cython", r"grpc|cygrpc|_cython"),
)


def _frame_name(frame: str) -> str:
    """'handler (server/servicer.py:70)' -> 'handler (server/servicer.py)'."""
    return re.sub(r":\d+\)$", ")", frame.strip())


def summarise(raw: str, top: int = 15) -> dict[str, Any]:
    total = idle = 0
    by_thread: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    buckets: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if any(WAIT_FRAME.match(f.strip()) for f in frames[-3:]):
            idle += count
            continue
        total += count
        by_thread[frames[0].partition("): ")[2] or frames[0]] += count
        leaf[_frame_name(frames[-1])] += count
        name = "other"
        for frame in reversed(frames[1:]):
            hit = next((b for b, pattern in BUCKETS if re.search(pattern, frame)), None)
            if hit is not None:
                name = hit
                break
        buckets[name] += count

    def shares(counter: Counter[str], n: int) -> list[dict[str, Any]]:
        return [{"name": k, "share": round(v / total, 3)} for k, v in counter.most_common(n)]

    total = total or 1
    return {
        "busy_samples": total,
        "idle_samples": idle,
        "threads": shares(by_thread, 8),
        "buckets": shares(buckets, len(BUCKETS) + 1),
        "top_self": shares(leaf, top),
    }


def py_spy() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.is_file() else shutil.which("py-spy")


def profile_single_image(
    load: LoadGenerator, target: Target, seconds: float, out_dir: Path
) -> dict[str, Any]:
    """1-image Predict at concurrency 1 while py-spy records the server."""
    binary = py_spy()
    if binary is None or target.pid is None:
        return {
            "skipped": "py-spy not installed (pip install py-spy)"
            if binary is None
            else "no server pid"
        }
    out_dir.mkdir(parents=True, exist_ok=True)
    raw_path = out_dir / "profile-predict-1image.txt"
    used, schedule = load.start(
        target=target.address,
        api="predict",
        size=1,
        concurrency=1,
        connections=1,
        warmup_s=1.0,
        duration_s=seconds + 1.0,
    )
    time.sleep(max(0.0, schedule.measure_from - time.monotonic()))
    command = [
        binary,
        "record",
        "--pid",
        str(target.pid),
        "--duration",
        str(int(seconds)),
        "--rate",
        str(RATE_HZ),
        "--format",
        "raw",
        "--native",
        "--threads",
        "--output",
        str(raw_path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    outcome = load.collect(used, timeout_s=seconds + 30.0)
    result: dict[str, Any] = {
        "command": " ".join(["py-spy", *command[1:]]),
        "load": "Predict, 1 image/request, concurrency 1",
        "requests_per_s_while_profiled": round(len(outcome.latencies_s) / (seconds + 1.0), 1),
        "latency_ms_while_profiled": percentiles_ms(outcome.latencies_s),
    }
    if done.returncode != 0 or not raw_path.is_file():
        result["skipped"] = f"py-spy failed: {done.stderr.strip()[-500:]}"
        return result
    result["raw_file"] = raw_path.name
    result.update(summarise(raw_path.read_text()))
    return result
