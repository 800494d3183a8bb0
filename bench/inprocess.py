"""The compute limit: onnxruntime in this process, same model, same session settings.

The sessions are built by the server's own ``create_session`` (same intra-op thread
count, no spinning, sequential execution) and chosen as ``LoadedModel.predict`` chooses
them (batches of up to ``SINGLE_THREAD_MAX_IMAGES`` on one thread), so the only difference
from a served request is everything around ``session.run``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from bench.payload import images
from server.cgroup import available_cpus
from server.contract import INPUT_NAME, MODEL_NAME, OUTPUT_NAME
from server.model import SINGLE_THREAD_MAX_IMAGES, create_session
from server.repository import latest_version, read_version


def model_path(model_repo: Path, version: int = 0) -> Path:
    chosen = version or latest_version(model_repo)
    if chosen is None:
        raise FileNotFoundError(f"no model version under {model_repo}/{MODEL_NAME}/")
    return read_version(model_repo, chosen).model_path


def images_per_second(
    path: Path, batch_sizes: Iterable[int], *, threads: int = 0, duration_s: float = 2.0
) -> dict[int, float]:
    """Back-to-back ``session.run`` for ``duration_s`` per batch size -> images/s."""
    measured = measure(path, batch_sizes, threads, duration_s)
    return {n: m["images_per_s"] for n, m in measured.items()}


def measure(
    path: Path, batch_sizes: Iterable[int], threads: int = 0, duration_s: float = 2.0
) -> dict[int, dict[str, float]]:
    """Per batch size: images/s and this process's CPU ms per image (all its threads)."""
    threads = threads or available_cpus()
    pooled = create_session(path, "cpu", threads)
    single = pooled if threads == 1 else create_session(path, "cpu", 1)
    out: dict[int, dict[str, float]] = {}
    for n in batch_sizes:
        session = single if n <= SINGLE_THREAD_MAX_IMAGES else pooled
        batch = images(n, seed=n)
        for _ in range(20):  # allocations for this shape
            session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        runs = 0
        t0, cpu0 = time.perf_counter(), time.process_time()
        end = t0 + duration_s
        while (now := time.perf_counter()) < end or runs == 0:
            session.run([OUTPUT_NAME], {INPUT_NAME: batch})
            runs += 1
        cpu_s = time.process_time() - cpu0
        out[n] = {
            "images_per_s": round(runs * n / (now - t0), 1),
            "cpu_ms_per_image": round(1000 * cpu_s / (runs * n), 4),
        }
    return out
