"""Hot reload: new versions swap in without failed requests; invalid ones are refused."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import onnx
import pytest
from onnx import TensorProto, helper

from server._proto.fashion.v1 import prediction_pb2 as pb
from server._proto.fashion.v1 import prediction_pb2_grpc as pb_grpc
from server.repository import list_versions, sha256_file
from tests.e2e.conftest import default_model, installed, scrape
from tests.e2e.test_lifecycle import start_process

IMAGE = pb.Image(raw=bytes(784))


def add_version(
    repo: Path,
    version: int,
    *,
    model_bytes: bytes | None = None,
    metadata: dict | None = None,
    write_metadata: bool = True,
) -> Path:
    """Publish a copy of version 1 (or given bytes) as ``version`` the way training does."""
    source = repo / "fashion" / "1"
    staged = repo / "fashion" / f".tmp-test-{version}"
    staged.mkdir()
    data = model_bytes if model_bytes is not None else (source / "model.onnx").read_bytes()
    (staged / "model.onnx").write_bytes(data)
    if write_metadata:
        meta = json.loads((source / "metadata.json").read_text())
        meta.update(version=version, model_sha256=sha256_file(staged / "model.onnx"))
        meta.update(metadata or {})
        (staged / "metadata.json").write_text(json.dumps(meta))
    target = repo / "fashion" / str(version)
    os.rename(staged, target)
    return target


def wrong_signature_model() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "wrong",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


async def predict_version(stub) -> int:
    return (await stub.Predict(pb.PredictRequest(images=[IMAGE]), timeout=5)).model_version


async def test_new_version_swaps_in_without_failed_requests(start_app, private_repo) -> None:
    app = await start_app(private_repo, poll_interval_s=0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.PredictionServiceStub(channel)
        seen: list[list[int]] = [[] for _ in range(8)]
        stop = asyncio.Event()

        async def traffic(client: int) -> None:
            while not stop.is_set():
                seen[client].append(await predict_version(stub))

        clients = [asyncio.create_task(traffic(i)) for i in range(8)]
        await asyncio.sleep(0.2)
        add_version(private_repo, 2, metadata={"test_accuracy": 0.5})
        assert installed(await app.reload()) == 2
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.gather(*clients)  # any failed request would raise here
        for versions in seen:
            assert versions[0] == 1 and versions[-1] == 2
            # Once a client saw version 2, it never saw version 1 again (requests that
            # held version 1 when it was swapped out were answered by it: it drained).
            assert versions == sorted(versions)
        info = await stub.GetModelInfo(pb.GetModelInfoRequest())
        assert (info.version, info.test_accuracy) == (2, 0.5)
        assert list(info.loaded_versions) == [2]
    metrics = await scrape(app)
    assert (
        metrics[
            "fashion_model_info{architecture=course_cnn,model=fashion,provider=CPUExecutionProvider,"
            "variant=float,version=2}"
        ]
        == 1
    )
    # Version 1 was unloaded: its series went with it.
    assert not any("version=1" in k for k in metrics if k.startswith("fashion_"))
    assert metrics["fashion_model_loads_total{result=loaded}"] == 2


BROKEN = {
    "no-metadata": dict(write_metadata=False),
    "checksum": dict(metadata={"model_sha256": "0" * 64}),
    "unloadable": dict(model_bytes=b"this is not an onnx model"),
    "signature": dict(model_bytes=wrong_signature_model()),
}


@pytest.mark.parametrize("kind", BROKEN)
async def test_invalid_version_is_refused_and_current_keeps_serving(
    start_app, private_repo, kind, caplog
) -> None:
    app = await start_app(private_repo, poll_interval_s=0)
    add_version(private_repo, 2, **BROKEN[kind])
    assert installed(await app.reload()) is None
    assert installed(await app.reload()) is None  # remembered: not loaded (or counted) again
    assert default_model(app).version == 1
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        assert await predict_version(pb_grpc.PredictionServiceStub(channel)) == 1
    assert (await scrape(app))["fashion_model_loads_total{result=refused}"] == 1
    assert "refusing model 'fashion' version 2" in caplog.text
    # A valid version 3 published afterwards is taken.
    add_version(private_repo, 3)
    assert installed(await app.reload()) == 3


async def test_pinned_version_never_switches(start_app, private_repo) -> None:
    app = await start_app(private_repo, model_version=1, poll_interval_s=0.05)
    add_version(private_repo, 2)
    app.request_reload()
    await asyncio.sleep(0.3)
    assert installed(await app.reload()) is None
    assert default_model(app).version == 1


async def test_sighup_forces_a_check(private_repo) -> None:
    process, port, _ = start_process(private_repo, "--poll-interval-s", "0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.PredictionServiceStub(channel)
            assert await predict_version(stub) == 1
            add_version(private_repo, 2)
            await asyncio.sleep(0.3)
            assert await predict_version(stub) == 1  # no polling: nothing happens by itself
            process.send_signal(signal.SIGHUP)
            for _ in range(200):
                if await predict_version(stub) == 2:
                    break
                await asyncio.sleep(0.05)
            assert await predict_version(stub) == 2
        process.terminate()
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


KILLED_EXPORT = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from server.repository import staging_dir
    with staging_dir(Path(sys.argv[1])) as staged:
        with open(staged / "model.onnx", "wb") as f:
            f.write(b"partial" * 1000)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9 mid-export
""")


async def test_kill_9_during_export_leaves_no_visible_version(start_app, private_repo) -> None:
    result = subprocess.run([sys.executable, "-c", KILLED_EXPORT, str(private_repo)])
    assert result.returncode == -signal.SIGKILL
    leftovers = [p.name for p in (private_repo / "fashion").iterdir()]
    assert any(name.startswith(".tmp-") for name in leftovers)  # the debris exists...
    assert list_versions(private_repo) == [1]  # ...but is no version
    app = await start_app(private_repo, poll_interval_s=0)
    assert installed(await app.reload()) is None
    assert default_model(app).version == 1
    shutil.rmtree(private_repo / "fashion" / next(n for n in leftovers if n.startswith(".tmp-")))


def test_wrong_signature_model_is_itself_valid_onnx() -> None:
    # So the "signature" case above is refused for its signature, not as garbage.
    onnx.checker.check_model(onnx.load_from_string(wrong_signature_model()))


async def test_a_replaced_version_is_freed(start_app, private_repo) -> None:
    """A reload must not keep the old version (its onnxruntime session is ~25 MiB): once the
    batches that ran on it are done, nothing refers to it. The soak's memory check leaves
    one reload's step to this test (docs/RELIABILITY.md)."""
    import gc
    import weakref

    app = await start_app(private_repo, poll_interval_s=0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.PredictionServiceStub(channel)
        old = weakref.ref(default_model(app))
        stop = asyncio.Event()

        async def traffic() -> None:
            while not stop.is_set():
                await predict_version(stub)

        clients = [asyncio.create_task(traffic()) for _ in range(4)]
        for version in (2, 3):
            add_version(private_repo, version)
            assert installed(await app.reload()) == version
        stop.set()
        await asyncio.gather(*clients)
        assert await predict_version(stub) == 3
    gc.collect()
    assert old() is None, gc.get_referrers(old())


async def test_a_refused_version_is_forgotten_once_mended_or_deleted(start_app, private_repo):
    app = await start_app(private_repo, poll_interval_s=0)
    broken = add_version(private_repo, 2, metadata={"model_sha256": "0" * 64})
    assert installed(await app.reload()) is None
    assert app.manager.refused_versions("fashion") == [2]
    shutil.rmtree(broken)
    assert installed(await app.reload()) is None
    assert app.manager.refused_versions("fashion") == []  # deleted: no longer reported as refused
    mended = add_version(private_repo, 3, metadata={"model_sha256": "0" * 64})
    assert installed(await app.reload()) is None
    assert app.manager.refused_versions("fashion") == [3]
    meta = json.loads((mended / "metadata.json").read_text())
    meta["model_sha256"] = sha256_file(mended / "model.onnx")
    (mended / "metadata.json").write_text(json.dumps(meta))
    assert installed(await app.reload()) == 3
    assert app.manager.refused_versions("fashion") == []
