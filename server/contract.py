"""The model contract: what training exports, the server serves and every client sends.

One dependency-free module (standard library only), imported by the server, the
training job's exporter, the client, the benchmarks (including the peers' model
surgery) and the soak tool, so none of them keeps its own copy of a tensor name,
a shape, a datatype or a repository file name.

* The graph: ``images`` uint8 ``[batch, 28, 28]`` (raw pixels; the x1/255 scaling
  lives inside the graph) -> ``probabilities`` float32 ``[batch, 10]``.
* The Open Inference Protocol's names for those types (``UINT8``, ``FP32``; a client
  may also send FP32 pixels already divided by 255) and the platform string Triton's
  tools expect of an ONNX model.
* The repository layout: ``<repo>/<model>/<version>/{model.onnx,metadata.json}`` and
  the per-model ``<repo>/<model>/config.json``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The model name the training job publishes under and clients ask for by default.
MODEL_NAME = "fashion"
# What a model name may be: a directory of the repository and a path segment of the HTTP
# API, so ASCII letters, digits, "_", "." and "-", starting with a letter or digit (never
# "." or "..", never hidden like the publisher's staging directories), 1 to 64 characters.
MODEL_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"

INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
IMAGE_SHAPE = (28, 28)
IMAGE_BYTES = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
NUM_CLASSES = 10
# The largest encoded (PNG/JPEG) image the Predict API accepts. A real 28x28 PNG or JPEG is
# a few hundred bytes, a few KiB with an ICC profile or EXIF; 64 KiB leaves room for any
# honest file and bounds what a crafted one costs (server/codec.py; fashion-predict checks
# it before sending).
MAX_ENCODED_BYTES = 64 * 1024
# The exporter's name for the variable first dimension of both tensors.
BATCH_DIM = "batch"

# numpy / onnxruntime element type names of the two tensors.
INPUT_DTYPE = "uint8"
OUTPUT_DTYPE = "float32"

# The Open Inference Protocol's datatype for each element type this model uses, and back.
OIP_DATATYPE = {"uint8": "UINT8", "float32": "FP32"}
NUMPY_DTYPE = {oip: numpy for numpy, oip in OIP_DATATYPE.items()}
# Bytes per element of each Open Inference Protocol datatype accepted for ``images``.
OIP_ITEM_BYTES = {"UINT8": 1, "FP32": 4}
INPUT_DATATYPE = OIP_DATATYPE[INPUT_DTYPE]  # "UINT8"
OUTPUT_DATATYPE = OIP_DATATYPE[OUTPUT_DTYPE]  # "FP32"

# What Triton calls an ONNX model served by its onnxruntime backend.
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"

# Repository file names.
MODEL_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
# The per-model serving configuration (version policy, labels), beside the versions.
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the graph. ``-1`` in ``shape`` is the variable batch dimension."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def datatype(self) -> str:
        """The Open Inference Protocol's name of :attr:`dtype` (``UINT8``, ``FP32``)."""
        return OIP_DATATYPE[self.dtype]


def is_model_name(text: str) -> bool:
    """Whether ``text`` is a valid model name (:data:`MODEL_NAME_PATTERN`, ASCII only)."""
    return re.fullmatch(MODEL_NAME_PATTERN, text, re.ASCII) is not None


INPUT_SPEC = TensorSpec(INPUT_NAME, INPUT_DTYPE, (-1, *IMAGE_SHAPE))
OUTPUT_SPEC = TensorSpec(OUTPUT_NAME, OUTPUT_DTYPE, (-1, NUM_CLASSES))
