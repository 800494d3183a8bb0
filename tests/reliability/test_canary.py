"""A canary flow under load (#24): clients pinned to ``stable``, to ``canary``, to version
numbers and to the default at once, while ``fashion-repo`` promotes the canary and rolls it
back on a real server. No request fails; every answer comes from the version its label
(or number) named at some moment while the request was in flight."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from server._proto.fashion.v1 import prediction_pb2 as pb
from server._proto.fashion.v1 import prediction_pb2_grpc as pb_grpc
from server.repo_cli import main as fashion_repo
from tests.e2e.conftest import scrape
from tests.repos import publish

IMAGE = pb.Image(raw=bytes(784))
# What each client asks for: a label, a number, or nothing (the default: stable's version).
ASKS: tuple[dict[str, object], ...] = (
    {"version_label": "stable"},
    {"version_label": "stable"},
    {"version_label": "canary"},
    {"version_label": "canary"},
    {"model_version": 1},
    {"model_version": 2},
    {},
)


@dataclass
class Answer:
    ask: str
    sent: float
    received: float
    version: int


@dataclass
class Timeline:
    """Which version each label named, and when it may have changed."""

    mappings: list[dict[str, int]]
    # (start, end) of the change from mappings[i] to mappings[i + 1]
    changes: list[tuple[float, float]] = field(default_factory=list)

    def possible(self, label: str, sent: float, received: float) -> set[int]:
        """The versions ``label`` may have named while a request was in flight: mapping i
        is in force from the start of the change that made it to the end of the next."""
        found = set()
        for i, mapping in enumerate(self.mappings):
            begins = self.changes[i - 1][0] if i else float("-inf")
            ends = self.changes[i][1] if i < len(self.changes) else float("inf")
            if begins <= received and sent <= ends:
                found.add(mapping[label])
        return found


def label_of(ask: Mapping[str, object]) -> str:
    if "version_label" in ask:
        return str(ask["version_label"])
    return "stable" if not ask else f"version {ask['model_version']}"


@pytest.fixture
def repo(model_repo: Path, tmp_path: Path) -> Path:
    root = tmp_path / "models"
    publish(model_repo, root, "fashion", 1)
    publish(model_repo, root, "fashion", 2)
    for argv in (
        ["policy", "fashion", "latest:2"],
        ["label", "fashion", "stable", "1"],
        ["label", "fashion", "canary", "2"],
    ):
        assert fashion_repo(["--model-repo", str(root), *argv]) == 0
    return root


async def test_a_canary_is_promoted_then_rolled_back_under_load(start_app, repo) -> None:
    app = await start_app(repo, poll_interval_s=0)
    timeline = Timeline([{"stable": 1, "canary": 2}])
    answers: list[Answer] = []
    failures: list[str] = []
    stop = asyncio.Event()

    async def client(stub: pb_grpc.PredictionServiceStub, ask: dict[str, object]) -> None:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                reply = await stub.Predict(pb.PredictRequest(images=[IMAGE], **ask), timeout=10)
            except grpc.aio.AioRpcError as exc:
                failures.append(f"{ask}: {exc.code().name} {exc.details()}")
                continue
            answers.append(Answer(label_of(ask), sent, time.monotonic(), reply.model_version))

    async def change(argv: list[str], mapping: dict[str, int]) -> None:
        await asyncio.sleep(0.5)  # some traffic in each phase
        start = time.monotonic()
        code = await asyncio.to_thread(fashion_repo, ["--model-repo", str(repo), *argv])
        assert code == 0
        await app.reload()  # what the next poll or SIGHUP does
        timeline.changes.append((start, time.monotonic()))
        timeline.mappings.append(mapping)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.PredictionServiceStub(channel)
        clients = [asyncio.create_task(client(stub, ask)) for ask in ASKS]
        await change(["promote", "fashion"], {"stable": 2, "canary": 2})
        await change(["rollback", "fashion"], {"stable": 1, "canary": 2})
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*clients)

    assert not failures, failures[:5]
    wrong = []
    for answer in answers:
        if answer.ask.startswith("version "):
            allowed = {int(answer.ask.split()[1])}
        else:
            allowed = timeline.possible(answer.ask, answer.sent, answer.received)
        if answer.version not in allowed:
            wrong.append((answer, allowed))
    assert not wrong, wrong[:5]
    # Each phase was really served: stable answered 1, then 2 (promoted), then 1 again.
    promoted_at, rolled_back_at = timeline.changes[0][1], timeline.changes[1][1]
    stable = [a for a in answers if a.ask == "stable"]
    assert {a.version for a in stable if a.received < timeline.changes[0][0]} == {1}
    between = {
        a.version for a in stable if promoted_at < a.sent < a.received < timeline.changes[1][0]
    }
    assert between == {2}
    assert {a.version for a in stable if a.sent > rolled_back_at} == {1}
    assert {a.version for a in answers if a.ask == "canary"} == {2}
    metrics = await scrape(app)
    assert metrics["fashion_model_version_label{label=stable,model=fashion,version=1}"] == 1
    assert "fashion_model_version_label{label=stable,model=fashion,version=2}" not in metrics
