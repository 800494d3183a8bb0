"""Which model version is served: the first load, and atomic swaps to newer versions.

The batcher calls :meth:`ModelManager.run` from an executor thread. It reads
``self._current`` once per batch, so a whole batch runs on one version and a
swap (a single attribute assignment) never splits or fails a batch: batches
already running finish on the old version, the next ones use the new one.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from server.errors import ConfigError, ModelLoadError, ServingError, VersionNotFound
from server.metrics import Metrics
from server.model import LoadedModel
from server.repository import (
    ModelVersion,
    list_versions,
    model_dir,
    read_version,
    scan_versions,
    version_fingerprint,
)

logger = logging.getLogger(__name__)

# Batch sizes run once before a version is reported ready: the first request of
# each size otherwise pays onnxruntime's allocation cost.
WARM_UP_BATCHES = (1, 8, 32, 64)


# How a version's checked files become a servable model (blocking; runs off the event loop).
ModelLoader = Callable[[ModelVersion], LoadedModel]


def onnxruntime_loader(device: str, threads: int) -> ModelLoader:
    """The server's loader: an onnxruntime session on ``device`` with ``threads`` threads."""
    return functools.partial(LoadedModel, device=device, threads=threads)


class ModelManager:
    def __init__(
        self,
        repo: Path,
        *,
        load: ModelLoader,
        pinned_version: int = 0,
        variant: str = "float",
        metrics: Metrics,
        max_batch_size: int = 64,
    ) -> None:
        self.repo = Path(repo)
        self.pinned_version = pinned_version
        self.variant = variant
        self._load = load
        self.metrics = metrics
        self._warm_sizes = tuple(
            sorted({1, *(n for n in WARM_UP_BATCHES if n < max_batch_size), max_batch_size})
        )
        self._current: LoadedModel | None = None
        self._refused: dict[int, tuple[int, ...]] = {}
        self._reported_names: set[str] = set()
        self._lock = threading.Lock()  # one load at a time

    @property
    def current(self) -> LoadedModel:
        """The served model. Only once :attr:`loaded` (the data plane asks first)."""
        model = self._current
        if model is None:
            raise RuntimeError("no model is installed yet")
        return model

    @property
    def loaded(self) -> bool:
        return self._current is not None

    def run(self, images: np.ndarray) -> tuple[np.ndarray, LoadedModel]:
        """The batcher's predict function (executor thread); batches start after install()."""
        model = self.current
        probabilities = model.predict(images)
        self.metrics.count_predictions(probabilities)
        return probabilities, model

    def install(self, model: LoadedModel) -> None:
        """Serve ``model`` from the next batch on."""
        previous = self._current
        self._current = model
        self.metrics.set_class_names(model.class_names)
        self.metrics.set_model(model.version, model.provider, model.architecture, model.variant)
        logger.info(
            "serving %s version %d on %s (%d threads%s)%s",
            self.repo,
            model.version,
            model.provider,
            model.threads,
            model.single_thread_note,
            f", replacing version {previous.version}" if previous else "",
        )

    def load_version(self, version: int) -> LoadedModel:
        """Load, verify and warm one version (blocking: call from a thread).

        Any failure is a refusal (counted) raised as a ServingError: a corrupt
        version must never take the scan, or the server, down with it.
        """
        with self._lock:
            try:
                model = self._load(read_version(self.repo, version, variant=self.variant))
                model.warm_up(self._warm_sizes)
            except (VersionNotFound, ConfigError):
                raise  # nothing there to refuse, or not this version's fault
            except ServingError:
                self.metrics.model_loads.labels("refused").inc()
                raise
            except Exception as exc:
                self.metrics.model_loads.labels("refused").inc()
                logger.error("loading model version %d failed unexpectedly", version, exc_info=True)
                raise ModelLoadError(
                    f"version {version}: unexpected {type(exc).__name__} while loading "
                    "(traceback logged)"
                ) from exc
            self.metrics.model_loads.labels("loaded").inc()
            return model

    def load_initial(self) -> LoadedModel | None:
        """Install the pinned version, or the newest valid one; None when there is none (yet).

        Unpinned, an invalid newest version is refused (as on a reload) and the
        next lower one is tried. Why nothing could be installed is in the log and
        in :meth:`refused_versions`.
        """
        if not self.pinned_version:
            return self.check_for_update()
        if self.pinned_version not in self.scan():
            return None
        model = self._try(self.pinned_version)
        if model is not None:
            self.install(model)
        return model

    def check_for_update(self) -> LoadedModel | None:
        """Load and install the newest valid version above the current one (blocking).

        An invalid version (no metadata, checksum mismatch, unloadable ONNX, wrong
        signature, anything else that fails) is refused: logged, counted, and
        remembered with its files' fingerprint so it is not reloaded on every poll
        (it is retried if the files change); the scan moves on to lower versions.
        The current version keeps serving. A ConfigError (e.g. ``--device cuda``
        without CUDA) is not the version's fault and propagates.
        """
        if self.pinned_version:
            return None
        current = self._current.version if self._current else 0
        for version in reversed([v for v in self.scan() if v > current]):
            model = self._try(version)
            if model is not None:
                self.install(model)
                return model
        return None

    def _try(self, version: int) -> LoadedModel | None:
        """Load ``version`` unless it was refused with these very files; refuse it on failure."""
        fingerprint = version_fingerprint(self.repo, version)
        if self._refused.get(version) == fingerprint:
            return None
        try:
            model = self.load_version(version)
        except VersionNotFound:
            return None  # removed since the scan
        except ConfigError:
            raise
        except ServingError as exc:
            self._refused[version] = fingerprint
            logger.error(
                "refusing model version %d (still serving %s): %s",
                version,
                self._current.version if self._current else "none",
                exc,
            )
            return None
        self._refused.pop(version, None)  # mended since it was refused
        return model

    def scan(self) -> list[int]:
        """Version numbers on disk; each name that is not a version is logged once."""
        scan = scan_versions(self.repo)
        for name in scan.ignored:
            if name not in self._reported_names:
                logger.warning(
                    "ignoring %r in %s: not a version (a version is a directory named by an "
                    "ASCII number from 1 to 2^63-1, without leading zeros)",
                    name,
                    model_dir(self.repo),
                )
        # Forget names that went away, so one that comes back is reported again.
        self._reported_names = set(scan.ignored)
        # A refused version that was deleted is no longer refused (RepositoryIndex, errors).
        self._refused = {v: f for v, f in self._refused.items() if v in scan.versions}
        return scan.versions

    def refused_versions(self) -> list[int]:
        """Versions refused so far (and not changed since), ascending."""
        return sorted(self._refused)

    def versions_on_disk(self) -> list[int]:
        return list_versions(self.repo)

    def resolve(self, requested: int, model: LoadedModel) -> LoadedModel:
        """``model`` (the served one) if ``requested`` is 0 or its version, else NOT_FOUND."""
        if requested and requested != model.version:
            try:
                on_disk = requested in list_versions(self.repo)
            except ModelLoadError:  # an unreadable repository: the answer is still NOT_FOUND
                on_disk = False
            where = "exists in the repository but is not" if on_disk else "is not"
            raise VersionNotFound(
                f"model version {requested} {where} served; this server serves version "
                f"{model.version} (send 0 for the served version)"
            )
        return model

    @staticmethod
    def confirm(requested: int, model: LoadedModel) -> None:
        """After inference: a request pinned to a version must not be answered by another."""
        if requested and model.version != requested:
            raise VersionNotFound(
                f"model version {requested} was replaced by version {model.version} while the "
                "request was queued; retry"
            )
