"""An MLServer runtime for the FP32 model: onnxruntime inside MLServer's ``MLModel``.

Loaded by MLServer itself (inside ``.venv-mlserver``) from the work folder that
:mod:`bench.peers.servers` writes, as the model settings' ``implementation``. MLServer's
adaptive batching (``max_batch_size`` / ``max_batch_time`` in model-settings.json) merges
requests before :meth:`predict`, which sees one batched request.

The tensor names come from the graph and the model name from the model settings (which
:mod:`bench.peers.servers` writes from ``server.contract``): MLServer imports this file
from its work folder, on its own interpreter, where the project is not importable.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class FashionOnnx(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        extra = self.settings.parameters.extra if self.settings.parameters else None
        options.intra_op_num_threads = int((extra or {}).get("threads", 2))
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = await get_model_uri(self.settings)
        self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        images = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        (probabilities,) = self._session.run([self._output], {self._input: images})
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output(self._output, probabilities)],
        )
