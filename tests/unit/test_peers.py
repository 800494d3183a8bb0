"""bench.peers without the peers: model surgery and its parity, FP32 payloads, the ratio
table, the venv marker and the process-tree accounting. The full peer run is a benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from bench.payload import answered_images, request_bytes
from bench.peers import surgery, table
from bench.peers.venvs import PeerEnv
from bench.serverproc import cpu_seconds, descendants
from client.testset import load_test_split
from server._proto.inference import grpc_predict_v2_pb2 as oip


@pytest.fixture(scope="module")
def stripped(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    original = model_repo / "fashion" / "1" / "model.onnx"
    out = tmp_path_factory.mktemp("peers") / "fashion-fp32.onnx"
    return original, surgery.write_fp32_model(original, out)


def test_stripped_model_takes_keras_input_and_has_no_preprocessing(stripped):
    model = onnx.load(str(stripped[1]))
    (graph_input,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert graph_input.name == "images"
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert dims == ["batch", 28, 28, 1]
    readers = [n.op_type for n in model.graph.node if "images" in n.input]
    assert readers and not set(readers) & set(surgery.PREPROCESSING_OPS)
    assert len(onnx.load(str(stripped[0])).graph.node) - len(model.graph.node) == 3
    assert [o.name for o in model.graph.output] == ["probabilities"]


def test_stripped_model_answers_like_ours_on_real_test_images(stripped):
    images, _, _ = load_test_split()
    parity = surgery.check_parity(*stripped, images[:500])
    assert parity.images == 500
    assert parity.ok, parity


def test_a_model_without_uint8_preprocessing_is_refused(stripped):
    with pytest.raises(surgery.SurgeryError, match="not uint8"):
        surgery.strip_preprocessing(onnx.load(str(stripped[1])))


def test_fp32_request_carries_the_scaled_images_with_a_channel_axis():
    batch = np.arange(2 * 28 * 28, dtype=np.uint32).reshape(2, 28, 28).astype(np.uint8)
    request = oip.ModelInferRequest.FromString(request_bytes("oip-fp32", batch))
    (tensor,) = request.inputs
    assert (request.model_name, tensor.name, tensor.datatype) == ("fashion", "images", "FP32")
    assert list(tensor.shape) == [2, 28, 28, 1]
    sent = np.frombuffer(request.raw_input_contents[0], "<f4").reshape(2, 28, 28, 1)
    np.testing.assert_array_equal(sent, surgery.to_float(batch))


def _response(n: int, *, raw: bool) -> oip.ModelInferResponse:
    probs = np.full((n, 10), 0.1, "<f4")
    out = oip.ModelInferResponse.InferOutputTensor(
        name="probabilities", datatype="FP32", shape=[n, 10]
    )
    if raw:
        return oip.ModelInferResponse(outputs=[out], raw_output_contents=[probs.tobytes()])
    out.contents.fp32_contents.extend(probs.ravel().tolist())
    return oip.ModelInferResponse(outputs=[out])


def test_answers_are_counted_in_raw_and_typed_contents_and_streamed():
    assert answered_images("oip-fp32", _response(3, raw=True).SerializeToString()) == 3
    assert answered_images("oip-fp32", _response(3, raw=False).SerializeToString()) == 3
    streamed = oip.ModelStreamInferResponse(infer_response=_response(2, raw=True))
    assert answered_images("oip-stream", streamed.SerializeToString()) == 2
    failed = oip.ModelStreamInferResponse(
        error_message="boom", infer_response=_response(2, raw=True)
    )
    assert answered_images("oip-fp32-stream", failed.SerializeToString()) == 0


def _point(api: str, size: int, conc: int, images_per_s: float, p50: float) -> dict:
    return {
        "api": api,
        "size": size,
        "concurrency": conc,
        "duration_s": 1.0,
        "requests": 10,
        "requests_per_s": images_per_s / size,
        "images_per_s": images_per_s,
        "latency_ms": {"p50": p50, "p90": p50, "p99": p50, "max": p50},
        "errors": 0,
        "errors_by_code": {},
        "bad_responses": 0,
        "server_errors": None,
        "server_cpu_cores": 1.0,
        "server_cpu_ms_per_request": 1.0,
        "client_cpu_cores": 0.5,
        "client_processes": 1,
        "mean_batch_size": None,
    }


def _results() -> dict:
    ours = [
        _point("oip", 1, 1, 500, 1.0),
        _point("oip", 1, 32, 2100, 15.0),
        _point("oip", 32, 8, 9000, 20.0),
        _point("oip-stream", 1, 32, 3500, 9.0),
    ]
    return {
        "servers": {
            "fashion-serve": {"cold_start_s": 0.3, "points": ours},
            "floor": {"points": [_point("oip", 1, 32, 3000, 10.0)]},
            "pytriton": {
                "points": [
                    _point("oip-fp32", 1, 1, 150, 4.0),
                    _point("oip-fp32", 1, 32, 1000, 30.0),
                    _point("oip-fp32", 32, 8, 5000, 50.0),
                ]
            },
        },
        "inprocess_images_per_s": {"1": 9000.0, "32": 12000.0},
    }


def _row(rows: list[table.Ratio], target: str, api: str) -> table.Ratio:
    return next(r for r in rows if r.target == target and r.api == api)


def test_ratios_are_judged_against_the_issue_targets():
    rows = table.ratios(_results())
    p50 = _row(rows, "1 image, conc 1: p50 vs PyTriton", "oip")
    assert (p50.ratio, p50.met) == (0.25, True)  # 1.0 / 4.0 <= 0.4
    c32 = _row(rows, "1 image, conc 32: images/s vs PyTriton", "oip")
    assert (c32.ratio, c32.met) == (2.1, True)
    floor = _row(rows, "1 image, conc 32: of the grpc.aio floor", "oip")
    assert (floor.ratio, floor.met) == (0.7, True)
    batch = _row(rows, "32 images, conc 8: of in-process onnxruntime", "oip")
    assert (batch.ratio, batch.met) == (0.75, True)
    vs_triton = _row(rows, "32 images, conc 8: images/s vs PyTriton", "oip")
    assert (vs_triton.ratio, vs_triton.met) == (1.8, False)
    stream = _row(rows, "1 image, conc 32, streamed: vs PyTriton unary", "oip-stream")
    assert (stream.ratio, stream.met) == (3.5, True)


def test_a_server_not_measured_gives_no_verdict_instead_of_a_pass():
    rows = table.ratios(_results())
    mls = _row(rows, "1 image, conc 32: images/s vs MLServer", "oip")
    predict = _row(rows, "1 image, conc 1: p50 vs PyTriton", "predict")
    assert (mls.ratio, mls.met) == (None, None)
    assert (predict.ratio, predict.met) == (None, None)
    assert "| n/a |" in table.ratios_table([mls])


def test_write_produces_json_markdown_and_plot(tmp_path):
    written = table.write(_results(), tmp_path)
    assert {p.name for p in written} >= {"peers.json", "peers.md"}
    text = (tmp_path / "peers.md").read_text()
    assert "| 1 image, conc 32: images/s vs PyTriton | ModelInfer | 2,100 | 1,000 | 2.10x" in text
    assert "Errors and wrong-sized answers at our points: 0." in text


def test_a_venv_is_reinstalled_when_its_pins_change(tmp_path):
    env = PeerEnv("x", tmp_path, ("pkg==1",))
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").write_text("")
    assert not env.installed()
    (tmp_path / "bench-peers-pins.txt").write_text("pkg==1\n")
    assert env.installed()
    assert not PeerEnv("x", tmp_path, ("pkg==2",)).installed()


def test_server_cpu_includes_the_process_tree():
    # A child starts a grandchild, waits until it has run some Python, says its pid, then
    # waits for stdin to close.
    grand = "import sys; sum(range(10**6)); print(flush=True); sys.stdin.read()"
    code = (
        "import subprocess, sys\n"
        f"g = subprocess.Popen([sys.executable, '-c', {grand!r}], stdin=subprocess.PIPE,"
        " stdout=subprocess.PIPE)\n"
        "g.stdout.readline()\n"
        "print(g.pid, flush=True)\n"
        "sys.stdin.read(); g.stdin.close(); g.wait()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        grandchild = int(child.stdout.readline())
        try:
            assert grandchild in descendants(child.pid)
            assert cpu_seconds(child.pid) >= cpu_seconds(grandchild) > 0.0
        finally:
            child.stdin.close()
            child.wait(10)


def test_the_ceiling_adds_the_models_own_cpu_to_the_floors():
    results = _results()
    floor = results["servers"]["floor"]["points"][0]  # 3,000 requests/s
    floor.update(server_cpu_ms_per_request=0.5, server_cpu_cores=1.0, client_cpu_cores=0.3)
    results["inprocess_cpu_ms_per_image"] = {"1": 0.5, "4": 0.4, "32": 0.3}
    c = table.ceiling(results)
    assert c is not None
    assert c["model_cpu_ms_per_image"] == 0.4  # the cheaper small batch, not batch 32
    assert c["client_cpu_ms_per_request"] == 0.1  # 0.3 cores / 3,000 requests/s
    assert c["cores"] == 1.3
    # min(1000 / 0.5 (the loop), 1000 x 1.3 / (0.5 + 0.4 + 0.1) (the cores))
    assert c["images_per_s"] == 1300.0
    assert c["fraction_of_floor"] == round(1300 / 3000, 3)
    assert c["vs_pytriton"] == 1.3  # 1,300 / 1,000
    assert c["ours_of_ceiling"] == round(2100 / 1300, 3)
    assert c["ours_own_ms_per_request"] == 0.1  # ours 1.0 ms - 0.5 - 0.4
    assert "at most 1,300 images/s (43% of the floor)" in table.ceiling_text(results)


def test_the_loop_thread_bounds_the_ceiling_when_cores_are_plenty():
    results = _results()
    floor = results["servers"]["floor"]["points"][0]
    floor.update(server_cpu_ms_per_request=0.5, server_cpu_cores=1.0, client_cpu_cores=15.0)
    results["inprocess_cpu_ms_per_image"] = {"1": 0.4}
    c = table.ceiling(results)
    assert c is not None and c["images_per_s"] == 2000.0  # one loop thread at 0.5 ms


def test_no_ceiling_without_the_same_runs_figures():
    assert table.ceiling(_results()) is None  # no in-process CPU figures
    assert "needs the floor" in table.ceiling_text(_results())


def test_the_streamed_ceiling_uses_the_floors_stream_and_pytritons_unary():
    results = _results()
    stream = _point("stream", 1, 32, 9000, 3.0)
    stream.update(server_cpu_ms_per_request=0.2, server_cpu_cores=1.0, client_cpu_cores=0.9)
    results["servers"]["floor"]["points"].append(stream)
    results["servers"]["fashion-serve"]["points"].append(_point("stream", 1, 32, 3000, 9.0))
    results["inprocess_cpu_ms_per_image"] = {"1": 0.3}
    c = table.ceiling(results, "stream")
    assert c is not None
    # min(1000 / 0.2, 1000 x 1.9 / (0.2 + 0.3 + 0.1))
    assert c["images_per_s"] == round(1900 / 0.6, 1)
    assert c["vs_pytriton"] == round(1900 / 0.6 / 1000, 3)  # against PyTriton's unary 1 x 32
    assert c["ours_of_ceiling"] == round(3000 / (1900 / 0.6), 3)
    assert c["ours_own_ms_per_request"] == 0.5  # ours 1.0 ms - 0.2 - 0.3
    assert "per message on a stream" in table.ceiling_text(results, "stream")


def test_a_server_whose_serving_child_died_is_seen_as_dead():
    from types import SimpleNamespace

    from bench.peers.run import _died

    def server(code):
        return SimpleNamespace(process=SimpleNamespace(poll=lambda: code))

    alive, failed = _point("oip-fp32-stream", 1, 32, 900, 5.0), {"requests": 0, "errors": 7}
    assert not _died(server(None), alive)
    assert _died(server(None), {**alive, **failed})  # live parent, every call UNAVAILABLE
    assert _died(server(-11), alive)  # the process itself exited
    some_failed = {**alive, "errors": 3, "server_cpu_cores": None}  # the tree's CPU shrank
    assert _died(server(None), some_failed)
    assert not _died(server(None), {**alive, "errors": 3})  # errors alone: the server's answer


def test_a_crash_is_reported_with_its_failed_point(tmp_path):
    results = _results()
    failed = {"errors": 12, "errors_by_code": {"UNAVAILABLE": 12}, "requests": 0}
    crash = {"during": ["oip-fp32-stream", 1, 32], "exit_code": None, "failed": failed}
    results["servers"]["pytriton"]["crashes"] = [crash]
    text = table.markdown(results)
    assert "**pytriton died** during oip-fp32-stream 1 x conc 32" in text
    assert "12 errors {'UNAVAILABLE': 12}, 0 answers" in text


def test_a_crashed_server_is_restarted_measured_again_and_left_alive(monkeypatch):
    from types import SimpleNamespace

    from bench.peers import run

    started, stopped = [], []

    def start():
        server = SimpleNamespace(
            process=SimpleNamespace(poll=lambda: None),
            cold_start_s=0.1,
            pid=100 + len(started),
            target="127.0.0.1:1",
            stop=lambda: stopped.append(server.pid) or 0,
        )
        started.append(server.pid)
        return server

    crashed = {"requests": 0, "errors": 9, "errors_by_code": {"UNAVAILABLE": 9}}
    outcomes = iter([{}, crashed, crashed])  # step 1 fine, step 2 crashes on both attempts

    def point(load, target, step, args):
        return {**_point(step[0], step[1], step[2], 100, 1.0), **next(outcomes)}

    monkeypatch.setattr(run, "_point", point)
    monkeypatch.setattr(run, "memory_mib", lambda pid: {})
    results: dict = {"servers": {}}
    plan = [("oip-fp32", 1, 1), ("oip-fp32-stream", 1, 32)]
    args = SimpleNamespace(perf_analyzer=False)
    run._with_server(results, "pytriton", start, lambda s: s, plan, None, args)
    entry = results["servers"]["pytriton"]
    assert len(entry["crashes"]) == 2 and started == [100, 101, 102]
    assert stopped == [100, 101, 102]  # each crashed process and the last one
    assert entry["points"][1]["retried_after_crash"] is True
    assert entry["points"][1]["errors"] == 9  # the second crash keeps its errors


def test_a_report_is_rewritten_from_its_measurements(tmp_path):
    table.write(_results(), tmp_path)
    (tmp_path / "peers.md").unlink()
    assert table.main([str(tmp_path)]) == 0
    assert "Errors and wrong-sized answers" in (tmp_path / "peers.md").read_text()
    assert table.main([]) == 2


def test_issue_25_targets_and_workers_against_one_process():
    results = _results()
    results["inprocess_cpu_ms_per_image"] = {"1": 0.3, "4": 0.25}
    workers = [
        _point("oip", 1, 1, 480, 1.1),
        _point("oip", 1, 32, 2520, 14.0),
        _point("oip", 32, 8, 8100, 22.0),
    ]
    results["servers"]["fashion-serve --workers 2"] = {"points": workers}
    rows = table.targets_25(results)
    # PyTriton 1000 img/s at 1 x 32: ours 2.1x, the workers 2.52x (target 1.4x).
    assert _row(rows, "1 x 32: vs PyTriton", "oip").ratio == 2.1
    assert _row(rows, "1 x 32: vs PyTriton (--workers 2)", "oip").ratio == pytest.approx(2.52)
    in_process = _row(rows, "32 x 8: of in-process onnxruntime (--workers 2)", "oip")
    assert (in_process.ratio, in_process.met) == (0.675, True)  # 8100 / 12000 >= 0.65
    p50 = _row(rows, "1 image, conc 1: p50 vs PyTriton (--workers 2)", "oip")
    assert (p50.ratio, p50.met) == (pytest.approx(0.275), True)
    ceiling = _row(rows, "1 x 32: of the grpc.aio ceiling", "oip")
    assert ceiling.reference == table.ceiling(results)["images_per_s"]
    text = table.workers_vs_one(results)
    assert "| 1 x conc 32 | ModelInfer | 2,100 img/s | 2,520 img/s (--workers 2) | 1.20 |" in text
    assert "| 1 x conc 1 | ModelInfer | 1.00 ms p50 | 1.10 ms p50 (--workers 2) | 1.10 |" in text
    assert "## Issue #25's targets" in table.markdown(results)


def _pass(ours_1x32: float, triton_1x32: float, *, workers_1x32: float | None = None) -> dict:
    results = _results()
    results["servers"]["fashion-serve"]["points"][1]["images_per_s"] = ours_1x32
    results["servers"]["pytriton"]["points"][1]["images_per_s"] = triton_1x32
    if workers_1x32 is not None:
        point = _point("oip", 1, 32, workers_1x32, 14.0)
        results["servers"]["fashion-serve --workers 2"] = {"points": [point]}
    return results


def test_rounds_judge_each_target_on_its_median_over_the_passes():
    from bench.peers import rounds

    # 1 x 32 vs PyTriton (target >= 1.4x): 1.5x, 1.2x, 1.3x -> median 1.3x, not met, 1 of 3.
    passes = [_pass(1500, 1000), _pass(1200, 1000), _pass(1300, 1000)]
    row = next(r for r in rounds.targets(passes) if r.target == "1 x 32: vs PyTriton")
    assert row.values == (1.5, 1.2, 1.3)
    assert (row.median, row.met, row.passes_met) == (1.3, False, 1)
    # 1.5, 1.45, 1.2 -> median 1.45: met, in 2 of 3 passes.
    passes = [_pass(1500, 1000), _pass(1450, 1000), _pass(1200, 1000)]
    row = next(r for r in rounds.targets(passes) if r.target == "1 x 32: vs PyTriton")
    assert (row.median, row.met, row.passes_met) == (1.45, True, 2)
    assert row.as_dict()["passes_met"] == 2
    # The p50 target is lower-is-better: 1.0 / 4.0 = 0.25 in each pass.
    p50 = next(r for r in rounds.targets(passes) if r.target == "1 image, conc 1: p50 vs PyTriton")
    assert (p50.median, p50.met, p50.passes_met) == (0.25, True, 3)


def test_rounds_leave_a_pass_that_lacks_a_measurement_out_of_its_median():
    from bench.peers import rounds

    missing = _pass(1500, 1000)
    del missing["servers"]["pytriton"]  # e.g. it could not be installed in that pass
    row = next(
        r
        for r in rounds.targets([_pass(1200, 1000), missing, _pass(1600, 1000)])
        if r.target == "1 x 32: vs PyTriton"
    )
    assert row.values == (1.2, None, 1.6)
    assert row.median == pytest.approx(1.4) and row.met is True
    text = rounds.rows_table([row], 3)
    assert "| 1.20x | n/a | 1.60x | 1.40x | ≥ 1.4x | yes | 1 of 2 |" in text
    none = rounds.Across("nothing measured", "oip", (None, None), 1.4)
    assert (none.median, none.met, none.passes_met) == (None, None, 0)


def test_rounds_report_workers_against_one_process_and_every_servers_errors(tmp_path):
    from bench.peers import rounds

    passes = [_pass(2000, 1000, workers_1x32=2400), _pass(2000, 1000, workers_1x32=1800)]
    (row,) = rounds.workers(passes)
    assert row.target == "1 x conc 32, images/s: --workers 2 / one process"
    assert row.values == (1.2, 0.9) and row.median == pytest.approx(1.05)
    assert row.met is None  # reported, not a target
    passes[1]["servers"]["fashion-serve --workers 2"]["points"][0]["errors"] = 3
    assert table.our_errors(passes[1]) == 3  # the workers' errors count as ours
    written = rounds.write(passes, tmp_path, "python -m bench.peers --rounds 2")
    assert (tmp_path / "pass-1" / "peers.json").exists()
    assert (tmp_path / "pass-2" / "peers.md").exists()
    summary = json.loads((tmp_path / "rounds.json").read_text())
    assert summary["passes"] == 2 and summary["errors"] == [0, 3]
    assert summary["workers_vs_one"][0]["values"] == [1.2, 0.9]
    text = (tmp_path / "rounds.md").read_text()
    assert "## Issue #25's targets, each pass and the median" in text
    assert "each pass: [0, 3]" in text
    assert tmp_path / "rounds.md" in written


def test_rounds_alternate_the_order_of_the_servers(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from bench.peers import run

    measured: list[str] = []
    monkeypatch.setattr(run.surgery, "write_fp32_model", lambda original, out: out)
    monkeypatch.setattr(run.surgery, "check_parity", lambda *a: SimpleNamespace(ok=True))
    monkeypatch.setattr(run, "load_test_split", lambda: ([], [], []))
    monkeypatch.setattr(run.inprocess, "model_path", lambda repo, version: tmp_path / "m.onnx")
    batch = {"images_per_s": 1000.0, "cpu_ms_per_image": 0.2}
    monkeypatch.setattr(
        run.inprocess, "measure", lambda *a, **k: {n: batch for n in run.INPROCESS_BATCHES}
    )

    class Load:
        def __init__(self, processes: int) -> None:
            pass

        def __enter__(self) -> Load:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    monkeypatch.setattr(run, "LoadGenerator", Load)
    monkeypatch.setattr(
        run, "_with_server", lambda results, name, *a: measured.append(name) or None
    )
    argv = ["--only", "ours,floor,pytriton", "--rounds", "3", "--no-install"]
    args = run.build_parser().parse_args([*argv, "--work", str(tmp_path)])
    passes = run.run(args, argv)
    assert len(passes) == 3 and [p["pass"]["index"] for p in passes] == [1, 2, 3]
    names = ["fashion-serve", "floor", "pytriton"]
    assert measured == [*names, *names[::-1], *names]
    args.rounds = 0
    with pytest.raises(SystemExit, match="--rounds"):
        run.run(args, argv)
