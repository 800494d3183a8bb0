"""A real grpc.aio server on 127.0.0.1 port 0, in process, with its own metrics registry."""

from __future__ import annotations

import asyncio
import dataclasses
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server._proto.fashion.v1 import prediction_pb2_grpc as pb_grpc
from server.app import App, create_app
from server.config import Settings
from server.contract import MODEL_NAME
from server.model import LoadedModel
from server.plans import Change
from tests.e2e.faults import Faults
from training.data import load_fashion_mnist


def make_settings(repo: Path, **overrides: object) -> Settings:
    base = Settings(
        model_repo=repo, host="127.0.0.1", port=0, metrics_port=0, http_port=0, grace_s=5.0
    )
    return dataclasses.replace(base, **overrides)


@pytest.fixture
def faults() -> Faults:
    """Switchable faults of the models every ``start_app`` server loads (off by default)."""
    return Faults()


@pytest.fixture
async def start_app(model_repo: Path, faults: Faults) -> AsyncIterator:
    apps: list[App] = []

    async def start(
        repo: Path | None = None, *, load: bool = True, tracing: object = None, **overrides: object
    ) -> App:
        settings = make_settings(repo or model_repo, **overrides)
        app = create_app(settings, loader=faults.load, tracing=tracing)  # type: ignore[arg-type]
        apps.append(app)
        if load:
            await app.start()
        else:
            await app.open()
        return app

    yield start
    faults.clear()  # a held predict must not outlive its test
    for app in apps:
        await app.stop(grace_s=1.0)


@pytest.fixture
async def app(start_app) -> App:
    return await start_app()


@pytest.fixture
async def channel(app: App) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.PredictionServiceStub:
    return pb_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="session")
def test_set() -> tuple[np.ndarray, np.ndarray]:
    data = load_fashion_mnist(allow_download=False)
    return data.test_images, data.test_labels


class Samples(dict[str, float]):
    """Scraped samples by ``name{k=v,...}`` (labels sorted). A key names a sample or a
    subset of its labels: ``samples["fashion_requests_total{code=OK,method=Predict}"]``
    is the sum over every sample of that name whose labels include those, whatever
    else they carry (the model and version labels). KeyError when none matches."""

    def _matches(self, key: str) -> list[float]:
        name, _, rest = key.partition("{")
        wanted = {tuple(item.split("=", 1)) for item in rest.rstrip("}").split(",") if item}
        found = []
        for sample, value in dict.items(self):
            sample_name, _, labels = sample.partition("{")
            have = {tuple(item.split("=", 1)) for item in labels.rstrip("}").split(",") if item}
            if sample_name == name and wanted <= have:
                found.append(value)
        return found

    def __getitem__(self, key: str) -> float:
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        found = self._matches(key)
        if not found:
            raise KeyError(key)
        return sum(found)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and (dict.__contains__(self, key) or bool(self._matches(key)))

    def get(self, key: str, default: float | None = None) -> float | None:  # type: ignore[override]
        return self[key] if key in self else default


def parse_samples(text: str) -> Samples:
    samples = Samples()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    return samples


async def scrape(app: App) -> Samples:
    """GET /metrics over HTTP -> :class:`Samples`.

    Async: the metrics endpoint is served on the test's own event loop, so a
    blocking request from the loop would wait for itself.
    """
    url = f"http://127.0.0.1:{app.metrics_port}/metrics"

    def get() -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()

    return parse_samples(await asyncio.to_thread(get))


def default_model(app: App, name: str = MODEL_NAME) -> LoadedModel:
    """The loaded version a request that names no version of ``name`` gets."""
    route = app.manager.routes[name]
    return route.versions[route.default].model


def queued_images(app: App) -> int:
    """Images waiting in every loaded version's batcher queue."""
    return sum(
        served.batcher.queued_images
        for route in app.manager.routes.values()
        for served in route.versions.values()
    )


def installed(changes: list[Change], name: str = MODEL_NAME) -> int | None:
    """The newest version of ``name`` a reload loaded, or None when it loaded none."""
    loaded = [v for change in changes if change.model == name for v in change.loaded]
    return max(loaded) if loaded else None
