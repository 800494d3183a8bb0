"""fashion-predict against a real server: bad files named, test-files-only data, reflection."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from client.cli import MAX_ENCODED_BYTES
from client.cli import main as predict_main
from client.predictor import DEFAULT_MAX_MESSAGE_BYTES
from client.testset import DEBIAN_DIR, TEST_IMAGES, TEST_LABELS
from server.contract import NUM_CLASSES
from tests.e2e.conftest import scrape
from tests.repos import configure, publish
from training.data import TRAIN_IMAGES

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


async def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()  # drop anything printed before
    code = await asyncio.to_thread(predict_main, argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_a_bad_file_among_several_is_named_and_the_good_ones_answered(
    app, tmp_path: Path, capsys
) -> None:
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(big)
    missing = tmp_path / "missing.png"
    files = [EXAMPLES / "shirt.png", garbage, missing, big, EXAMPLES / "ankle-boot.png"]
    code, out, err = await run_cli(["--target", f"127.0.0.1:{app.port}", *map(str, files)], capsys)
    assert code == 1
    answered = [json.loads(line)["file"] for line in out.splitlines()]
    assert answered == [str(EXAMPLES / "shirt.png"), str(EXAMPLES / "ankle-boot.png")]
    errors = err.splitlines()
    assert len(errors) == 3, err
    assert errors[0] == f"fashion-predict: {missing}: No such file or directory"
    assert errors[1].startswith(f"fashion-predict: {garbage}: INVALID_ARGUMENT: ")
    assert errors[2] == (f"fashion-predict: {big}: INVALID_ARGUMENT: PNG is 64x64, expected 28x28")
    assert "image 1" not in err and "Traceback" not in err


async def test_files_are_sent_batch_size_to_a_request(start_app, capsys) -> None:
    app = await start_app(max_images_per_request=3)
    files = sorted(EXAMPLES.glob("*.png"))
    argv = ["--target", f"127.0.0.1:{app.port}", "--batch-size", "3", "--top-k", "2"]
    code, out, err = await run_cli([*argv, *map(str, files)], capsys)
    assert (code, err) == (0, "")
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["file"] for line in lines] == [str(f) for f in files]
    assert all(len(line["top_k"]) == 2 for line in lines)


@pytest.mark.skipif(not (DEBIAN_DIR / TEST_IMAGES).is_file(), reason="needs the real test set")
async def test_model_version_and_label_select_what_is_asked(
    start_app, model_repo: Path, tmp_path: Path, capsys
) -> None:
    repo = tmp_path / "repo"
    for version in (1, 2):
        publish(model_repo, repo, version=version)
    config = {"version_policy": {"latest": 2}, "labels": {"stable": 1, "canary": 2}}
    configure(repo, "fashion", config)
    app = await start_app(repo)
    target = ["--target", f"127.0.0.1:{app.port}"]
    for which, version in (
        ([], 1),
        (["--version-label", "canary"], 2),
        (["--model", "fashion", "--model-version", "2"], 2),
    ):
        code, out, err = await run_cli([*target, "--info", *which], capsys)
        assert (code, err) == (0, ""), err
        assert int(json.loads(out)["version"]) == version
        code, out, err = await run_cli([*target, "--evaluate", "--limit", "20", *which], capsys)
        assert (code, err) == (0, ""), err
        assert json.loads(out)["model_version"] == version
    code, out, err = await run_cli([*target, "--version-label", "beta", "--info"], capsys)
    assert code == 1 and out == ""
    assert err.startswith("fashion-predict: NOT_FOUND: ") and "canary" in err, err
    code, out, err = await run_cli([*target, "--model", "other", "--info"], capsys)
    assert code == 1 and "NOT_FOUND" in err and "fashion" in err, err


@pytest.mark.skipif(not (DEBIAN_DIR / TEST_IMAGES).is_file(), reason="needs the real test set")
async def test_evaluate_needs_only_the_two_test_files(app, tmp_path: Path, capsys) -> None:
    for name in (TEST_IMAGES, TEST_LABELS):
        (tmp_path / name).symlink_to(DEBIAN_DIR / name)
    assert not (tmp_path / TRAIN_IMAGES).exists()
    argv = ["--target", f"127.0.0.1:{app.port}", "--evaluate", "--limit", "200"]
    code, out, err = await run_cli([*argv, "--data-dir", str(tmp_path)], capsys)
    assert (code, err) == (0, "")
    result = json.loads(out)
    assert result["images"] == 200 and 0.0 <= result["accuracy"] <= 1.0


async def test_evaluate_without_the_data_set_is_one_line(app, tmp_path: Path, capsys) -> None:
    argv = ["--target", f"127.0.0.1:{app.port}", "--evaluate", "--data-dir", str(tmp_path)]
    code, out, err = await run_cli(argv, capsys)
    assert (code, out) == (1, "")
    assert err == f"fashion-predict: {tmp_path / TEST_IMAGES}: file is missing (from --data-dir)\n"


async def test_list_and_call_any_unary_method_through_reflection(app, capsys) -> None:
    target = ["--target", f"127.0.0.1:{app.port}"]
    code, out, _ = await run_cli([*target, "--list"], capsys)
    assert code == 0
    assert {"fashion.v1.PredictionService", "grpc.health.v1.Health"} <= set(out.split())
    assert "inference.GRPCInferenceService" in out.split()

    health = ["--call", "grpc.health.v1.Health/Check", "--data", '{"service": ""}']
    code, out, _ = await run_cli([*target, *health], capsys)
    assert (code, json.loads(out)) == (0, {"status": "SERVING"})

    code, out, _ = await run_cli(
        [*target, "--call", "fashion.v1.PredictionService/GetModelInfo"], capsys
    )
    assert code == 0 and json.loads(out)["name"] == "fashion"

    raw = json.dumps({"images": [{"raw": base64.b64encode(bytes(784)).decode()}], "top_k": 3})
    code, out, _ = await run_cli(
        [*target, "--call", "fashion.v1.PredictionService.Predict", "--data", raw], capsys
    )
    assert code == 0
    assert len(json.loads(out)["predictions"][0]["topK"]) == 3


@pytest.mark.parametrize(
    ("method", "data", "message"),
    [
        ("fashion.v1.PredictionService/Nope", "{}", "has no method 'Nope'; it has: GetModelInfo"),
        ("nope.Service/Call", "{}", "offers no service 'nope.Service'; it offers: "),
        ("fashion.v1.PredictionService/PredictStream", "{}", "is a streaming method"),
        ("fashion.v1.PredictionService/Predict", '{"imagez": []}', 'no field named "imagez"'),
        ("fashion.v1.PredictionService/Predict", "{}", "INVALID_ARGUMENT: the request has no"),
    ],
)
async def test_a_call_that_cannot_work_is_one_clear_line(app, capsys, method, data, message):
    argv = ["--target", f"127.0.0.1:{app.port}", "--call", method, "--data", data]
    code, out, err = await run_cli(argv, capsys)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and message in err, err


def padded_png(path: Path, size: int) -> Path:
    """A real 28x28 grayscale PNG (the shirt) padded with a text chunk to exactly ``size`` bytes."""
    from PIL import PngImagePlugin

    pixels = np.asarray(Image.open(EXAMPLES / "shirt.png"))

    def save(padding: int) -> int:
        info = PngImagePlugin.PngInfo()
        info.add_text("pad", "x" * padding)
        Image.fromarray(pixels).save(path, pnginfo=info)
        return path.stat().st_size

    save(size - save(0))
    assert path.stat().st_size == size
    return path


async def test_a_file_too_large_to_send_is_named_and_the_others_answered(
    app, tmp_path: Path, capsys
) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(bytes(range(256)) * (6 * 1024 * 1024 // 256))  # a camera's photo, in size
    over = padded_png(tmp_path / "over.png", MAX_ENCODED_BYTES + 1)
    at_limit = padded_png(tmp_path / "at-limit.png", MAX_ENCODED_BYTES)
    files = [EXAMPLES / "shirt.png", photo, over, at_limit, EXAMPLES / "bag.png"]
    code, out, err = await run_cli(["--target", f"127.0.0.1:{app.port}", *map(str, files)], capsys)
    assert code == 1
    answered = [json.loads(line)["file"] for line in out.splitlines()]
    assert answered == [str(EXAMPLES / "shirt.png"), str(at_limit), str(EXAMPLES / "bag.png")]
    limit = f"the server accepts encoded images of at most {MAX_ENCODED_BYTES} bytes"
    assert err.splitlines() == [
        f"fashion-predict: {photo}: {6 * 1024 * 1024} bytes; {limit} (a 28x28 PNG/JPEG "
        "needs a few hundred)",
        f"fashion-predict: {over}: {MAX_ENCODED_BYTES + 1} bytes; {limit} (a 28x28 PNG/JPEG "
        "needs a few hundred)",
    ]


async def test_a_full_batch_of_files_at_the_size_limit_is_split_to_fit_a_message(
    app, tmp_path: Path, capsys
) -> None:
    # 64 files of 64 KiB are 4 MiB of bytes, over gRPC's (and the client's) 4 MiB message.
    files = [padded_png(tmp_path / f"{i}.png", MAX_ENCODED_BYTES) for i in range(64)]
    assert 64 * MAX_ENCODED_BYTES >= DEFAULT_MAX_MESSAGE_BYTES
    code, out, err = await run_cli(["--target", f"127.0.0.1:{app.port}", *map(str, files)], capsys)
    assert (code, err) == (0, "")
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["file"] for line in lines] == [str(f) for f in files]
    assert {line["class"] for line in lines} == {"Shirt"}


async def test_files_overflowing_a_server_with_a_smaller_message_limit_are_split_until_they_fit(
    start_app, tmp_path: Path, capsys
) -> None:
    # The client packs requests up to its own 4 MiB; a server run with --max-message-bytes
    # 1 MiB refuses such a request (RESOURCE_EXHAUSTED, "larger than max") before reading it.
    # The client halves the request until each half fits, and answers every file.
    app = await start_app(max_message_bytes=1024 * 1024, http_max_body_bytes_in_flight=2**26)
    files = [padded_png(tmp_path / f"{i}.png", MAX_ENCODED_BYTES) for i in range(40)]
    code, out, err = await run_cli(["--target", f"127.0.0.1:{app.port}", *map(str, files)], capsys)
    assert (code, err) == (0, "")
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["file"] for line in lines] == [str(f) for f in files]
    assert {line["class"] for line in lines} == {"Shirt"}


async def test_top_k_above_the_class_count_is_refused_before_any_request(app, capsys) -> None:
    argv = ["--target", f"127.0.0.1:{app.port}", "--top-k", str(NUM_CLASSES + 1)]
    files = [str(EXAMPLES / name) for name in ("shirt.png", "bag.png", "sneaker.png")]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        await asyncio.to_thread(predict_main, [*argv, *files])
    captured = capsys.readouterr()
    assert exited.value.code == 2 and captured.out == ""
    assert captured.err.splitlines()[-1] == (
        f"fashion-predict: error: argument --top-k: {NUM_CLASSES + 1}: the model has "
        f"{NUM_CLASSES} classes; give 0 to {NUM_CLASSES}"
    )
    assert (await scrape(app)).get("fashion_requests_total{method=Predict}", 0.0) == 0.0


async def test_a_refusal_not_about_an_image_is_one_line_not_blamed_on_each_file(
    start_app, capsys
) -> None:
    app = await start_app(max_images_per_request=2)
    files = [str(EXAMPLES / name) for name in ("shirt.png", "bag.png", "sneaker.png")]
    argv = ["--target", f"127.0.0.1:{app.port}", "--batch-size", "3", *files]
    code, out, err = await run_cli(argv, capsys)
    assert (code, out) == (1, "")
    assert err == (
        "fashion-predict: INVALID_ARGUMENT: the request has 3 images; this server accepts at "
        "most 2 per request\n"
    )
    assert (await scrape(app))["fashion_requests_total{method=Predict}"] == 1.0


@pytest.fixture
async def stalling_server() -> AsyncIterator[int]:
    """A real gRPC server whose every method (reflection included) accepts the call and
    never answers; its port."""
    stop = asyncio.Event()

    async def stall(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        await stop.wait()

    class Stall(grpc.GenericRpcHandler):
        def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
            return grpc.stream_stream_rpc_method_handler(stall)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((Stall(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield port
    stop.set()
    await server.stop(grace=None)


@pytest.mark.parametrize(
    "mode", [["--list"], ["--call", "grpc.health.v1.Health/Check"]], ids=["list", "call"]
)
async def test_reflection_that_never_answers_ends_at_the_timeout(
    stalling_server: int, mode: list[str], capsys
) -> None:
    argv = ["--target", f"127.0.0.1:{stalling_server}", "--timeout", "0.5", *mode]
    t0 = time.monotonic()
    # Without a deadline the CLI waits as long as the server holds the stream: forever.
    code, out, err = await asyncio.wait_for(run_cli(argv, capsys), timeout=20)
    assert time.monotonic() - t0 < 10
    assert (code, out) == (1, "")
    assert err == (
        "fashion-predict: DEADLINE_EXCEEDED: the server's reflection service did not answer "
        "within 0.5 s (--timeout)\n"
    )
