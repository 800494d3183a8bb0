"""Triton's gRPC extensions: the server's state -> Triton's messages. Pure functions.

From the loaded model, the settings, the statistics and the repository to what
Triton's ``grpc_service.proto`` / ``model_config.proto`` say, so Triton's own
tools (tritonclient, perf_analyzer) work unchanged. The RPC adapters that call
these are in :mod:`server.triton`.
"""

from __future__ import annotations

from collections.abc import Iterable

from server._proto.inference import grpc_predict_v2_pb2 as oip
from server._proto.inference import model_config_pb2 as mc
from server.config import Settings
from server.contract import BACKEND, PLATFORM, TensorSpec
from server.model import CUDA, LoadedModel
from server.repository_view import IndexEntry
from server.routing import Route
from server.statistics import Duration, VersionStatistics

_DATA_TYPES: dict[str, mc.DataType] = {"uint8": mc.TYPE_UINT8, "float32": mc.TYPE_FP32}
READY = "READY"
UNAVAILABLE = "UNAVAILABLE"

# What ServerMetadata.extensions announces: exactly what this server implements, in
# Triton's names (perf_analyzer asks for server-side statistics only when "statistics"
# is listed; "model_repository" is the index with load and unload).
EXTENSIONS = ("model_configuration", "model_repository", "statistics")

# The declared Triton RPCs this server does not implement, and why (the client is told).
_NO_SHM = "shared memory is not supported; send the tensors in the request"
NOT_IMPLEMENTED = {
    "SystemSharedMemoryStatus": _NO_SHM,
    "SystemSharedMemoryRegister": _NO_SHM,
    "SystemSharedMemoryUnregister": _NO_SHM,
    "CudaSharedMemoryStatus": "CUDA " + _NO_SHM,
    "CudaSharedMemoryRegister": "CUDA " + _NO_SHM,
    "CudaSharedMemoryUnregister": "CUDA " + _NO_SHM,
    "TraceSetting": "tracing is configured at start-up: OpenTelemetry spans to an OTLP "
    "collector with --otlp-endpoint or the standard OTEL_* variables",
    "LogSettings": "logging is configured at start-up (--log-level, --log-format, --access-log)",
}


def not_implemented_message(method: str) -> str:
    return f"fashion-serve does not implement {method}: {NOT_IMPLEMENTED[method]}"


def _tensor(spec: TensorSpec) -> tuple[mc.DataType, list[int]]:
    """Triton data type and dims without the batch axis (max_batch_size > 0)."""
    return _DATA_TYPES[spec.dtype], list(spec.shape[1:])


def _version_policy(route: Route) -> mc.ModelVersionPolicy:
    policy = route.config.policy
    if policy.kind == "all":
        return mc.ModelVersionPolicy(all=mc.ModelVersionPolicy.All())
    if policy.kind == "specific":
        return mc.ModelVersionPolicy(
            specific=mc.ModelVersionPolicy.Specific(versions=list(policy.specific))
        )
    return mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=policy.latest))


def model_config(model: LoadedModel, route: Route, settings: Settings) -> mc.ModelConfig:
    """One loaded version's configuration, with its model's version policy and labels and
    the batcher's real settings (each version has its own batcher and queue).

    ``max_batch_size`` is the most images one request may carry (what Triton clients
    check a request against); the batcher flushes as soon as ``--max-batch-size``
    images are queued, which is Triton's preferred batch size.
    """
    in_type, in_dims = _tensor(model.input_spec)
    out_type, out_dims = _tensor(model.output_spec)
    gpu = model.provider == CUDA
    parameters = {
        "version": str(model.version),
        "architecture": model.architecture,
        "variant": model.variant,
        "model_sha256": model.model_sha256,
        "execution_provider": model.provider,
        "max_batch_size_images": str(settings.max_batch_size),
        "max_queue_images": str(settings.max_queue),
        "class_names": ",".join(model.class_names),
        "default_version": str(route.default),
        "labels": ",".join(f"{name}={v}" for name, v in sorted(route.labels.items())),
    }
    return mc.ModelConfig(
        name=model.name,
        platform=PLATFORM,
        backend=BACKEND,
        version_policy=_version_policy(route),
        max_batch_size=settings.max_images_per_request,
        input=[mc.ModelInput(name=model.input_spec.name, data_type=in_type, dims=in_dims)],
        output=[mc.ModelOutput(name=model.output_spec.name, data_type=out_type, dims=out_dims)],
        dynamic_batching=mc.ModelDynamicBatching(
            preferred_batch_size=[settings.max_batch_size],
            max_queue_delay_microseconds=round(settings.max_batch_delay_ms * 1000),
            # The queue is bounded in images: a full queue is refused at once.
            default_queue_policy=mc.ModelQueuePolicy(max_queue_size=settings.max_queue),
        ),
        instance_group=[
            mc.ModelInstanceGroup(
                name=model.name,
                kind=mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU,
                # Batches that run at the same time, each on the one shared session.
                count=settings.batch_concurrency,
                gpus=[0] if gpu else [],
            )
        ],
        parameters={k: mc.ModelParameter(string_value=v) for k, v in parameters.items()},
    )


def _duration(d: Duration) -> oip.StatisticDuration:
    return oip.StatisticDuration(count=d.count, ns=d.ns)


def model_statistics(stats: VersionStatistics) -> oip.ModelStatistics:
    return oip.ModelStatistics(
        name=stats.model,
        version=str(stats.version),
        last_inference=stats.last_inference_ms,
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
        inference_stats=oip.InferStatistics(
            success=_duration(stats.success),
            fail=_duration(stats.fail),
            queue=_duration(stats.queue),
            compute_input=_duration(stats.compute_input),
            compute_infer=_duration(stats.compute_infer),
            compute_output=_duration(stats.compute_output),
        ),
        batch_stats=[
            oip.InferBatchStatistics(batch_size=size, compute_infer=_duration(d))
            for size, d in sorted(stats.batches.items())
        ],
    )


def repository_index(
    entries: Iterable[IndexEntry], *, only_ready: bool
) -> oip.RepositoryIndexResponse:
    """Every model version in the repository (or loaded) and its state, as Triton lists them."""
    return oip.RepositoryIndexResponse(
        models=[
            oip.RepositoryIndexResponse.ModelIndex(
                name=entry.model,
                version="" if entry.version is None else str(entry.version),
                state=entry.state,
                reason=entry.reason,
            )
            for entry in entries
            if not only_ready or entry.state == READY
        ]
    )
