"""Model control: which models and versions are loaded, and every change to that.

The repository holds any number of models (``<repo>/<model>/<version>/``), each with
an optional ``config.json`` (version policy and labels, :mod:`server.serving_config`).
Two modes, as in Triton:

* ``poll``: every model in the repository is served as its config says; a poll
  (every ``--poll-interval-s`` and on SIGHUP) applies what changed on disk — new
  models, new versions, a changed config, a removed model;
* ``explicit``: only the models named at start-up (``--load-model``) and those
  loaded since through the API (Triton's ``RepositoryModelLoad`` / ``Unload``).

Applying a model (:meth:`ModelManager._apply`) is atomic for the requests: the
versions that enter are loaded and warmed (off the event loop) before the model's
new :class:`Route` replaces the old one; the versions that leave are then drained
(their in-flight requests finish on them) and freed. A failure changes nothing
that is served: an invalid version is refused (logged, counted, remembered by its
files' fingerprint so it is not retried until they change) and the policy falls
back to the versions that load; a config.json that is malformed or whose labels
point at versions that did not load is refused and the previous config stays; a
change that would leave a model with no version at all never takes effect. One
model's trouble never touches another's. Control operations run one at a time.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.config import EXPLICIT, POLL
from server.errors import (
    ConfigError,
    FailedPrecondition,
    LoadRefused,
    ModelLoadError,
    ServingError,
    VersionNotFound,
)
from server.metrics import Metrics
from server.model import LoadedModel
from server.plans import Change, Load, Operation, Plan, Poll, Step, Unload
from server.repository import ModelVersion, read_version, version_fingerprint
from server.repository_view import (
    IndexEntry,
    ModelRecord,
    RepositoryView,
    nothing_chosen,
)
from server.routing import Route, resolve
from server.served import ServedVersion
from server.serving_config import ConfigRefused, ServingConfig
from server.target import Target

logger = logging.getLogger(__name__)

# Batch sizes run once before a version is reported ready: the first request of
# each size otherwise pays onnxruntime's allocation cost.
WARM_UP_BATCHES = (1, 8, 32, 64)

# How a version's checked files become a servable model (blocking; runs off the event loop).
ModelLoader = Callable[[ModelVersion], LoadedModel]


def onnxruntime_loader(device: str, threads: int) -> ModelLoader:
    """The server's loader: an onnxruntime session on ``device`` with ``threads`` threads."""
    return functools.partial(LoadedModel, device=device, threads=threads)


@dataclass(frozen=True)
class Batching:
    """Each version's batcher settings (``--max-batch-size`` etc.; the queue is per version)."""

    max_batch_size: int = 64
    max_wait_s: float = 0.002
    max_queue: int = 1024
    concurrency: int = 1


class ModelManager:
    def __init__(
        self,
        repo: Path,
        *,
        load: ModelLoader,
        metrics: Metrics,
        mode: str = POLL,
        pinned_version: int = 0,
        variant: str = "float",
        batching: Batching | None = None,
    ) -> None:
        self.repo = Path(repo)
        self.mode = mode
        self.pinned_version = pinned_version
        self.variant = variant
        self.metrics = metrics
        self._load = load
        self._batching = batching or Batching()
        size = self._batching.max_batch_size
        self._warm_sizes = tuple(sorted({1, *(n for n in WARM_UP_BATCHES if n < size), size}))
        self._routes: dict[str, Route] = {}  # replaced whole on every change
        self.view = RepositoryView(self.repo, mode=mode, pinned_version=pinned_version)
        self._control = asyncio.Lock()  # one control operation at a time

    # -- the hot path ----------------------------------------------------------------

    @property
    def routes(self) -> Mapping[str, Route]:
        return self._routes

    def resolve(self, target: Target) -> ServedVersion:
        """The loaded version ``target`` asks for; VersionNotFound names what is served."""
        try:
            return resolve(self._routes, target)
        except VersionNotFound:
            # The error path only: say whether the version exists on disk.
            if target.model in self._routes and target.version and not target.label:
                on_disk = {target.model: self.view.versions_on_disk(target.model)}
                return resolve(self._routes, target, on_disk=on_disk)
            if target.model not in self._routes and target.model in self.view.models_on_disk():
                problem = self._problem(target)
                raise VersionNotFound(
                    f"model {target.model!r} is in the repository but not loaded"
                    + (f": {problem}" if problem else "")
                ) from None
            raise

    def on_disk(self, target: Target) -> bool:
        """Whether ``target``'s model (and version, when it names one) is in the repository
        (blocking: lists directories; for answers about models, not for requests)."""
        if target.model not in self.view.models_on_disk():
            return False
        if target.label or not target.version:
            return True
        return target.version in {str(v) for v in self.view.versions_on_disk(target.model)}

    def models_on_disk(self) -> list[str]:
        return self.view.models_on_disk()

    def problems(self) -> dict[str, str]:
        """Models that are not served as asked, and why."""
        return self.view.problems()

    def refused_versions(self, name: str) -> list[int]:
        return self.view.refused_versions(name)

    def records(self) -> dict[str, dict[str, Any]]:
        """What this manager remembers of the repository beside what it serves (JSON-able):
        a worker joining its peers is synced with it (:class:`server.plans.Sync`)."""
        return self.view.export_records()

    def index(self, *, ready: bool) -> list[IndexEntry]:
        """Every model and version on disk or loaded, with its state (lists directories)."""
        return self.view.index(self._routes, ready=ready)

    def _problem(self, target: Target) -> str:
        record = self.view.records.get(target.model)
        return record.problem if record else ""

    # -- control operations: prepared, then committed ---------------------------------------
    #
    # Every change is prepared first (versions that enter are loaded and warmed, nothing a
    # request sees changes), then committed (the routes swap, the versions that leave drain)
    # or aborted (what was loaded for it is freed). One process does both at once; with
    # --workers the supervisor prepares every worker, compares what each would serve, and
    # commits only when they agree (server/supervisor.py), so workers never disagree.

    async def poll(self) -> list[Change]:
        """Poll mode: apply every model of the repository as it is on disk now."""
        return await self.commit(await self.prepare(Poll()))

    async def load(self, name: str, *, config_text: str | None = None) -> Change:
        """Load, or reload, one model (explicit mode). LoadRefused says why nothing changed.

        ``config_text``: a config.json to use instead of the file (Triton's ``config``
        load parameter); it is not written anywhere.
        """
        changes = await self.commit(await self.prepare(Load(name, config_text)))
        return changes[0] if changes else Change(name)

    async def unload(self, name: str) -> Change:
        """Unload one model (explicit mode): its versions drain, then are freed."""
        changes = await self.commit(await self.prepare(Unload(name)))
        return changes[0] if changes else Change(name)

    async def prepare(self, operation: Operation) -> Plan:
        """Prepare ``operation``; the control lock is held until :meth:`commit` or :meth:`abort`.

        Raises (and holds nothing) when the operation is refused: FailedPrecondition for
        model control in poll mode, VersionNotFound for an unknown model, LoadRefused for
        a load that would change nothing, ModelLoadError for an unlistable repository.
        """
        if isinstance(operation, Load | Unload) and self.mode != EXPLICIT:
            raise FailedPrecondition(
                "models are loaded and unloaded by the server itself (--model-control-mode "
                "poll: it follows the repository); start it with --model-control-mode "
                "explicit to load and unload through the API"
            )
        await self._control.acquire()
        steps: list[Step] = []
        try:
            steps = await self._prepare(operation)
        except BaseException:
            for step in steps:
                await self._drop(step)
            self._control.release()
            raise
        return Plan(steps, self._state_after(steps))

    async def commit(self, plan: Plan) -> list[Change]:
        """Make a prepared plan what requests see, then drain what left. Releases the lock."""
        try:
            changes = [await self._commit(step) for step in plan.steps]
        finally:
            self._control.release()
        return [c for c in changes if c.loaded or c.unloaded]

    async def abort(self, plan: Plan) -> None:
        """Forget a prepared plan (nothing requests see changed). Releases the lock."""
        try:
            for step in plan.steps:
                await self._drop(step)
        finally:
            self._control.release()

    async def stop(self) -> None:
        """Drain and stop every version (after the transports stopped)."""
        async with self._control:
            for name in list(self._routes):
                await self._commit(self._unload_step(name), quiet=True)

    def state(self) -> dict[str, dict[str, Any]]:
        """What is served now, as :class:`Plan` states describe it (comparable, JSON-able)."""
        return {name: route.state() for name, route in sorted(self._routes.items())}

    async def _prepare(self, operation: Operation) -> list[Step]:
        if isinstance(operation, Poll):
            names = await asyncio.to_thread(self.view.scan_models)  # ModelLoadError: unlistable
            steps = [await self._prepare_model(name) for name in names]
            for name in [n for n in self._routes if n not in names]:
                logger.warning("model %r left the repository: unloading it", name)
                steps.append(self._unload_step(name))
            return steps
        if isinstance(operation, Load):
            on_disk = await asyncio.to_thread(self.view.models_on_disk)
            if operation.name not in on_disk:
                raise VersionNotFound(
                    f"no model {operation.name[:64]!r} in the repository (models: "
                    f"{', '.join(on_disk) or 'none'})"
                )
            return [
                await self._prepare_model(
                    operation.name, config_text=operation.config_text, strict=True
                )
            ]
        if isinstance(operation, Unload):
            if operation.name not in self._routes and operation.name not in await asyncio.to_thread(
                self.view.models_on_disk
            ):
                raise VersionNotFound(
                    f"no model {operation.name[:64]!r} is loaded or in the repository"
                )
            return [self._unload_step(operation.name)]
        # Sync: serve exactly ``operation.state`` (a worker joining its peers), knowing what
        # they refused.
        for name in self.view.adopt_records(operation.records):
            self.metrics.model_seen(name)
        steps = []
        for name, wanted in operation.state.items():
            config = ServingConfig.from_state(wanted["config"])
            versions = [int(v) for v in wanted["versions"]]
            step = await self._prepare_model(name, config=config, exact=versions, strict=True)
            steps.append(step)
        for name in [n for n in self._routes if n not in operation.state]:
            steps.append(self._unload_step(name))
        return steps

    def _unload_step(self, name: str) -> Step:
        route = self._routes.get(name)
        leaving = list(route.versions.values()) if route else []
        return Step(name, None, {}, leaving, unchanged=route is None)

    async def _commit(self, step: Step, *, quiet: bool = False) -> Change:
        name = step.name
        if step.unchanged:
            return Change(name)
        current = self._routes.get(name)
        if step.route is None:
            self._routes = {n: r for n, r in self._routes.items() if n != name}
            self.metrics.forget_model(name)
            if not quiet and current is not None:
                logger.info("unloading model %r (%s)", name, current.describe())
        else:
            self._routes = {**self._routes, name: step.route}
            self.metrics.set_served(name, step.route.version_numbers, dict(step.route.labels))
            logger.info(
                "model %r serves %s%s",
                name,
                step.route.describe(),
                f" (unloading {', '.join(str(s.version) for s in step.leaving)})"
                if step.leaving
                else "",
            )
        for served in step.leaving:
            await self._free(served)
        return Change(
            name, tuple(sorted(step.entering)), tuple(sorted(s.version for s in step.leaving))
        )

    async def _drop(self, step: Step) -> None:
        for served in step.entering.values():  # never routed: nothing to drain but the batcher
            await self._free(served)

    def _state_after(self, steps: list[Step]) -> dict[str, dict[str, Any]]:
        routes = dict(self._routes)
        for step in steps:
            if step.route is None:
                routes.pop(step.name, None)
            else:
                routes[step.name] = step.route
        return {name: route.state() for name, route in sorted(routes.items())}

    # -- preparing one model ----------------------------------------------------------------

    async def _prepare_model(
        self,
        name: str,
        *,
        config_text: str | None = None,
        config: ServingConfig | None = None,
        exact: list[int] | None = None,
        strict: bool = False,
    ) -> Step:
        """What ``name`` should serve per its config and the disk; see the module docstring.

        ``config``/``exact``: serve exactly these versions under this config (a sync).
        ``strict`` (an explicit load, a sync): a refusal raises LoadRefused instead of being
        logged, and holds nothing.
        """
        record = self.view.records.get(name)
        if record is None:
            record = self.view.records[name] = ModelRecord(name)
            self.metrics.model_seen(name)
        current = self._routes.get(name)
        unchanged = Step(name, current, {}, [], unchanged=True)
        try:
            # The config before the versions: publishers rename a version into place before
            # any label names it, so a config read first names only versions the scan then
            # sees (read after, it could name one published in between: a false refusal).
            if config is None:
                config = await asyncio.to_thread(self.view.read_config, record, config_text)
            on_disk = await asyncio.to_thread(self.view.scan_versions, record)
        except ModelLoadError as exc:
            self._refuse(record, str(exc), strict, config=True)
            return unchanged
        loaded: dict[int, ServedVersion] = dict(current.versions) if current else {}
        # A loaded version whose files changed on disk is loaded again (a reload); if the
        # new files fail, the policy treats it as refused, like any invalid version.
        stale = await asyncio.to_thread(self._stale, record.name, loaded, on_disk)
        polled = exact is None and not strict  # a poll, which comes back every interval
        if polled and record.held_back is not None and not stale:
            if record.held_back == await self._held_back(record, config, on_disk):
                return unchanged  # refused as it stands: loading it all again changes nothing
        entering: dict[int, ServedVersion] = {}
        gone: set[int] = set()  # removed from disk since the scan
        while True:  # a version that fails to load makes the policy look again, lower
            valid = [v for v in on_disk if v not in record.refused and v not in gone]
            if exact is not None:
                wanted = [v for v in exact if v in valid]
            else:
                wanted = config.policy.choose(valid)
            missing = [
                v for v in reversed(wanted) if (v not in loaded or v in stale) and v not in entering
            ]
            if not missing:
                break
            for version in missing:
                served = await self._load_version(record, version)
                if served is not None:
                    entering[version] = served
                elif version not in record.refused:
                    gone.add(version)
        chosen = {v: entering.get(v) or loaded[v] for v in wanted}
        problem = ""
        if exact is not None and sorted(chosen) != sorted(exact):
            loads = f"only {sorted(chosen)} load" if chosen else "none of them loads"
            problem = f"cannot serve versions {exact}: {loads}"
        elif not chosen:
            problem = nothing_chosen(on_disk, sorted(record.refused), config)
        else:
            try:
                config.check_labels(sorted(chosen))
            except ConfigRefused as exc:
                problem = str(exc)
        if problem:
            for served in entering.values():
                await self._free(served)
            self._refuse(record, problem, strict, config=bool(chosen))
            if polled:
                record.held_back = await self._held_back(record, config, on_disk)
            return unchanged
        default = config.default_version(sorted(chosen)) or max(chosen)
        leaving = [served for v, served in loaded.items() if chosen.get(v) is not served]
        record.problem = ""
        record.held_back = None
        if (
            current is not None
            and not entering
            and not leaving
            and current.config == config
            and current.default == default
        ):
            return unchanged
        route = Route(name, chosen, dict(config.labels), default, config)
        return Step(name, route, entering, leaving, unchanged=False)

    def _stale(
        self, name: str, loaded: Mapping[int, ServedVersion], on_disk: list[int]
    ) -> set[int]:
        return {
            v
            for v, served in loaded.items()
            if v in on_disk and version_fingerprint(self.repo, v, name) != served.fingerprint
        }

    async def _held_back(
        self, record: ModelRecord, config: ServingConfig, on_disk: list[int]
    ) -> tuple[object, ...]:
        """What a refused poll's outcome depends on: the config, the versions on disk and
        their files, and which of them are refused."""
        files = await asyncio.to_thread(
            lambda: tuple(version_fingerprint(self.repo, v, record.name) for v in on_disk)
        )
        return (config, tuple(on_disk), files, tuple(sorted(record.refused.items())))

    def _refuse(self, record: ModelRecord, problem: str, strict: bool, *, config: bool) -> None:
        """Nothing changes for ``record``'s model; say why (once per distinct reason)."""
        served = self._routes.get(record.name)
        still = f"still serving {served.describe()}" if served else "not served"
        if problem != record.problem:
            logger.error("model %r: %s (%s)", record.name, problem, still)
            if config:
                self.metrics.count_load(record.name, "refused")
        record.problem = problem
        if strict:
            raise LoadRefused(f"model {record.name!r}: {self.view.relative(problem)} ({still})")

    async def _free(self, served: ServedVersion) -> None:
        """Out of every route already: drain, stop, and drop its series."""
        await served.drain()
        self.metrics.forget_version(served.metrics, served.model)

    async def _load_version(self, record: ModelRecord, version: int) -> ServedVersion | None:
        """Load, check and warm ``version`` (in a thread) and start its batcher; None if refused."""
        fingerprint = await asyncio.to_thread(version_fingerprint, self.repo, version, record.name)
        try:
            model = await asyncio.to_thread(self._load_blocking, record.name, version)
        except VersionNotFound:
            return None  # removed since the scan
        except ConfigError:
            raise  # the server's settings (e.g. --device cuda without CUDA), not the version's
        except ServingError as exc:
            record.refused[version] = fingerprint
            self.metrics.count_load(record.name, "refused")
            logger.error("refusing model %r version %d: %s", record.name, version, exc)
            return None
        record.refused.pop(version, None)
        self.metrics.count_load(record.name, "loaded")
        b = self._batching
        served = ServedVersion(
            model,
            self.metrics.version(model),
            max_batch_size=b.max_batch_size,
            max_wait_s=b.max_wait_s,
            max_queue=b.max_queue,
            concurrency=b.concurrency,
        )
        served.fingerprint = fingerprint
        await served.start()
        logger.info(
            "loaded model %r version %d on %s (%d threads%s)",
            record.name,
            version,
            model.provider,
            model.threads,
            model.small_batch_note,
        )
        return served

    def _load_blocking(self, name: str, version: int) -> LoadedModel:
        try:
            model = self._load(read_version(self.repo, version, name, variant=self.variant))
            model.warm_up(self._warm_sizes)
        except ServingError:
            raise
        except Exception as exc:
            logger.error(
                "loading model %r version %d failed unexpectedly", name, version, exc_info=True
            )
            raise ModelLoadError(
                f"version {version}: unexpected {type(exc).__name__} while loading "
                "(traceback logged)"
            ) from exc
        return model
