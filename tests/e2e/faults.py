"""A real model whose predict a test can hold, break or make return a bad answer.

Given to the server through its loader seam (``create_app(settings, loader=...)``),
so no test patches the server's classes. Faults are off until a test switches one
on: loading and warm-up run the real model.
"""

from __future__ import annotations

import threading

import numpy as np

from server.model import LoadedModel
from server.repository import ModelVersion


class Faults:
    """What the models loaded through :meth:`load` do on predict (shared by all of them)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self._mode: str | None = None
        self._message = ""
        self._only: tuple[str, int] | None = None  # (model, version) the fault applies to

    def only(self, model: str, version: int) -> Faults:
        """Apply the next fault to that model version alone (the others run normally)."""
        self._only = (model, version)
        return self

    def applies_to(self, model: LoadedModel) -> bool:
        return self._only is None or self._only == (model.name, model.version)

    def load(self, version: ModelVersion) -> LoadedModel:
        return FaultyModel(version, self)

    def hold(self) -> None:
        """Every predict waits for :attr:`release` (and sets :attr:`entered` first)."""
        self._mode = "hold"

    def fail(self, message: str) -> None:
        """Every predict raises RuntimeError(message): a bug inside the model call."""
        self._mode, self._message = "fail", message

    def extra_class(self) -> None:
        """Every predict returns an 11th column that wins the argmax: a broken contract that
        only the response encoder trips over (there is no class name for label 10)."""
        self._mode = "extra_class"

    def clear(self) -> None:
        self._mode = None
        self._only = None
        self.release.set()


class FaultyModel(LoadedModel):
    def __init__(self, version: ModelVersion, faults: Faults) -> None:
        super().__init__(version)
        self._faults = faults

    def warm_up(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        super().warm_up(batch_sizes)
        # Every batch in the inference thread: a held predict stands for a slow model, and a
        # slow model is timed out of the event loop (server.model.INLINE_MAX_S); held on the
        # loop, it would stop the test's own client too.
        self.inline_max_images = 0

    def predict(self, images: np.ndarray) -> np.ndarray:
        faults = self._faults
        mode = faults._mode if faults.applies_to(self) else None
        if mode == "hold":
            faults.entered.set()
            assert faults.release.wait(10), "a held predict was never released"
        elif mode == "fail":
            raise RuntimeError(faults._message)
        probabilities = super().predict(images)
        if mode == "extra_class":
            extra = np.full((len(probabilities), 1), 2.0, np.float32)
            probabilities = np.concatenate([probabilities, extra], axis=1)
        return probabilities
