"""Hostile repository contents (issue #17 items 4, 5, 11): names that are not versions,
metadata that cannot be read, versions served under a number they were not published as.

A real server on port 0 serves version 1 of a private copy of the repository; the
attacks are directories dropped next to it. Each must be ignored or refused (logged
once, counted), never take the server down or turn requests into INTERNAL.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import grpc
import pytest

from server._proto.fashion.v1 import prediction_pb2 as pb
from server._proto.fashion.v1 import prediction_pb2_grpc as pb_grpc
from server.repository import sha256_file
from tests.e2e.conftest import default_model, installed, scrape
from tests.reliability.test_hot_reload import add_version

IMAGE = pb.Image(raw=bytes(784))
# Names str.isdigit() accepts (or int() reads) that are not versions.
NOT_VERSIONS = ("99999999999999999999", "\u00b2", "\u0665", "\uff17", "\u2460", "007")


def copy_as(repo: Path, name: str, *, recorded: object = None) -> Path:
    """A valid copy of version 1 under directory ``name``; metadata records ``recorded``."""
    target = repo / "fashion" / name
    shutil.copytree(repo / "fashion" / "1", target)
    meta = json.loads((target / "metadata.json").read_text())
    meta["version"] = name if recorded is None else recorded
    (target / "metadata.json").write_text(json.dumps(meta))
    return target


def nest_metadata(version_dir: Path, depth: int = 200_000) -> None:
    (version_dir / "metadata.json").write_text("[" * depth + "]" * depth)


async def served_version(stub, requested: int = 0) -> int:
    request = pb.PredictRequest(images=[IMAGE], model_version=requested)
    return (await stub.Predict(request, timeout=5)).model_version


def ignored_lines(caplog, name: str) -> int:
    return sum(1 for r in caplog.records if r.getMessage().startswith(f"ignoring {name!r} in "))


async def test_names_that_are_not_versions_are_ignored_once_each(
    start_app, private_repo, caplog
) -> None:
    caplog.set_level(logging.WARNING)
    for name in NOT_VERSIONS:
        # The big one records its own (out-of-range) number, so it loads if taken.
        copy_as(private_repo, name, recorded=int(name) if name.isascii() else None)
    app = await start_app(private_repo, poll_interval_s=0)  # also proves start-up survives
    for _ in range(3):
        assert installed(await app.reload()) is None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.PredictionServiceStub(channel)
        assert await served_version(stub) == 1
        assert (await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)).version == 1
        # A pinned request for a number that is not served: NOT_FOUND, not INTERNAL.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await served_version(stub, requested=5)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        # A valid new version is not blocked by them.
        add_version(private_repo, 2)
        assert installed(await app.reload()) == 2
        assert await served_version(stub) == 2
    # One line per name for the whole life of the server, not one per poll.
    assert {name: ignored_lines(caplog, name) for name in NOT_VERSIONS} == dict.fromkeys(
        NOT_VERSIONS, 1
    )
    assert "Traceback" not in caplog.text


async def test_unreadable_metadata_refuses_the_version_and_the_scan_moves_on(
    start_app, private_repo, caplog
) -> None:
    app = await start_app(private_repo, poll_interval_s=0)
    add_version(private_repo, 2)
    nest_metadata(add_version(private_repo, 3))
    # Version 3 is refused (a RecursionError inside json) and the valid version 2 is taken.
    assert installed(await app.reload()) == 2
    assert installed(await app.reload()) is None
    assert installed(await app.reload()) is None
    assert (await scrape(app))["fashion_model_loads_total{result=refused}"] == 1  # remembered
    refusals = [r for r in caplog.records if "refusing model 'fashion' version 3" in r.getMessage()]
    assert len(refusals) == 1 and "nested too deeply" in refusals[0].getMessage()
    # Fixed files are retried: a valid version 3 is taken.
    shutil.rmtree(private_repo / "fashion" / "3")
    add_version(private_repo, 3)
    assert installed(await app.reload()) == 3


def give_int8_variant(version_dir: Path) -> None:
    """A stand-in int8 file (a copy of the float model) listed in metadata.json."""
    shutil.copy(version_dir / "model.onnx", version_dir / "model.int8.onnx")
    meta = json.loads((version_dir / "metadata.json").read_text())
    meta["variants"] = {
        "int8": {"file": "model.int8.onnx", "sha256": sha256_file(version_dir / "model.int8.onnx")}
    }
    (version_dir / "metadata.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("broken", ["nested", "not-an-object", "variants-a-list"])
async def test_start_up_skips_an_unreadable_newest_version(start_app, private_repo, broken) -> None:
    give_int8_variant(private_repo / "fashion" / "1")
    version_dir = add_version(private_repo, 2)
    meta_path = version_dir / "metadata.json"
    if broken == "nested":
        nest_metadata(version_dir)
    elif broken == "not-an-object":
        meta_path.write_text("[]")
    else:  # a shape the reader does not expect (AttributeError inside): still a refusal
        meta = json.loads(meta_path.read_text())
        meta_path.write_text(json.dumps({**meta, "variants": ["int8"]}))
    app = await start_app(private_repo, poll_interval_s=0, model_variant="int8")
    assert default_model(app).version == 1
    assert (await scrape(app))["fashion_model_loads_total{result=refused}"] == 1


async def test_start_up_with_only_invalid_versions_names_them(start_app, private_repo) -> None:
    from server.errors import ModelLoadError

    nest_metadata(private_repo / "fashion" / "1")
    with pytest.raises(ModelLoadError, match=r"no valid model version in .*: refused 1"):
        await start_app(private_repo)


async def test_a_symlinked_version_is_refused_unless_its_metadata_agrees(
    start_app, private_repo, caplog
) -> None:
    app = await start_app(private_repo, poll_interval_s=0)
    (private_repo / "fashion" / "4").symlink_to(private_repo / "fashion" / "1")
    assert installed(await app.reload()) is None
    assert default_model(app).version == 1
    assert "refusing model 'fashion' version 4" in caplog.text
    assert "records version 1" in caplog.text
    # A copy that records its own number is a version like any other.
    copy_as(private_repo, "5", recorded=5)
    assert installed(await app.reload()) == 5
