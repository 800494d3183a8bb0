"""fashion-bench: a --quick run against a server it starts, and its pure helpers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bench import cli
from bench.loadgen import split
from bench.profile import summarise
from bench.report import markdown

POINT_FIELDS = {
    "api",
    "size",
    "concurrency",
    "duration_s",
    "requests",
    "requests_per_s",
    "images_per_s",
    "latency_ms",
    "errors",
    "errors_by_code",
    "bad_responses",
    "server_errors",
    "server_cpu_cores",
    "server_cpu_ms_per_request",
    "client_cpu_cores",
    "client_processes",
    "mean_batch_size",
    "limit_images_per_s",
    "fraction_of_limit",
}


def test_quick_run_reports_every_field_with_zero_errors(model_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "perf"
    code = cli.main(
        [
            "--quick",
            "--model-repo",
            str(model_repo),
            "--apis",
            "predict,oip,stream",
            "--sizes",
            "1",
            "--concurrency",
            "4",
            "--duration-s",
            "1",
            "--warmup-s",
            "0.3",
            "--limit-s",
            "0.2",
            "--cold-starts",
            "1",
            "--floor",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert [(p["api"], p["size"], p["concurrency"]) for p in results["points"]] == [
        ("predict", 1, 4),
        ("oip", 1, 4),
        ("stream", 1, 4),
    ]
    assert float(results["inprocess_images_per_s"]["1"]) > 0
    for p in results["points"]:
        assert POINT_FIELDS <= p.keys()
        assert p["errors"] == 0 and p["bad_responses"] == 0 and p["server_errors"] == 0
        assert p["requests"] > 10
        assert p["images_per_s"] == pytest.approx(p["requests_per_s"], rel=0.01)
        lat = p["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert 1.0 <= p["mean_batch_size"] <= 4.0  # 4 one-image clients
        assert p["server_cpu_cores"] > 0 and p["client_cpu_cores"] > 0
        assert 0 < p["fraction_of_limit"]
    floor = results["floor_points"]  # the canned-answer grpc.aio server
    assert [(p["api"], p["concurrency"]) for p in floor] == [
        ("predict", 4),
        ("oip", 4),
        ("stream", 4),
    ]
    assert all(p["errors"] == 0 and p["bad_responses"] == 0 and p["requests"] > 10 for p in floor)
    server = results["server"]
    assert 0 < server["cold_start_s"] < 30 and len(server["cold_starts_s"]) == 1
    # VmHWM lags VmRSS by the kernel's per-CPU counter slack: no strict order.
    assert 20 < server["rss_after_warmup_mib"] < 2000 and 20 < server["peak_rss_mib"] < 2000
    assert server["exit_code"] == 0
    assert (out / "throughput.png").stat().st_size > 1000
    assert "| Predict | 1 | 4 |" in (out / "results.md").read_text()


def test_clients_are_spread_over_processes() -> None:
    assert split(32, 2) == [16, 16]
    assert split(5, 2) == [3, 2]
    assert split(1, 4) == [1]


def test_target_must_be_loopback() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["--target", "127.0.0.1:5"]).target == "127.0.0.1:5"
    assert parser.parse_args(["--target", "[::1]:5"]).target == "[::1]:5"
    with pytest.raises(argparse.ArgumentTypeError):
        cli._loopback("10.0.0.1:50051")


def test_server_threads_are_read_from_pass_through_flags() -> None:
    assert cli._server_threads(["--threads=1"]) == 1
    assert cli._server_threads(["--max-batch-size", "32", "--threads", "2"]) == 2
    assert cli._server_threads([]) == 0


def test_profile_summary_leaves_out_waiting_threads() -> None:
    raw = "\n".join(
        [
            "thread (1): MainThread;run (asyncio/base_events.py:1);epoll_wait (libc.so.6) 50",
            "thread (1): MainThread;_run_once (asyncio/base_events.py:9);"
            "0x7f (grpc/_cython/cygrpc.so);sendmsg (libc.so.6) 30",
            "thread (2): infer_0;predict (server/model.py:1);"
            "run (onnxruntime/capi/onnxruntime_inference_collection.py:3) 10",
        ]
    )
    summary = summarise(raw)
    assert summary["busy_samples"] == 40 and summary["idle_samples"] == 50
    buckets = {b["name"]: b["share"] for b in summary["buckets"]}
    assert buckets == {"grpc core / cython": 0.75, "onnxruntime session.run": 0.25}
    assert summary["threads"][0] == {"name": "MainThread", "share": 0.75}


def test_markdown_reports_fraction_of_limit() -> None:
    point = {
        "api": "oip",
        "size": 32,
        "concurrency": 8,
        "requests_per_s": 100.0,
        "images_per_s": 3200.0,
        "fraction_of_limit": 0.5,
        "latency_ms": {"p50": 1.0, "p90": 2.0, "p99": 3.0, "max": 4.0},
        "errors": 0,
        "bad_responses": 0,
        "server_cpu_cores": 1.0,
        "client_cpu_cores": 0.5,
        "mean_batch_size": 32.0,
    }
    text = markdown(
        {
            "command": "fashion-bench",
            "machine": "m",
            "limit_threads": 2,
            "inprocess_images_per_s": {"32": 6400.0},
            "points": [point],
        }
    )
    assert "| ModelInfer (OIP) | 32 | 8 | 100 | 3,200 | 50 % |" in text
    assert (
        "| 32 images/request, concurrency 8, fraction of in-process | ModelInfer (OIP) "
        "| ≥ 85% | 50% | **no** |" in text
    )


@pytest.mark.parametrize("wait", ["floor", "none", "yield", "executor", "batched", "context"])
def test_echo_answers_concurrent_calls_with_each_wait(wait: str) -> None:
    import asyncio

    import grpc

    from bench.experiments import echo_wait
    from bench.payload import METHOD, answered_images, images, request_bytes
    from bench.serverproc import start_echo

    server = start_echo() if wait == "floor" else echo_wait.start(wait)

    async def calls() -> list[int]:
        async with grpc.aio.insecure_channel(server.target) as channel:
            call = channel.unary_unary(METHOD["oip"])
            body = request_bytes("oip", images(1, seed=0))
            answers = await asyncio.gather(*(call(body, timeout=10) for _ in range(32)))
            return [answered_images("oip", a) for a in answers]

    try:
        assert asyncio.run(calls()) == [1] * 32  # 32 in flight: batched waits share hops
    finally:
        assert server.stop() == 0


def test_scaling_plan_pins_each_server_to_its_share_of_the_cores():
    from bench import scaling

    assert scaling.cores("0-3,8,10-11") == [0, 1, 2, 3, 8, 10, 11]
    args = scaling.build_parser().parse_args(["--workers", "1,2,4", "--server-cores", "0-3"])
    assert scaling.plan(args) == [
        ("fashion-serve --workers 1", [0]),
        ("pytriton on 1 cores", [0]),
        ("fashion-serve --workers 2", [0, 1]),
        ("pytriton on 2 cores", [0, 1]),
        ("fashion-serve --workers 4", [0, 1, 2, 3]),
        ("pytriton on 4 cores", [0, 1, 2, 3]),
    ]
    too_many = scaling.build_parser().parse_args(["--workers", "8", "--server-cores", "0-3"])
    with pytest.raises(SystemExit, match="needs 8 server cores"):
        scaling.plan(too_many)


def test_scaling_growth_is_against_the_same_server_on_the_fewest_cores():
    from bench import scaling

    def entry(cores: int, *rates: float) -> dict:
        points = [
            {"images_per_s": r, "latency_ms": {"p99": 9.0}, "server_cpu_cores": cores * 0.9}
            for r in rates
        ]
        return {"cores": cores, "points": points}

    results = {
        "command": "python -m bench.scaling",
        "machine": "16 CPUs",
        "servers": {
            "fashion-serve --workers 1": entry(1, 1000, 4000),
            "pytriton on 1 cores": entry(1, 800, 3000),
            "fashion-serve --workers 4": entry(4, 3500, 0),  # its second point failed
            "pytriton on 4 cores": entry(4, 2000, 9000),
            "fashion-serve --workers 8": entry(8, 6000),  # broke off before its second
        },
    }
    assert scaling.growth(results) == {
        "fashion-serve --workers 1": [1.0, 1.0],
        "pytriton on 1 cores": [1.0, 1.0],
        "fashion-serve --workers 4": [3.5, None],
        "pytriton on 4 cores": [2.5, 3.0],
        "fashion-serve --workers 8": [6.0, None],
    }
    table = scaling.markdown(results)
    ours = (
        "| fashion-serve --workers 4 | 4 | 3,500 | 9.0 | 3.60 | 3.50x | 0 | 9.0 | 3.60 | - | 4x |"
    )
    assert ours in table
    peer = (
        "| pytriton on 4 cores | 4 | 2,000 | 9.0 | 3.60 | 2.50x | 9,000 | 9.0 | 3.60 | 3.00x | 4x |"
    )
    assert peer in table
    assert (
        "| fashion-serve --workers 8 | 8 | 6,000 | 9.0 | 7.20 | 6.00x | - | - | - | - | 8x |"
        in table
    )


def test_hop_cost_times_every_mode_on_the_real_model(model_repo, capsys) -> None:
    from bench.experiments import hop_cost

    assert hop_cost.main(["--model-repo", str(model_repo), "--calls", "20", "--rounds", "1"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert [r["mode"] for r in results] == list(hop_cost.MODES)
    assert all(r["p50_ms"] > 0 and r["cpu_ms_per_call"] >= 0 for r in results)


def test_hop_cost_says_when_the_repository_has_no_model(tmp_path) -> None:
    from bench.experiments import hop_cost

    with pytest.raises(SystemExit) as exit_info:
        hop_cost.main(["--model-repo", str(tmp_path)])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("api", ["oip", "predict", "stream"])
def test_inproc_measures_our_request_path_without_grpc(model_repo, capsys, api) -> None:
    from bench.experiments import inproc

    argv = ["--model-repo", str(model_repo), "--api", api, "--requests", "64"]
    assert inproc.main([*argv, "--concurrency", "4", "--constant-model"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["api"] == api and result["requests"] == 64 and result["constant_model"]
    assert result["cpu_ms_per_request"] > 0 and result["wall_ms_per_request"] > 0


def test_inproc_s_constant_model_is_the_real_one_until_warmed_up(model_repo) -> None:
    import numpy as np

    from bench.experiments.inproc import ConstantModel
    from server.repository import latest_version, read_version

    version = read_version(model_repo, latest_version(model_repo, "fashion"), "fashion")
    model = ConstantModel(version)
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    real = model.predict(images)
    assert not np.allclose(real, 0.1)  # the real model's answer while it loads
    model.warm_up()
    assert model.inline_max_images >= 1  # timed on the real model
    assert np.array_equal(model.predict(images), np.full((3, 10), 0.1, dtype=np.float32))


def test_inproc_says_when_the_repository_has_no_model(tmp_path) -> None:
    from bench.experiments import inproc

    with pytest.raises(SystemExit) as exit_info:
        inproc.main(["--model-repo", str(tmp_path)])
    assert exit_info.value.code == 2
