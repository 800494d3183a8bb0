"""fashion-predict against a real server: bad files named, test-files-only data, reflection."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from client.cli import main as predict_main
from client.testset import DEBIAN_DIR, TEST_IMAGES, TEST_LABELS
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
