"""The FP32 model a Triton or MLServer user would serve: our ONNX file minus its preprocessing.

Our published graph takes raw ``uint8 [batch, 28, 28]`` and starts with Cast -> x1/255 ->
channel axis; the Keras model underneath takes ``float32 [batch, 28, 28, 1]`` in [0, 1].
A ready-made server is given that Keras input (what ``tf2onnx`` makes of a plain Keras CNN),
so :func:`strip_preprocessing` cuts the leading chain off and makes the tensor after it the
graph's input. :func:`check_parity` proves on real test images that the two files answer the
same. Benchmark tooling only: the server never edits graphs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from server.contract import IMAGE_SHAPE, INPUT_DTYPE, INPUT_NAME, OUTPUT_NAME

# The ops of the in-graph preprocessing, in the order the exporter writes them.
PREPROCESSING_OPS = ("Cast", "Mul", "Div", "Unsqueeze")
# The ONNX element type of the raw pixels our graph takes (what the chain casts from).
RAW_PIXELS = helper.np_dtype_to_tensor_dtype(np.dtype(INPUT_DTYPE))


class SurgeryError(Exception):
    """The graph does not start with the preprocessing chain this module knows how to cut."""


def _consumers(graph: onnx.GraphProto, tensor: str) -> list[onnx.NodeProto]:
    return [n for n in graph.node if tensor in n.input]


def strip_preprocessing(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose input is the float tensor after Cast/scale/channel-axis."""
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    graph = stripped.graph
    if len(graph.input) != 1:
        raise SurgeryError(f"expected one graph input, found {len(graph.input)}")
    original = graph.input[0]
    if original.type.tensor_type.elem_type != RAW_PIXELS:
        raise SurgeryError(f"input {original.name!r} is not {INPUT_DTYPE}: nothing to strip")
    chain: list[onnx.NodeProto] = []
    tensor = original.name
    while True:
        users = _consumers(graph, tensor)
        if len(users) != 1 or users[0].op_type not in PREPROCESSING_OPS:
            break
        chain.append(users[0])
        tensor = users[0].output[0]
    ops = [n.op_type for n in chain]
    if not chain or ops[0] != "Cast" or not {"Mul", "Div"} & set(ops):
        raise SurgeryError(f"the graph does not start with Cast and a scale (found {ops})")
    batch = original.type.tensor_type.shape.dim[0]
    dims = [batch.dim_param or batch.dim_value, *IMAGE_SHAPE]
    if ops[-1] == "Unsqueeze":
        dims.append(1)  # the Keras model's channel axis (NHWC)
    for node in chain:
        graph.node.remove(node)
    for node in graph.node:  # the first kept op now reads the new input
        for k, name in enumerate(node.input):
            if name == tensor:
                node.input[k] = INPUT_NAME
    graph.input.remove(original)
    graph.input.append(helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, dims))
    # Initialisers used only by the cut ops (the 1/255 constant, the axes) go too.
    used = {name for n in graph.node for name in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    shown = ", ".join(str(d) for d in dims)
    stripped.doc_string = f"Fashion-MNIST classifier; float32 [{shown}] in [0, 1]"
    onnx.checker.check_model(stripped)
    return stripped


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28] -> what the stripped model takes (as training did it)."""
    return (images.astype(np.float32) / np.float32(255.0))[..., np.newaxis]


@dataclass(frozen=True)
class Parity:
    images: int
    max_abs_diff: float
    argmax_mismatches: int

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= 1e-5 and self.argmax_mismatches == 0


def check_parity(original: Path, stripped: Path, images: np.ndarray) -> Parity:
    """Both files on the same images (uint8 for ours, scaled float for the stripped one)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    ours = ort.InferenceSession(str(original), options, providers=["CPUExecutionProvider"])
    theirs = ort.InferenceSession(str(stripped), options, providers=["CPUExecutionProvider"])
    diffs, mismatches = [], 0
    for start in range(0, len(images), 1000):
        chunk = images[start : start + 1000]
        (a,) = ours.run([OUTPUT_NAME], {ours.get_inputs()[0].name: chunk})
        (b,) = theirs.run([OUTPUT_NAME], {INPUT_NAME: to_float(chunk)})
        diffs.append(float(np.abs(a - b).max()))
        mismatches += int((a.argmax(1) != b.argmax(1)).sum())
    return Parity(len(images), max(diffs), mismatches)


def write_fp32_model(original: Path, out: Path) -> Path:
    """Strip ``original`` into ``out`` (a .onnx path) and return it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(strip_preprocessing(onnx.load(str(original))), str(out))
    return out
