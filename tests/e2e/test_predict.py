"""Predict and GetModelInfo through a real server, against in-process onnxruntime."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import onnxruntime as ort
from PIL import Image

from server._proto.fashion.v1 import prediction_pb2 as pb
from server.repository import read_version
from tests.e2e.conftest import default_model, scrape


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_predictions_equal_in_process_onnxruntime(app, stub, model_repo, test_set) -> None:
    images, _ = test_set
    batch = images[:50]
    session = ort.InferenceSession(str(read_version(model_repo, 1).model_path))
    (expected,) = session.run(["probabilities"], {"images": batch})
    request = pb.PredictRequest(
        images=[pb.Image(raw=a.tobytes()) for a in batch[:25]]
        + [pb.Image(encoded=png(a)) for a in batch[25:]],
        include_probabilities=True,
        top_k=3,
    )
    response = await stub.Predict(request, timeout=10)
    assert response.model_version == 1
    got = np.array([list(p.probabilities) for p in response.predictions], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    labels = [p.label for p in response.predictions]
    assert labels == expected.argmax(axis=1).tolist()
    names = default_model(app).class_names
    assert [p.class_name for p in response.predictions] == [names[i] for i in labels]
    assert [p.top_k[0].label for p in response.predictions] == labels
    assert all(len(p.top_k) == 3 for p in response.predictions)


async def test_concurrent_clients_are_batched(start_app, test_set) -> None:
    import grpc

    from server._proto.fashion.v1 import prediction_pb2_grpc as pb_grpc

    app = await start_app(max_batch_size=32)
    images, _ = test_set
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.PredictionServiceStub(channel)

        async def client(i: int) -> list[int]:
            labels = []
            for j in range(10):
                image = images[(i * 10 + j) % len(images)]
                r = await stub.Predict(pb.PredictRequest(images=[pb.Image(raw=image.tobytes())]))
                labels.append(r.predictions[0].label)
            return labels

        results = await asyncio.gather(*(client(i) for i in range(32)))
    assert sum(len(r) for r in results) == 320
    metrics = await scrape(app)
    batches = metrics["fashion_batch_size_images_count{}"]
    assert metrics["fashion_batch_size_images_sum{}"] == 320
    # 320 single-image requests from 32 concurrent clients took fewer than 320 batches.
    assert batches < 320
    assert metrics["fashion_batch_size_images_bucket{le=1.0}"] < batches


async def test_model_info_describes_the_served_model(app, stub, model_repo) -> None:
    info = await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
    metadata = read_version(model_repo, 1).metadata
    assert info.name == "fashion" and info.version == 1
    assert list(info.class_names) == metadata["class_names"]
    assert info.test_accuracy == metadata["test_accuracy"]
    assert info.execution_provider == "CPUExecutionProvider"
    assert info.model_sha256 == metadata["model_sha256"]
    assert info.model_variant == "float"
    assert (info.inputs[0].name, info.inputs[0].dtype, list(info.inputs[0].shape)) == (
        "images",
        "uint8",
        [-1, 28, 28],
    )
    assert (info.outputs[0].name, list(info.outputs[0].shape)) == ("probabilities", [-1, 10])
    assert info.batching.max_batch_size == app.settings.max_batch_size


async def test_metrics_are_served_over_http(app, stub, test_set) -> None:
    images, _ = test_set
    await stub.Predict(pb.PredictRequest(images=[pb.Image(raw=images[0].tobytes())] * 3))
    metrics = await scrape(app)
    # Every series carries the model and version that answered.
    assert metrics["fashion_requests_total{code=OK,method=Predict,model=fashion,version=1}"] == 1
    assert metrics["fashion_images_total{model=fashion,version=1}"] == 3
    assert metrics["fashion_request_duration_seconds_count{method=Predict}"] == 1
    assert metrics["fashion_inference_duration_seconds_count{}"] == 1
    assert metrics["fashion_queue_wait_seconds_count{}"] == 1
    assert metrics["fashion_batch_flushes_total{reason=idle}"] == 1
    assert metrics["fashion_queue_depth_images{}"] == 0
    assert sum(v for k, v in metrics.items() if k.startswith("fashion_predictions_total")) == 3
    info = [k for k in metrics if k.startswith("fashion_model_info{")]
    assert info == [
        "fashion_model_info{architecture=course_cnn,model=fashion,provider=CPUExecutionProvider,"
        "variant=float,version=1}"
    ]


async def test_int8_variant_is_served_when_asked(start_app, private_repo) -> None:
    import json
    import shutil

    from server.repository import sha256_file

    path = private_repo / "fashion" / "1"
    # Stand-in for the quantized file (a real ONNX model with the same signature).
    shutil.copy(path / "model.onnx", path / "model.int8.onnx")
    meta = json.loads((path / "metadata.json").read_text())
    meta["variants"] = {
        "int8": {"file": "model.int8.onnx", "sha256": sha256_file(path / "model.int8.onnx")}
    }
    (path / "metadata.json").write_text(json.dumps(meta))
    app = await start_app(private_repo, model_variant="int8")
    assert default_model(app).variant == "int8"
    metrics = await scrape(app)
    assert "variant=int8" in next(k for k in metrics if k.startswith("fashion_model_info{"))


class _Recorder:
    """Delegates to a real session and records the batch sizes it ran."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session, self.sizes = session, []

    def run(self, outputs, feeds):
        self.sizes.append(len(feeds["images"]))
        return self.session.run(outputs, feeds)


def test_small_batches_run_on_a_one_thread_session_with_the_same_answers(
    model_repo, test_set
) -> None:
    from server.model import SINGLE_THREAD_MAX_IMAGES, LoadedModel

    images, _ = test_set
    model = LoadedModel(read_version(model_repo, 1), threads=2)
    assert model.threads == 2
    assert model._single.get_session_options().intra_op_num_threads == 1
    reference = ort.InferenceSession(str(read_version(model_repo, 1).model_path))
    single, pooled = _Recorder(model._single), _Recorder(model._session)
    model._single, model._session = single, pooled
    sizes = [1, 2, SINGLE_THREAD_MAX_IMAGES, SINGLE_THREAD_MAX_IMAGES + 1, 64]
    for n in sizes:
        batch = images[:n]
        (expected,) = reference.run(["probabilities"], {"images": batch})
        got = model.predict(batch)
        np.testing.assert_allclose(got, expected, atol=1e-6)
        assert got.argmax(axis=1).tolist() == expected.argmax(axis=1).tolist()
    assert single.sizes == [1, 2, SINGLE_THREAD_MAX_IMAGES]
    assert pooled.sizes == [SINGLE_THREAD_MAX_IMAGES + 1, 64]
    assert "batches of <= 4 images on 1" in model.small_batch_note


def test_one_thread_setting_keeps_one_session(model_repo) -> None:
    from server.model import LoadedModel

    model = LoadedModel(read_version(model_repo, 1), threads=1)
    assert model._single is model._session
    assert model.small_batch_note == ""


def test_warm_up_lets_a_fast_model_run_small_batches_on_the_event_loop(model_repo) -> None:
    from server.model import INLINE_MAX_S, SINGLE_THREAD_MAX_IMAGES, LoadedModel

    model = LoadedModel(read_version(model_repo, 1), threads=2)
    assert model.inline_max_images == 0  # not timed yet: every batch goes to the thread
    model.warm_up((1, 8))
    # This CNN computes a batch of 1 in ~0.2 ms on one thread, five times under the limit.
    assert 1 <= model.inline_max_images <= SINGLE_THREAD_MAX_IMAGES
    assert INLINE_MAX_S == 0.001
    assert f"batches of <= {model.inline_max_images} images on the event loop" in (
        model.small_batch_note
    )


def test_a_model_slower_than_the_limit_keeps_its_batches_off_the_event_loop(model_repo) -> None:
    import time

    from server.model import LoadedModel

    class Slow(LoadedModel):
        """The real model, made 2 ms slower from ``slow_from`` images on (a bigger network)."""

        slow_from = 1

        def predict(self, images: np.ndarray) -> np.ndarray:
            if len(images) >= self.slow_from:
                time.sleep(0.002)
            return super().predict(images)

    slow = Slow(read_version(model_repo, 1))
    slow.warm_up()
    assert slow.inline_max_images == 0
    assert "event loop" not in slow.small_batch_note
    Slow.slow_from = 3
    partly = Slow(read_version(model_repo, 1))
    partly.warm_up()
    assert partly.inline_max_images == 2
