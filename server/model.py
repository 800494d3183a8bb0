"""One loaded model version: an onnxruntime session, its signature, warm-up and predict().

Synchronous on purpose: the batcher calls :meth:`LoadedModel.predict` from an
executor thread (``session.run`` releases the GIL), never on the event loop.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

# No egress: onnxruntime >= 1.29 starts its 1DS telemetry (uploads, a device ID written
# under $HOME) when it is IMPORTED, and reads this switch only then; calling
# disable_telemetry_events() afterwards cannot undo that. setdefault: an explicit value wins.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
import onnxruntime as ort

from server.cgroup import available_cpus
from server.contract import (
    IMAGE_SHAPE,
    INPUT_NAME,
    INPUT_SPEC,
    NUM_CLASSES,
    OUTPUT_NAME,
    OUTPUT_SPEC,
    TensorSpec,
)
from server.errors import ConfigError, ModelLoadError
from server.repository import ModelVersion

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
_ORT_DTYPES = {"tensor(uint8)": "uint8", "tensor(float)": "float32"}
# Batches of at most this many images run on a one-thread session. Below ~5 images a
# convolution split over intra-op threads costs more CPU (waking and joining the pool on
# every layer) than it saves in wall time, and on a busy server that CPU is taken from the
# event loop (the A/B and its figures: docs/PERFORMANCE.md, "The unary path at 1 image x 32").
# Bigger batches keep every thread.
SINGLE_THREAD_MAX_IMAGES = 4
# A batch of at most SINGLE_THREAD_MAX_IMAGES runs on the event loop (server.batcher) when
# the one-thread session computes it within this long: handing it to the inference thread
# and back costs ~0.25 ms of CPU here, more than a 1-image batch's ~0.17 ms, and a model
# this fast holds the loop no longer than a few requests' own work does.
INLINE_MAX_S = 0.001


def _session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or available_cpus()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads burn CPU while idle for no throughput gain (docs/PERFORMANCE.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def _providers(device: str) -> list[Any]:
    if device == "cpu":
        return [CPU]
    # HEURISTIC: EXHAUSTIVE re-benchmarks cuDNN for every new batch size (0.3-1.3 s each).
    return [(CUDA, {"cudnn_conv_algo_search": "HEURISTIC"}), CPU]


def create_session(path: Path, device: str, threads: int) -> ort.InferenceSession:
    """Create the session and make sure it runs where it was asked to.

    onnxruntime never raises when CUDA is unavailable; it silently falls back to
    CPU. The only reliable check is the provider list of the created session.
    """
    if device == "cuda" and CUDA not in ort.get_available_providers():
        raise ConfigError(
            f"--device cuda: this onnxruntime build has no {CUDA} "
            f"(available: {', '.join(ort.get_available_providers())}); install the 'gpu' extra "
            "(onnxruntime-gpu) instead of onnxruntime, or use --device cpu/auto"
        )
    if device != "cpu" and CUDA in ort.get_available_providers() and hasattr(ort, "preload_dlls"):
        # onnxruntime-gpu's [cuda,cudnn] extras ship the CUDA/cuDNN libraries as wheels;
        # this puts them on the loader path before the CUDA provider looks for them.
        ort.preload_dlls()
    # Also stops telemetry events where onnxruntime was imported before this module.
    ort.disable_telemetry_events()
    try:
        session = ort.InferenceSession(
            str(path), sess_options=_session_options(threads), providers=_providers(device)
        )
    except Exception as exc:  # onnxruntime raises several unrelated types
        raise ModelLoadError(f"onnxruntime cannot load {path}: {exc}") from exc
    active = session.get_providers()[0]
    if device == "cuda" and active != CUDA:
        raise ConfigError(
            f"--device cuda: the session runs on {active}, not {CUDA} "
            "(no CUDA device, or CUDA/cuDNN "
            "libraries not found); refusing to fall back silently. Use --device auto to allow CPU"
        )
    if device == "auto":
        logger.info("--device auto: running on %s", active)
    return session


def _spec(arg: Any) -> TensorSpec:
    dtype = _ORT_DTYPES.get(arg.type, arg.type)
    shape = tuple(d if isinstance(d, int) else -1 for d in arg.shape)
    return TensorSpec(arg.name, dtype, shape)


def check_signature(session: ort.InferenceSession) -> tuple[TensorSpec, TensorSpec]:
    """The server's contract with training: uint8 images [-1,28,28] -> float32 [-1,10]."""
    inputs = [_spec(i) for i in session.get_inputs()]
    outputs = [_spec(o) for o in session.get_outputs()]
    expected_in, expected_out = INPUT_SPEC, OUTPUT_SPEC
    if inputs != [expected_in] or expected_out not in outputs:
        raise ModelLoadError(
            f"model signature is inputs={inputs} outputs={outputs}; expected one input "
            f"{expected_in} and an output {expected_out}"
        )
    return expected_in, expected_out


class LoadedModel:
    """A model version ready to run: verified, signature-checked and warmed up."""

    def __init__(self, version: ModelVersion, *, device: str = "cpu", threads: int = 0) -> None:
        self.name = version.model
        self.version = version.version
        self.metadata = version.metadata
        self.model_sha256 = version.model_sha256
        self.variant = version.variant
        self._session = create_session(version.model_path, device, threads)
        self.input_spec, self.output_spec = check_signature(self._session)
        self.provider: str = self._session.get_providers()[0]
        self.class_names = self._class_names()
        self.threads = self._session.get_session_options().intra_op_num_threads
        # The same file on one thread, for small batches (CPU only: a GPU session has
        # no intra-op pool to wake). The same graph and kernels, so the same outputs.
        self._single = self._session
        # Batches of at most this many images run on the event loop (server.batcher); set
        # by warm_up() from the model's own speed.
        self.inline_max_images = 0
        if self.provider == CPU and self.threads > 1:
            self._single = create_session(version.model_path, device, 1)

    def _class_names(self) -> tuple[str, ...]:
        names = self.metadata.get("class_names")
        if names is None:
            raw = self._session.get_modelmeta().custom_metadata_map.get("class_names")
            names = json.loads(raw) if raw else None
        if not (isinstance(names, list) and len(names) == NUM_CLASSES):
            raise ModelLoadError(
                f"version {self.version}: expected {NUM_CLASSES} class names, got {names!r}"
            )
        return tuple(str(n) for n in names)

    @property
    def test_accuracy(self) -> float:
        value = self.metadata.get("test_accuracy")
        return float(value) if isinstance(value, int | float) else 0.0

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("architecture", ""))

    @property
    def small_batch_note(self) -> str:
        """For the log: which small batches run on the one-thread session, and on the event loop."""
        note = ""
        if self._single is not self._session:
            note = f"; batches of <= {SINGLE_THREAD_MAX_IMAGES} images on 1"
        if self.inline_max_images:
            note += f"; batches of <= {self.inline_max_images} images on the event loop"
        return note

    def predict(self, images: np.ndarray) -> np.ndarray:
        """uint8 [n, 28, 28] -> float32 [n, 10]. Thread-safe; releases the GIL."""
        session = self._single if len(images) <= SINGLE_THREAD_MAX_IMAGES else self._session
        (probabilities,) = session.run([OUTPUT_NAME], {INPUT_NAME: images})
        return np.asarray(probabilities)

    def warm_up(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Run every batch size once so the first real request pays no allocation cost.

        The one-thread session is also run at its largest batch, so its arena is sized.
        Then :attr:`inline_max_images` is set from the model's own speed.
        """
        largest_single = min(SINGLE_THREAD_MAX_IMAGES, max(batch_sizes))
        for n in sorted({*batch_sizes, largest_single}):
            out = self.predict(np.zeros((n, *IMAGE_SHAPE), dtype=np.uint8))
            if out.shape != (n, NUM_CLASSES) or not np.all(np.isfinite(out)):
                raise ModelLoadError(f"version {self.version}: warm-up output is {out.shape}")
        self.inline_max_images = self._inline_limit()

    def _inline_limit(self) -> int:
        """The largest batch of 1..SINGLE_THREAD_MAX_IMAGES images computed within
        :data:`INLINE_MAX_S` (the best of 3 runs each), so cheap enough for the event loop;
        0 on a GPU, whose run would hold the loop for the device's latency."""
        if self.provider != CPU:
            return 0
        limit = 0
        for n in range(1, SINGLE_THREAD_MAX_IMAGES + 1):
            images = np.zeros((n, *IMAGE_SHAPE), dtype=np.uint8)
            best = math.inf
            for _ in range(3):
                t0 = time.perf_counter()
                self.predict(images)
                best = min(best, time.perf_counter() - t0)
            if best > INLINE_MAX_S:
                break
            limit = n
        return limit
