"""Serve the FP32 model with PyTriton: Triton's core, gRPC front end and dynamic batcher,
with a Python callable running onnxruntime (run inside ``.venv-pytriton``, not ours).

    .venv-pytriton/bin/python bench/peers/pytriton_serve.py MODEL.onnx --model-name N ...

The tensor names and shapes are read from the graph and the model name is given on the
command line: this runs on the peer's own interpreter, where the project (and so
``server.contract``) is not installed, and ``bench.peers.servers`` passes the contract's name.

Prints ``peer-pytriton: serving on port P metrics -1`` once Triton reports the model
ready; SIGTERM stops Triton (its ``tritonserver`` child included) and exits 0.
"""

from __future__ import annotations

import argparse
import signal
import threading

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

READY_MARK = "peer-pytriton: serving on port "


def _per_request(tensor: ort.NodeArg) -> Tensor:
    """An FP32 graph tensor as PyTriton declares it: without its batch dimension."""
    return Tensor(name=tensor.name, dtype=np.float32, shape=tuple(tensor.shape[1:]))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model", help="the FP32 ONNX file (float32 [batch, 28, 28, 1])")
    p.add_argument("--model-name", required=True, help="the name clients ask for")
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--metrics-port", type=int, required=True)
    p.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--max-queue-delay-us", type=int, default=0)
    args = p.parse_args()

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    (graph_input,), (graph_output,) = session.get_inputs(), session.get_outputs()

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        (probabilities,) = session.run([graph_output.name], inputs)
        return {graph_output.name: probabilities}

    config = TritonConfig(
        grpc_address="127.0.0.1",
        http_address="127.0.0.1",
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        log_verbose=0,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    # PyTriton guards "statistics" with a token by default; perf_analyzer reads it (loopback
    # only here), so it is left open. The other guarded endpoints stay guarded.
    security = TritonSecurityConfig(
        restricted_endpoints=["shared-memory", "model-repository", "trace", "logging"]
    )
    with Triton(config=config, security_config=security) as triton:
        triton.bind(
            model_name=args.model_name,
            infer_func=infer,
            inputs=[_per_request(graph_input)],
            outputs=[_per_request(graph_output)],
            config=ModelConfig(
                max_batch_size=args.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us),
            ),
            strict=True,
        )
        triton.run()  # returns once the model is loaded and ready
        print(f"{READY_MARK}{args.grpc_port} metrics -1", flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
