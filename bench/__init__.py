"""``fashion-bench``: closed-loop gRPC load generator, in-process onnxruntime limit, report."""
