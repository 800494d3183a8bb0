"""Model control (#24): several models and versions at once, config.json (version policy and
labels), addressing by version or label, explicit load/unload, per-version batching and
metrics — on a real server with real models, through its gRPC and REST front ends."""

from __future__ import annotations

import asyncio
import gc
import json
import shutil
import weakref
from pathlib import Path

import grpc
import numpy as np
import pytest

from bench.serverproc import memory_mib, start_server
from client.oip import infer_request
from server._proto.fashion.v1 import prediction_pb2 as pb
from server._proto.fashion.v1 import prediction_pb2_grpc as pb_grpc
from server._proto.inference import grpc_predict_v2_pb2 as oip
from server._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from tests.e2e.conftest import installed, scrape
from tests.e2e.curl import curl
from tests.repos import configure, publish

IMAGE = pb.Image(raw=bytes(784))
PREDICT = pb.PredictRequest(images=[IMAGE])
CANARY = {"version_policy": {"latest": 2}, "labels": {"stable": 1, "canary": 2}}


@pytest.fixture
def repo(model_repo: Path, tmp_path: Path) -> Path:
    """fashion 1, 2 and other 1 (the same weights, published under those names)."""
    root = tmp_path / "models"
    publish(model_repo, root, "fashion", 1)
    publish(model_repo, root, "fashion", 2, test_accuracy=0.5)
    publish(model_repo, root, "other", 1)
    return root


async def predict(stub, **fields: object) -> pb.PredictResponse:
    return await stub.Predict(pb.PredictRequest(images=[IMAGE], **fields), timeout=10)


async def refused(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


# -- several models ------------------------------------------------------------------------


async def test_every_model_of_the_repository_is_served_and_reported(start_app, repo) -> None:
    app = await start_app(repo, poll_interval_s=0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.PredictionServiceStub(channel)
        oip_stub = oip_grpc.GRPCInferenceServiceStub(channel)
        answer = await predict(stub)  # the default model (--default-model fashion)
        assert (answer.model_name, answer.model_version) == ("fashion", 2)
        answer = await predict(stub, model_name="other")
        assert (answer.model_name, answer.model_version) == ("other", 1)
        images = np.zeros((2, 28, 28), np.uint8)
        reply = await oip_stub.ModelInfer(infer_request(images, model_name="other"))
        assert (reply.model_name, reply.model_version) == ("other", "1")
        for name in ("fashion", "other"):
            ready = await oip_stub.ModelReady(oip.ModelReadyRequest(name=name))
            assert ready.ready, name
        index = await oip_stub.RepositoryIndex(oip.RepositoryIndexRequest())
        assert [(m.name, m.version, m.state) for m in index.models] == [
            ("fashion", "1", "UNAVAILABLE"),
            ("fashion", "2", "READY"),
            ("other", "1", "READY"),
        ]
        assert "version policy latest 1" in index.models[0].reason
        stats = await oip_stub.ModelStatistics(oip.ModelStatisticsRequest())
        assert sorted((s.name, s.version, s.inference_count) for s in stats.model_stats) == [
            ("fashion", "2", 1),
            ("other", "1", 3),
        ]
    reply = await curl(f"http://127.0.0.1:{app.http_port}/v2/models/other/infer", "-X", "POST",
                       "-d", json.dumps({"inputs": [{"name": "images", "datatype": "UINT8",
                                         "shape": [1, 28, 28], "data": [0] * 784}]}))  # fmt: skip
    assert reply.status == 200 and reply.json()["model_name"] == "other", reply.body
    metrics = await scrape(app)
    assert metrics["fashion_requests_total{method=Predict,model=other,version=1}"] == 1
    assert metrics["fashion_images_total{model=other,version=1}"] == 4
    assert metrics["fashion_model_versions_loaded{model=fashion}"] == 1
    assert metrics["fashion_model_versions_loaded{model=other}"] == 1


async def test_a_broken_model_never_takes_another_down(start_app, repo, model_repo) -> None:
    broken = publish(model_repo, repo, "broken", 1)
    meta = json.loads((broken / "metadata.json").read_text())
    (broken / "metadata.json").write_text(json.dumps({**meta, "model_sha256": "0" * 64}))
    app = await start_app(repo, poll_interval_s=0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.PredictionServiceStub(channel)
        assert (await predict(stub)).model_version == 2
        error = await refused(predict(stub, model_name="broken"))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert "in the repository but not loaded" in error.details()
        assert "refused 1" in error.details()
        index = await oip_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(
            oip.RepositoryIndexRequest()
        )
        (entry,) = [m for m in index.models if m.name == "broken"]
        assert entry.state == "UNAVAILABLE" and entry.reason.startswith("refused")
    assert (await scrape(app))["fashion_model_loads_total{model=broken,result=refused}"] == 1


async def test_unknown_model_version_or_label_is_not_found_naming_what_exists(
    start_app, repo
) -> None:
    configure(repo, "fashion", {"labels": {"stable": 2}})
    app = await start_app(repo, poll_interval_s=0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.PredictionServiceStub(channel)
        cases = [
            ({"model_name": "nope"}, "unknown model 'nope'; this server serves 'fashion', 'other'"),
            ({"model_version": 1}, "model 'fashion' version 1 exists in the repository but is not"),
            ({"model_version": 9}, "model 'fashion' version 9 is not served; it serves version 2"),
            ({"version_label": "canary"}, "model 'fashion' has no label 'canary' (labels: stable)"),
        ]
        for fields, message in cases:
            error = await refused(predict(stub, **fields))
            assert error.code() == grpc.StatusCode.NOT_FOUND, fields
            assert message in error.details(), (fields, error.details())
        error = await refused(predict(stub, model_version=2, version_label="stable"))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    url = f"http://127.0.0.1:{app.http_port}"
    reply = await curl(f"{url}/v2/models/fashion/versions/9")
    assert reply.status == 404 and "it serves version 2" in reply.json()["error"]
    reply = await curl(f"{url}/v2/models/nope/ready")
    assert reply.status == 404 and "this server serves 'fashion', 'other'" in reply.json()["error"]


# -- config.json: version policy, labels, default ---------------------------------------------


async def test_labels_address_versions_and_stable_is_the_default(start_app, repo) -> None:
    configure(repo, "fashion", CANARY)
    app = await start_app(repo, poll_interval_s=0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.PredictionServiceStub(channel)
        assert (await predict(stub)).model_version == 1  # the stable label, not the newest
        assert (await predict(stub, version_label="canary")).model_version == 2
        assert (await predict(stub, version_label="stable")).model_version == 1
        assert (await predict(stub, model_version=2)).model_version == 2
        info = await stub.GetModelInfo(pb.GetModelInfoRequest(version_label="canary"))
        assert (info.version, info.test_accuracy) == (2, 0.5)
        assert list(info.loaded_versions) == [1, 2]
        assert dict(info.version_labels) == {"stable": 1, "canary": 2}
        assert info.default_version == 1
        oip_stub = oip_grpc.GRPCInferenceServiceStub(channel)
        meta = await oip_stub.ModelMetadata(oip.ModelMetadataRequest(name="fashion"))
        assert list(meta.versions) == ["1", "2"]
        config = (await oip_stub.ModelConfig(oip.ModelConfigRequest(name="fashion"))).config
        assert config.version_policy.latest.num_versions == 2
        assert config.parameters["labels"].string_value == "canary=2,stable=1"
        reply = await oip_stub.ModelInfer(infer_request(np.zeros((1, 28, 28), np.uint8)))
        assert reply.model_version == "1"  # an empty model_version is the default
    metrics = await scrape(app)
    assert metrics["fashion_model_version_label{label=canary,model=fashion,version=2}"] == 1
    assert metrics["fashion_model_versions_loaded{model=fashion}"] == 2


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ("{not json", "is not valid JSON"),
        ({"version_policy": {"newest": 1}}, "unknown version_policy 'newest'"),
        ({"labels": {"stable": 1}}, "labels 'stable' -> 1 point at versions that are not loaded"),
        ({"version_polic": {"latest": 1}}, "unknown fields ['version_polic']"),
        ({"labels": {"3": 2}}, "label '3' is not a name"),
    ],
    ids=["json", "policy", "label-not-loaded", "typo", "numeric-label"],
)
async def test_a_bad_config_is_refused_and_the_previous_one_kept(
    start_app, repo, caplog, config, fragment
) -> None:
    configure(repo, "fashion", {"version_policy": {"latest": 2}, "labels": {"stable": 2}})
    app = await start_app(repo, poll_interval_s=0)
    configure(repo, "fashion", config)
    assert await app.reload() == []
    assert await app.reload() == []  # the same refusal: logged and counted once
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.PredictionServiceStub(channel)
        assert (await predict(stub, version_label="stable")).model_version == 2
        assert (await predict(stub, model_version=1)).model_version == 1
    assert fragment in caplog.text
    assert caplog.text.count(fragment) == 1
    metrics = await scrape(app)
    assert metrics["fashion_model_loads_total{model=fashion,result=refused}"] == 1
    index = app.catalog.repository_index(only_ready=False)
    # The versions still served stay READY: the refusal changed nothing.
    assert [m.state for m in index.models if m.name == "fashion"] == ["READY", "READY"]


async def test_a_version_that_would_break_the_labels_is_loaded_once_and_explained(
    start_app, repo, model_repo
) -> None:
    """latest 2 serving 1 and 2 with stable -> 1, then version 3 appears (copied by hand:
    fashion-train refuses to publish it): the change is refused and the old versions kept.
    Later polls do not load and warm version 3 again while nothing changes, the index says
    why it is not served, and widening the policy applies it."""
    configure(repo, "fashion", {"version_policy": {"latest": 2}, "labels": {"stable": 1}})
    app = await start_app(repo, poll_interval_s=0)
    publish(model_repo, repo, "fashion", 3)
    for _ in range(3):
        assert await app.reload() == []
    metrics = await scrape(app)
    # Loaded: 1 and 2 at start, 3 once (then freed); refused: the change, counted once.
    assert metrics["fashion_model_loads_total{model=fashion,result=loaded}"] == 3
    assert metrics["fashion_model_loads_total{model=fashion,result=refused}"] == 1
    index = app.catalog.repository_index(only_ready=False)
    (entry,) = [m for m in index.models if (m.name, m.version) == ("fashion", "3")]
    assert entry.state == "UNAVAILABLE"
    assert entry.reason.startswith("not served: labels 'stable' -> 1 point at versions"), entry
    configure(repo, "fashion", {"version_policy": {"latest": 3}, "labels": {"stable": 1}})
    changes = await app.reload()
    assert [(c.model, c.loaded, c.unloaded) for c in changes] == [("fashion", (3,), ())]
    index = app.catalog.repository_index(only_ready=False)
    assert [m.state for m in index.models if m.name == "fashion"] == ["READY"] * 3


async def test_a_poll_reads_the_config_before_the_versions(start_app, repo, model_repo) -> None:
    """A publish with its label landing between a poll's two reads (fashion-train --label:
    the version is renamed into place, then labelled) is no refusal: the poll that read the
    old config serves the new version by the policy, the next one applies the label."""
    configure(repo, "fashion", {"version_policy": {"latest": 2}, "labels": {"stable": 2}})
    app = await start_app(repo, poll_interval_s=0)
    view = app.manager.view
    read_config = view.read_config

    def publish_then_read(record, text):  # the publisher runs right after the first read
        config = read_config(record, text)
        if record.name == "fashion" and not (repo / "fashion" / "3").exists():
            publish(model_repo, repo, "fashion", 3)
            configure(repo, "fashion", {"version_policy": {"latest": 2},
                                        "labels": {"stable": 2, "canary": 3}})  # fmt: skip
        return config

    view.read_config = publish_then_read
    changes = await app.reload()
    assert [(c.model, c.loaded, c.unloaded) for c in changes] == [("fashion", (3,), (1,))]
    changes = await app.reload()
    assert app.manager.routes["fashion"].labels == {"stable": 2, "canary": 3}
    metrics = await scrape(app)
    assert metrics.get("fashion_model_loads_total{model=fashion,result=refused}", 0) == 0


async def test_a_changed_config_applies_atomically_under_traffic(start_app, repo, faults) -> None:
    """latest 2 -> latest 1 with a request held on version 1: it is answered by version 1,
    then version 1 is freed; no request fails."""
    configure(repo, "fashion", {"version_policy": {"latest": 2}})
    app = await start_app(repo, poll_interval_s=0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.PredictionServiceStub(channel)
        faults.only("fashion", 1).hold()
        held = asyncio.ensure_future(predict(stub, model_version=1))
        await asyncio.to_thread(faults.entered.wait, 5)
        configure(repo, "fashion", {"version_policy": {"latest": 1}})
        reload = asyncio.ensure_future(app.reload())
        # Version 1 left the routes at once; the reload waits for its request.
        while 1 in app.manager.routes["fashion"].versions:
            await asyncio.sleep(0.01)
        error = await refused(predict(stub, model_version=1))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert (await predict(stub)).model_version == 2
        assert not reload.done()
        faults.release.set()
        assert (await held).model_version == 1
        changes = await reload
        assert [(c.model, c.loaded, c.unloaded) for c in changes] == [("fashion", (), (1,))]
    metrics = await scrape(app)
    assert not [k for k in metrics if "model=fashion" in k and "version=1" in k]


async def test_a_new_model_appears_and_a_removed_one_is_unloaded(start_app, repo, model_repo):
    app = await start_app(repo, poll_interval_s=0)
    publish(model_repo, repo, "third", 4)
    assert installed(await app.reload(), "third") == 4
    shutil.rmtree(repo / "other")
    changes = await app.reload()
    assert [(c.model, c.unloaded) for c in changes] == [("other", (1,))]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.PredictionServiceStub(channel)
        assert (await predict(stub, model_name="third")).model_version == 4
        error = await refused(predict(stub, model_name="other"))
        assert error.code() == grpc.StatusCode.NOT_FOUND
    metrics = await scrape(app)
    assert "fashion_model_versions_loaded{model=other}" not in metrics


# -- batching per version ---------------------------------------------------------------------


async def test_a_stuck_canary_never_delays_stable_traffic(start_app, repo, faults) -> None:
    configure(repo, "fashion", CANARY)
    app = await start_app(repo, poll_interval_s=0, max_queue=8, max_images_per_request=8)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.PredictionServiceStub(channel)
        faults.only("fashion", 2).hold()
        stuck = [asyncio.ensure_future(predict(stub, version_label="canary")) for _ in range(3)]
        await asyncio.to_thread(faults.entered.wait, 5)
        # The canary's own queue fills; stable answers, with a queue of its own.
        canary = app.manager.routes["fashion"].versions[2]
        while canary.batcher.queued_images < 2:
            await asyncio.sleep(0.001)
        for _ in range(20):
            assert (await predict(stub)).model_version == 1
        big = pb.PredictRequest(images=[IMAGE] * 8, version_label="canary")
        error = await refused(stub.Predict(big, timeout=10))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # the canary's bound
        faults.release.set()
        assert [r.model_version for r in await asyncio.gather(*stuck)] == [2, 2, 2]
    metrics = await scrape(app)
    full = "fashion_rejected_requests_total{model=fashion,reason=queue_full,version=2}"
    assert metrics[full] == 1
    assert "fashion_rejected_requests_total{model=fashion,version=1}" not in metrics
    assert metrics["fashion_queue_capacity_images{model=fashion,version=2}"] == 8


# -- explicit mode ------------------------------------------------------------------------------


async def test_explicit_mode_loads_and_unloads_through_the_api(start_app, repo) -> None:
    app = await start_app(repo, model_control_mode="explicit", load_model="fashion")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.PredictionServiceStub(channel)
        oip_stub = oip_grpc.GRPCInferenceServiceStub(channel)
        error = await refused(predict(stub, model_name="other"))
        assert "'other' is in the repository but not loaded" in error.details()
        index = await oip_stub.RepositoryIndex(oip.RepositoryIndexRequest())
        assert [(m.name, m.state) for m in index.models if m.name == "other"] == [
            ("other", "UNAVAILABLE")
        ]
        await oip_stub.RepositoryModelLoad(oip.RepositoryModelLoadRequest(model_name="other"))
        assert (await predict(stub, model_name="other")).model_version == 1
        # Reloading with a config override: this load's config, not the file's.
        override = oip.ModelRepositoryParameter(string_param=json.dumps({"labels": {"stable": 2}}))
        await oip_stub.RepositoryModelLoad(
            oip.RepositoryModelLoadRequest(model_name="fashion", parameters={"config": override})
        )
        assert (await predict(stub, version_label="stable")).model_version == 2
        await oip_stub.RepositoryModelUnload(oip.RepositoryModelUnloadRequest(model_name="other"))
        error = await refused(predict(stub, model_name="other"))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        error = await refused(
            oip_stub.RepositoryModelLoad(oip.RepositoryModelLoadRequest(model_name="nope"))
        )
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert "(models: fashion, other)" in error.details()
    url = f"http://127.0.0.1:{app.http_port}/v2/repository/models/other"
    assert (await curl(f"{url}/load", "-X", "POST")).status == 200
    assert (await curl(f"{url}/unload", "-X", "POST", "-d",
                       '{"parameters": {"unload_dependents": false}}')).status == 200  # fmt: skip
    files = '{"parameters": {"file:1/model.onnx": "x"}}'
    reply = await curl(f"{url}/load", "-X", "POST", "-d", files)
    assert reply.status == 400 and "file overrides" in reply.json()["error"]


async def test_explicit_mode_index_says_a_new_version_waits_for_a_load(
    start_app, repo, model_repo
) -> None:
    app = await start_app(repo, model_control_mode="explicit", load_model="fashion")
    publish(model_repo, repo, "fashion", 3)
    index = app.catalog.repository_index(only_ready=False)
    (entry,) = [m for m in index.models if (m.name, m.version) == ("fashion", "3")]
    assert entry.state == "UNAVAILABLE" and "load the model again through the API" in entry.reason
    await app.manager.load("fashion")
    assert app.manager.routes["fashion"].version_numbers == [3]


async def test_a_ready_server_serving_no_model_answers_not_found_not_retry(start_app, repo):
    """After the last unload (and before a first load) the server is ready and serves
    nothing: a request for any model is NOT_FOUND saying so, never "retry shortly"."""
    app = await start_app(repo, model_control_mode="explicit", load_model="fashion")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.PredictionServiceStub(channel)
        oip_stub = oip_grpc.GRPCInferenceServiceStub(channel)
        await oip_stub.RepositoryModelUnload(oip.RepositoryModelUnloadRequest(model_name="fashion"))
        assert (await oip_stub.ServerReady(oip.ServerReadyRequest())).ready
        error = await refused(predict(stub, model_name="nope"))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert error.details() == "unknown model 'nope'; this server serves no model"
        error = await refused(predict(stub))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert "'fashion' is in the repository but not loaded" in error.details()
        ready = await oip_stub.ModelReady(oip.ModelReadyRequest(name="fashion"))
        assert not ready.ready
        # Not served is not ready (as Triton answers it), an answer and not an error.
        assert not (await oip_stub.ModelReady(oip.ModelReadyRequest(name="nope"))).ready
    url = f"http://127.0.0.1:{app.http_port}/v2/models"
    body = json.dumps({"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 28, 28],
                                   "data": [0] * 784}]})  # fmt: skip
    for name in ("nope", "fashion"):
        reply = await curl(f"{url}/{name}/infer", "-X", "POST", "-d", body)
        assert reply.status == 404 and "retry-after" not in reply.headers, (name, reply.body)


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ("{not json", "is not valid JSON"),
        (json.dumps({"version_policy": {"newest": 1}}), "unknown version_policy 'newest'"),
        (json.dumps({"labels": {"3": 2}}), "label '3' is not a name"),
    ],
    ids=["json", "policy", "numeric-label"],
)
async def test_a_malformed_config_in_a_load_request_is_the_callers_mistake(
    start_app, repo, config, fragment
) -> None:
    """Triton's ``config`` load parameter is the caller's input. A malformed one was taken for
    the repository's fault: FAILED_PRECONDITION, counted as a refused model load (the
    ModelVersionRefused alert), logged as an error and kept as the model's problem (its index
    said a version was not served because of that request). It is INVALID_ARGUMENT (HTTP
    400), and nothing of the model changes."""
    app = await start_app(repo, model_control_mode="explicit", load_model="fashion")
    before = app.catalog.repository_index(only_ready=False)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        oip_stub = oip_grpc.GRPCInferenceServiceStub(channel)
        bad = oip.ModelRepositoryParameter(string_param=config)
        error = await refused(
            oip_stub.RepositoryModelLoad(
                oip.RepositoryModelLoadRequest(model_name="fashion", parameters={"config": bad})
            )
        )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert "the load request's config for 'fashion'" in error.details()
    assert fragment in error.details()
    url = f"http://127.0.0.1:{app.http_port}/v2/repository/models/fashion/load"
    reply = await curl(url, "-X", "POST", "-d", json.dumps({"parameters": {"config": config}}))
    assert reply.status == 400 and fragment in reply.json()["error"], reply.body
    assert app.catalog.repository_index(only_ready=False) == before
    assert app.manager.problems() == {}
    metrics = await scrape(app)
    assert metrics["fashion_model_loads_total{model=fashion,result=refused}"] == 0


async def test_loading_a_broken_model_says_why_and_changes_nothing(start_app, repo) -> None:
    app = await start_app(repo, model_control_mode="explicit", load_model="fashion")
    for version in (1, 2):
        meta_path = repo / "fashion" / str(version) / "metadata.json"
        meta = json.loads(meta_path.read_text())
        meta_path.write_text(json.dumps({**meta, "model_sha256": "0" * 64}))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        oip_stub = oip_grpc.GRPCInferenceServiceStub(channel)
        error = await refused(
            oip_stub.RepositoryModelLoad(oip.RepositoryModelLoadRequest(model_name="fashion"))
        )
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "model 'fashion': refused 1, 2" in error.details()
        assert "still serving version 2" in error.details()
        assert str(repo) not in error.details()  # no server paths to the caller
        stub = pb_grpc.PredictionServiceStub(channel)
        assert (await predict(stub)).model_version == 2  # still served, from memory


async def test_poll_mode_refuses_explicit_control_with_the_reason(start_app, repo) -> None:
    app = await start_app(repo, poll_interval_s=0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        oip_stub = oip_grpc.GRPCInferenceServiceStub(channel)
        error = await refused(
            oip_stub.RepositoryModelUnload(oip.RepositoryModelUnloadRequest(model_name="fashion"))
        )
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "--model-control-mode explicit" in error.details()
    reply = await curl(f"http://127.0.0.1:{app.http_port}/v2/repository/models/fashion/load",
                       "-X", "POST")  # fmt: skip
    assert reply.status == 400 and "poll" in reply.json()["error"]


async def test_a_control_token_guards_load_and_unload(start_app, repo) -> None:
    app = await start_app(
        repo, model_control_mode="explicit", load_model="fashion", model_control_token="s3cret"
    )
    unload = oip.RepositoryModelUnloadRequest(model_name="fashion")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        oip_stub = oip_grpc.GRPCInferenceServiceStub(channel)
        for metadata in ((), (("authorization", "Bearer wrong"),)):
            error = await refused(oip_stub.RepositoryModelUnload(unload, metadata=metadata))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        stub = pb_grpc.PredictionServiceStub(channel)
        assert (await predict(stub)).model_version == 2  # nothing was unloaded
        await oip_stub.RepositoryModelUnload(unload, metadata=(("authorization", "Bearer s3cret"),))
    url = f"http://127.0.0.1:{app.http_port}/v2/repository/models/fashion/load"
    reply = await curl(url, "-X", "POST")
    assert reply.status == 401 and reply.headers["www-authenticate"] == "Bearer"
    reply = await curl(url, "-X", "POST", "-H", "Authorization: Bearer s3cret")
    assert reply.status == 200, reply.body


async def test_explicit_start_up_waits_for_or_refuses_a_model_it_cannot_load(
    start_app, repo
) -> None:
    from server.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match=r"cannot load missing from .* not in the repository"):
        await start_app(repo, model_control_mode="explicit", load_model="fashion,missing")
    app = await start_app(repo, model_control_mode="explicit")  # none named: ready at once
    assert app.plane.readiness.ready and not app.manager.routes


async def test_a_version_whose_files_change_is_loaded_again(start_app, repo) -> None:
    """Poll mode: version 2 rewritten in place (new metadata) is reloaded; its series stay."""
    app = await start_app(repo, poll_interval_s=0)
    meta_path = repo / "fashion" / "2" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "test_accuracy": 0.25}) + "\n")
    changes = await app.reload()
    assert [(c.model, c.loaded, c.unloaded) for c in changes] == [("fashion", (2,), (2,))]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.PredictionServiceStub(channel)
        info = await stub.GetModelInfo(pb.GetModelInfoRequest())
        assert (info.version, info.test_accuracy) == (2, 0.25)
        assert (await predict(stub)).model_version == 2
    metrics = await scrape(app)
    assert metrics["fashion_images_total{model=fashion,version=2}"] == 1
    assert metrics["fashion_model_loads_total{model=fashion,result=loaded}"] == 2


async def test_fifty_loads_and_unloads_of_a_version_keep_memory_flat(repo) -> None:
    """A real server process (its allocator settings, server/memory.py, as deployed): after
    50 load and unload cycles of a version, resident memory is within 10 % of where it was
    after the first five. The in-process check that an unloaded version is freed (nothing
    refers to it) is test_hot_reload's, for versions that leave on a reload."""
    server = start_server(repo, ["--model-control-mode", "explicit", "--load-model", "fashion"])
    load = oip.RepositoryModelLoadRequest(model_name="other")
    unload = oip.RepositoryModelUnloadRequest(model_name="other")
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.PredictionServiceStub(channel)
            oip_stub = oip_grpc.GRPCInferenceServiceStub(channel)

            async def cycle() -> None:
                await oip_stub.RepositoryModelLoad(load)
                assert (await predict(stub, model_name="other")).model_version == 1
                await oip_stub.RepositoryModelUnload(unload)

            for _ in range(5):  # allocator arenas and first-time work settle
                await cycle()
            baseline = memory_mib(server.pid)["rss_mib"]
            for _ in range(50):
                await cycle()
            await asyncio.sleep(1.5)  # one --memory-trim-interval-s
            after = memory_mib(server.pid)["rss_mib"]
            error = await refused(predict(stub, model_name="other"))
            assert error.code() == grpc.StatusCode.NOT_FOUND  # unloaded, as asked
    finally:
        assert server.stop() == 0
    assert after < baseline * 1.10, f"RSS {baseline:.0f} -> {after:.0f} MiB"


async def test_an_unloaded_version_is_freed_at_once_not_at_the_next_collection(
    start_app, repo
) -> None:
    """No reference cycle holds a version (a bound method in its batcher once did): with the
    cyclic collector off, its model is gone as soon as the unload returns."""
    app = await start_app(repo, model_control_mode="explicit", load_model="fashion")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.PredictionServiceStub(channel)
        oip_stub = oip_grpc.GRPCInferenceServiceStub(channel)
        await oip_stub.RepositoryModelLoad(oip.RepositoryModelLoadRequest(model_name="other"))
        assert (await predict(stub, model_name="other")).model_version == 1
        served = app.manager.routes["other"].versions[1]
        model, version = weakref.ref(served.model), weakref.ref(served)
        del served
        gc.disable()
        try:
            await oip_stub.RepositoryModelUnload(
                oip.RepositoryModelUnloadRequest(model_name="other")
            )
            for _ in range(3):  # the unload's own tasks finish
                await asyncio.sleep(0)
            assert version() is None and model() is None
        finally:
            gc.enable()


async def test_a_version_that_leaves_by_policy_is_freed_at_once_however_often(
    start_app, repo
) -> None:
    """The config path of fashion-soak --flip-s, exactly: labels flipped, then the older
    version leaving the policy and coming back, five times; with the cyclic collector off,
    every copy of version 1 that left is gone when its reload returns."""
    configure(repo, "fashion", CANARY)
    app = await start_app(repo, poll_interval_s=0)
    left: list[weakref.ref[object]] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.PredictionServiceStub(channel)
        gc.disable()
        try:
            for _ in range(5):
                configure(repo, "fashion", {**CANARY, "labels": {"stable": 2, "canary": 2}})
                await app.reload()
                served = app.manager.routes["fashion"].versions[1]
                left += [weakref.ref(served), weakref.ref(served.model)]
                del served
                assert (await predict(stub, model_version=1)).model_version == 1
                configure(repo, "fashion", {"version_policy": {"latest": 1}})
                await app.reload()
                for _ in range(3):  # the unload's own tasks finish
                    await asyncio.sleep(0)
                assert [ref() for ref in left] == [None] * len(left)
                configure(repo, "fashion", CANARY)
                await app.reload()
                assert (await predict(stub, version_label="stable")).model_version == 1
        finally:
            gc.enable()
